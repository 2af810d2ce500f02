"""lightreasoner.storage against a real (moto) S3 server on 127.0.0.1."""

from __future__ import annotations

import json
import os

import pytest
from servers import free_port, paused

from lightreasoner import storage
from lightreasoner.errors import LightReasonerError


def make_folder(root, n=4, size=1000):
    root.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        (root / f"part-{i}.bin").write_bytes(os.urandom(size))
    (root / "sub").mkdir(exist_ok=True)
    (root / "sub" / "nested.txt").write_text("nested")
    (root / "manifest.json").write_text(json.dumps({"stage": "test"}))
    return root


def test_uri_helpers():
    assert storage.is_s3("s3://b/k") and not storage.is_s3("/tmp/x") and not storage.is_s3(None)
    assert storage.split_s3("s3://my-bucket/a/b.txt") == ("my-bucket", "a/b.txt")
    with pytest.raises(LightReasonerError, match="invalid bucket"):
        storage.split_s3("s3://Bad_Bucket/x")
    assert storage.safe_url("http://user:hunter2@host:9000/p") == "http://user:***@host:9000/p"
    assert storage.safe_url("http://host:9000") == "http://host:9000"


def test_file_roundtrip_multipart_and_cache(aws_env, tmp_path, monkeypatch):
    monkeypatch.setenv("LIGHTREASONER_S3_MULTIPART_MB", "5")
    monkeypatch.setenv("LIGHTREASONER_CACHE", str(tmp_path / "cache"))
    big = tmp_path / "big.bin"
    big.write_bytes(os.urandom(6 * 1024 * 1024 + 123))  # two parts
    uri = f"s3://{aws_env.bucket}/files/big.bin"
    storage.upload_file(big, uri)
    head = aws_env.client().head_object(Bucket=aws_env.bucket, Key="files/big.bin")
    assert head["ETag"].strip('"').endswith("-2")  # multipart upload
    assert head["Metadata"]["sha256"] == storage.file_digests(big)[0]
    got = storage.download_file(uri, tmp_path / "copy.bin")
    assert got.read_bytes() == big.read_bytes()
    cached = storage.download_file(uri)
    assert cached.read_bytes() == big.read_bytes() and str(cached).startswith(str(tmp_path / "cache"))
    assert storage.download_file(uri) == cached  # reused
    with pytest.raises(LightReasonerError, match=r"s3://.*/files/missing.bin: download failed: no such object"):
        storage.download_file(f"s3://{aws_env.bucket}/files/missing.bin", tmp_path / "m")


def test_dir_roundtrip_and_manifest_last(aws_env, tmp_path):
    src = make_folder(tmp_path / "src")
    uri = f"s3://{aws_env.bucket}/dirs/run1"
    order = []
    uploaded = storage.upload_dir(src, uri, on_file=order.append)
    assert order[-1] == f"{uri}/manifest.json" and len(uploaded) == 6
    dst = storage.download_dir(uri, tmp_path / "dst")
    for f in src.rglob("*"):
        if f.is_file():
            assert (dst / f.relative_to(src)).read_bytes() == f.read_bytes()
    with storage.local_input(uri) as local:
        assert (local / "manifest.json").is_file() and (local / "sub" / "nested.txt").read_text() == "nested"
    with storage.local_input(f"{uri}/sub/nested.txt") as local:
        assert local.read_text() == "nested"
    with storage.local_output(f"s3://{aws_env.bucket}/dirs/out") as out:
        (out / "a.txt").write_text("a")
        (out / "manifest.json").write_text("{}")
    assert sorted(aws_env.keys("dirs/out/")) == ["dirs/out/a.txt", "dirs/out/manifest.json"]
    with pytest.raises(RuntimeError), storage.local_output(f"s3://{aws_env.bucket}/dirs/failed") as out:
        (out / "manifest.json").write_text("{}")
        raise RuntimeError("stage failed")
    assert aws_env.keys("dirs/failed/") == []  # nothing uploaded on failure
    with storage.local_output(tmp_path / "plain") as out:
        assert out == tmp_path / "plain" and out.is_dir()


