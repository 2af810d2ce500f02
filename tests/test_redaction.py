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


def _churn(stop, name: str) -> None:
    import os

    n = 0
    while not stop.is_set() and n < 2_000_000:  # bounded: never outlives the test
        os.environ[f"{name}_{n % 7}_TOKEN"] = "churning-secret-value"
        os.environ.pop(f"{name}_{(n + 3) % 7}_TOKEN", None)
        n += 1


def test_redaction_while_another_thread_edits_the_environment():
    """MLflow's telemetry thread deleted a variable while redaction read the environment (KeyError in a
    pipeline step): the read must survive a thread adding and deleting variables in a tight loop."""
    import os
    import sys
    import threading

    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)  # switch threads as often as possible: every read races the edits
    stop = threading.Event()
    name = "LR_RACE"
    thread = threading.Thread(target=_churn, args=(stop, name), daemon=True)
    thread.start()
    try:
        reads = 0
        for _ in range(2000):  # a count, not a deadline: as many reads on a slow runner as on a fast one
            redaction.redact_text("nothing secret here")
            assert dict(redaction.environment()).get("PATH") == os.environ.get("PATH")
            reads += 1
    finally:
        stop.set()
        thread.join(timeout=10)
        sys.setswitchinterval(interval)
        for i in range(7):
            os.environ.pop(f"{name}_{i}_TOKEN", None)
    assert reads > 10 and not thread.is_alive()
