"""Secrets never reach logs, params or artifacts: lightreasoner.redaction."""

from lightreasoner import redaction, tracking


def test_redaction_helpers(monkeypatch):
    monkeypatch.setenv("HF_TOKEN", "hf_TopSecretTokenValue123456")
    data = {"a": {"aws_secret_access_key": "x", "password": "y", "max_new_tokens": 5, "tokenizer": "t"},
            "url": "https://bob:pw12345@host/x", "note": "uses hf_TopSecretTokenValue123456 and AKIAABCDEFGHIJKLMNOP"}
    out = redaction.redact(data)
    assert out["a"] == {"max_new_tokens": 5, "tokenizer": "t"}
    assert out["url"] == "https://bob:***@host/x"
    assert "hf_TopSecret" not in out["note"] and "AKIA" not in out["note"]
    assert tracking.flatten({"a": {"b": 1, "c": {"d": 2}}, "e": []}) == {"a.b": 1, "a.c.d": 2, "e": []}


def test_the_working_directory_is_not_a_secret(monkeypatch, tmp_path):
    """PWD looks like a password variable by name; paths under the working directory must stay readable
    (the demo's samples folder is a dataset source under it)."""
    monkeypatch.setenv("PWD", str(tmp_path))
    monkeypatch.setenv("OLDPWD", str(tmp_path))
    monkeypatch.setenv("DB_PASSWORD", "hunter2-secret")
    path = f"file://{tmp_path}/lightreasoner-runs/samples"
    assert redaction.redact_text(path) == path
    assert redaction.redact_text("pw hunter2-secret") == "pw ***"