def test_missing_bucket(aws_env, tmp_path):
    f = tmp_path / "x.txt"
    f.write_text("x")
    with pytest.raises(LightReasonerError) as err:
        storage.upload_file(f, "s3://no-such-bucket/x.txt")
    assert str(err.value) == "s3://no-such-bucket/x.txt: upload failed: bucket does not exist"
    with pytest.raises(LightReasonerError, match="no-such-bucket/data: listing failed: bucket does not exist"):
        storage.download_dir("s3://no-such-bucket/data", tmp_path / "d")


@pytest.mark.parametrize("which", ["secret", "key"])
def test_wrong_credentials(aws_env, tmp_path, monkeypatch, which):
    f = tmp_path / "x.txt"
    f.write_text("x")
    wrong_secret = "Wr0ngSecretValueThatMustNotLeak"
    if which == "key":
        monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIAWRONGWRONGWRONG0")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", wrong_secret)
    uri = f"s3://{aws_env.bucket}/creds/x.txt"
    with pytest.raises(LightReasonerError) as err:
        storage.upload_file(f, uri)
    msg = str(err.value)
    assert msg.startswith(f"{uri}: upload failed: access denied") and "\n" not in msg
    assert wrong_secret not in msg and aws_env.secret not in msg
    with pytest.raises(LightReasonerError, match="access denied"):
        storage.download_file(f"s3://{aws_env.bucket}/dirs/run1/manifest.json", tmp_path / "m.json")


def test_no_credentials_at_all_is_one_line(aws_env, tmp_path, monkeypatch):
    """A pod whose optional S3 Secret keys are absent and that has no IRSA/Workload Identity role."""
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE",
                 "AWS_WEB_IDENTITY_TOKEN_FILE", "AWS_ROLE_ARN", "AWS_CONTAINER_CREDENTIALS_FULL_URI",
                 "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "no-credentials"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-config"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")  # no instance profile here (bounded in a pod)
    f = tmp_path / "x.txt"
    f.write_text("x")
    uri = f"s3://{aws_env.bucket}/nocreds/x.txt"
    for call in (lambda: storage.upload_file(f, uri), lambda: storage.download_file(uri, tmp_path / "y.txt")):
        with pytest.raises(LightReasonerError) as err:
            call()
        msg = str(err.value)
        assert msg.startswith(f"{uri}: ") and "no AWS credentials found" in msg and "\n" not in msg
    assert aws_env.keys("nocreds/") == []


def test_server_down(aws_env, tmp_path, monkeypatch):
    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{free_port()}")
    f = tmp_path / "x.txt"
    f.write_text("x")
    with pytest.raises(LightReasonerError, match=r"s3://.*/x.txt: upload failed: cannot reach the S3 endpoint"):
        storage.upload_file(f, f"s3://{aws_env.bucket}/down/x.txt")


@pytest.mark.slow
def test_server_stopped_mid_upload_leaves_no_manifest(aws_env, tmp_path, monkeypatch):
    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "1")
    monkeypatch.setenv("LIGHTREASONER_S3_READ_TIMEOUT", "1")
    src = make_folder(tmp_path / "src", n=5)
    uri = f"s3://{aws_env.bucket}/interrupted/run"
    # A previous complete upload exists: its manifest must not survive next to a partial new one.
    storage.upload_dir(src, uri)
    assert "interrupted/run/manifest.json" in aws_env.keys("interrupted/")
    with paused(aws_env.proc) as server:
        def stop_after_first(_uri):
            server.stop()

        with pytest.raises(LightReasonerError) as err:
            storage.upload_dir(src, uri, on_file=stop_after_first)
    assert str(err.value).startswith(f"{uri}/") and "upload failed" in str(err.value)
    keys = aws_env.keys("interrupted/")
    assert keys and "interrupted/run/manifest.json" not in keys
    with pytest.raises(LightReasonerError):
        with storage.local_input(f"{uri}/manifest.json"):
            pass


