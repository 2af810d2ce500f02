"""Real servers on 127.0.0.1 for the storage, tracking and registry tests.

* ``s3_server``: moto's standalone S3 (``moto_server -p PORT``) with IAM enforced after a bootstrap, so
  that wrong credentials are refused; one bucket, an IAM user and its keys.
* ``mlflow_server``: ``mlflow server`` with a sqlite backend and an ``s3://`` default artifact root on the
  moto server (clients write artifacts straight to S3).
* ``aws_env``: per-test environment (keys, endpoint, short timeouts) pointing at ``s3_server``.

Import the fixtures into a test module with ``from servers import *``.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest

__all__ = ["S3Server", "MlflowServer", "s3_server", "mlflow_server", "aws_env", "free_port", "paused"]

BIN = Path(sys.executable).parent
BUCKET = "lightreasoner-test"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_tcp(port: int, proc: subprocess.Popen, timeout: float, log: Path) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited early:\n{log.read_text()[-3000:]}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.2)
    raise RuntimeError(f"server on port {port} did not start in {timeout}s:\n{log.read_text()[-3000:]}")


def _wait_http(url: str, proc: subprocess.Popen, timeout: float, log: Path) -> None:
    import urllib.request

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited early:\n{log.read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(url, timeout=2) as r:
                if r.status == 200:
                    return
        except OSError:
            time.sleep(0.3)
    raise RuntimeError(f"{url} did not answer in {timeout}s:\n{log.read_text()[-3000:]}")


def _stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        try:
            os.killpg(proc.pid, signal.SIGCONT)
            os.killpg(proc.pid, signal.SIGTERM)
        except ProcessLookupError:
            return
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)


@dataclass
class S3Server:
    endpoint: str
    key_id: str
    secret: str
    bucket: str
    proc: subprocess.Popen = field(repr=False)

    def client(self, key_id: str | None = None, secret: str | None = None):
        import boto3

        return boto3.client("s3", endpoint_url=self.endpoint, region_name="us-east-1",
                            aws_access_key_id=key_id or self.key_id, aws_secret_access_key=secret or self.secret)

    def keys(self, prefix: str = "") -> list[str]:
        pages = self.client().get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=prefix)
        return [o["Key"] for page in pages for o in page.get("Contents", [])]


@dataclass
class MlflowServer:
    uri: str
    artifact_root: str
    proc: subprocess.Popen = field(repr=False)


def _start(cmd: list[str], log: Path, env: dict[str, str]) -> subprocess.Popen:
    return subprocess.Popen(cmd, stdout=log.open("w"), stderr=subprocess.STDOUT, env=env, start_new_session=True)


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory):
    import boto3

    root = tmp_path_factory.mktemp("moto")
    port = free_port()
    log = root / "moto.log"
    # IAM is enforced after the first 3 requests: they create the user, its policy and its keys.
    env = {**os.environ, "INITIAL_NO_AUTH_ACTION_COUNT": "3"}
    proc = _start([str(BIN / "moto_server"), "-H", "127.0.0.1", "-p", str(port)], log, env)
    try:
        _wait_tcp(port, proc, 60, log)
        endpoint = f"http://127.0.0.1:{port}"
        iam = boto3.client("iam", endpoint_url=endpoint, region_name="us-east-1",
                           aws_access_key_id="bootstrap", aws_secret_access_key="bootstrap")
        iam.create_user(UserName="lightreasoner")
        policy = {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "*", "Resource": "*"}]}
        iam.put_user_policy(UserName="lightreasoner", PolicyName="all", PolicyDocument=json.dumps(policy))
        key = iam.create_access_key(UserName="lightreasoner")["AccessKey"]
        server = S3Server(endpoint, key["AccessKeyId"], key["SecretAccessKey"], BUCKET, proc)
        server.client().create_bucket(Bucket=BUCKET)
        yield server
    finally:
        _stop(proc)


@pytest.fixture(scope="session")
def mlflow_server(s3_server, tmp_path_factory):
    root = tmp_path_factory.mktemp("mlflow-server")
    port = free_port()
    log = root / "mlflow.log"
    artifact_root = f"s3://{s3_server.bucket}/mlflow"
    env = {**os.environ, "MLFLOW_S3_ENDPOINT_URL": s3_server.endpoint, "AWS_ACCESS_KEY_ID": s3_server.key_id,
           "AWS_SECRET_ACCESS_KEY": s3_server.secret, "AWS_DEFAULT_REGION": "us-east-1"}
    env.pop("MLFLOW_TRACKING_URI", None)
    cmd = [str(BIN / "mlflow"), "server", "--backend-store-uri", f"sqlite:///{root / 'mlflow.db'}",
           "--default-artifact-root", artifact_root, "--no-serve-artifacts",
           "--host", "127.0.0.1", "--port", str(port), "--workers", "1"]
    proc = _start(cmd, log, env)
    try:
        _wait_http(f"http://127.0.0.1:{port}/health", proc, 120, log)
        yield MlflowServer(f"http://127.0.0.1:{port}", artifact_root, proc)
    finally:
        _stop(proc)


@pytest.fixture
def aws_env(s3_server, monkeypatch):
    """Point boto3 (ours and MLflow's) at the moto server with valid keys and short timeouts."""
    for name in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_ENDPOINT_URL_S3", "MLFLOW_TRACKING_URI"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", s3_server.key_id)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", s3_server.secret)
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    monkeypatch.setenv("AWS_ENDPOINT_URL", s3_server.endpoint)
    monkeypatch.setenv("MLFLOW_S3_ENDPOINT_URL", s3_server.endpoint)
    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "2")
    monkeypatch.setenv("LIGHTREASONER_S3_READ_TIMEOUT", "3")
    monkeypatch.setenv("LIGHTREASONER_S3_CONNECT_TIMEOUT", "2")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "1")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR", "1")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "10")
    return s3_server


class paused:
    """``with paused(proc):`` stops a server process (SIGSTOP) and resumes it on exit."""

    def __init__(self, proc: subprocess.Popen):
        self.proc = proc
        self.stopped = False

    def stop(self) -> None:
        if not self.stopped:
            os.killpg(self.proc.pid, signal.SIGSTOP)
            self.stopped = True

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        if self.stopped:
            os.killpg(self.proc.pid, signal.SIGCONT)
            self.stopped = False