@pytest.mark.slow
def test_s3_lock_waits_out_a_dead_holder_and_refuses_a_live_one(aws_env, monkeypatch, caplog):
    import socket
    import threading
    import time
    import uuid

    from lightreasoner.storage import s3_output_lock

    slept: list[float] = []  # the lock's own account of its waiting, not the runner's clock

    def sleep(seconds: float) -> None:
        slept.append(seconds)
        time.sleep(seconds)

    prefix = f"lock-{uuid.uuid4().hex[:8]}/out"
    uri, key = f"s3://{aws_env.bucket}/{prefix}", f"{prefix}/_work.lock"
    s3 = aws_env.client()
    other = json.dumps({"host": "node-elsewhere", "pid": 1, "token": "x"}).encode()
    monkeypatch.setenv("LIGHTREASONER_S3_LOCK_STALE_SECONDS", "3")
    # A preempted pod's lock (no heartbeat any more): the rescheduled pod waits until it is stale, takes it.
    s3.put_object(Bucket=aws_env.bucket, Key=key, Body=other)
    with caplog.at_level("WARNING", logger="lightreasoner.s3lock"), s3_output_lock(uri, sleep=sleep):
        held = json.loads(s3.get_object(Bucket=aws_env.bucket, Key=key)["Body"].read())
        assert held["host"] == socket.gethostname()
    assert slept and key not in aws_env.keys(prefix)  # it waited (not taken at once) ...
    assert "taking over the lock of a process that stopped" in caplog.text  # ... until the lock was stale
    # A live holder (its heartbeat advances while we watch): refused within a heartbeat, long before stale.
    monkeypatch.setenv("LIGHTREASONER_S3_LOCK_STALE_SECONDS", "60")
    stop = threading.Event()

    def heartbeat() -> None:
        while not stop.wait(1.0):
            s3.put_object(Bucket=aws_env.bucket, Key=key, Body=other)

    s3.put_object(Bucket=aws_env.bucket, Key=key, Body=other)  # held before we look, then kept alive

    thread = threading.Thread(target=heartbeat)
    thread.start()
    try:
        slept.clear()
        with pytest.raises(LightReasonerError, match=r"host node-elsewhere.*its heartbeat is live"):
            with s3_output_lock(uri, sleep=sleep):
                pass
        assert sum(slept) < 15
        # LIGHTREASONER_S3_LOCK_WAIT_SECONDS=0: refused at once
        monkeypatch.setenv("LIGHTREASONER_S3_LOCK_WAIT_SECONDS", "0")
        with pytest.raises(LightReasonerError, match="waited 0 s"):
            with s3_output_lock(uri):
                pass
    finally:
        stop.set()
        thread.join()
    held = json.loads(s3.get_object(Bucket=aws_env.bucket, Key=key)["Body"].read())
    assert held["host"] == "node-elsewhere"  # a refused process leaves the holder's lock alone


@pytest.mark.parametrize("name", ["LIGHTREASONER_S3_LOCK_STALE_SECONDS", "LIGHTREASONER_S3_LOCK_HEARTBEAT_SECONDS",
                                  "LIGHTREASONER_S3_LOCK_WAIT_SECONDS"])
def test_s3_lock_setting_that_is_not_a_number_is_one_line(name, monkeypatch):
    from lightreasoner.storage import s3_output_lock

    monkeypatch.setenv(name, "soon")
    with pytest.raises(LightReasonerError) as err:  # refused before the store is asked anything
        with s3_output_lock("s3://lightreasoner-test/never/out"):
            pass
    assert str(err.value) == f"environment {name}='soon': expected a number of seconds"
