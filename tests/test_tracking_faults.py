"""A dead MLflow server fails a command in bounded time, in one line, and the rerun completes (issue 22
"Bounded, fail-fast steps", issue 24 item 1). The server is a real ``mlflow server`` of this test, SIGKILLed
from inside the command at a chosen call (tests/serverkill.py), then restarted on the same store and port.
MLflow's HTTP settings are left to the package's defaults (lightreasoner.tracking.MLFLOW_HTTP_DEFAULTS)."""

from __future__ import annotations

import os
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import pytest
from fake_outputs import make_config, make_evaluation, make_samples, make_training
from killer import ROOT, Outcome, _env, run_cli
from servers import BIN, _start, _stop, _wait_http, free_port

from lightreasoner import tracking

pytestmark = [pytest.mark.slow, pytest.mark.filterwarnings("ignore:Add type hints:UserWarning")]

SERVERKILL = Path(__file__).resolve().parent / "serverkill.py"
BUDGET = 180  # seconds from the kill to the command's exit: generous for a busy CI machine
N = 40
BASE = [i < 20 for i in range(N)]
TUNED = [i < 30 for i in range(N)]


@dataclass
class Server:
    root: Path
    port: int
    proc: subprocess.Popen | None = None

    @property
    def uri(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> Server:
        """``mlflow server`` on this store and port (local artifacts, written by the clients directly)."""
        self.root.mkdir(parents=True, exist_ok=True)
        env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
        cmd = [str(BIN / "mlflow"), "server", "--backend-store-uri", f"sqlite:///{self.root / 'mlflow.db'}",
               "--default-artifact-root", str(self.root / "artifacts"), "--no-serve-artifacts",
               "--host", "127.0.0.1", "--port", str(self.port), "--workers", "1"]
        self.proc = _start(cmd, self.root / "server.log", env)
        _wait_http(f"{self.uri}/health", self.proc, 120, self.root / "server.log")
        return self


@pytest.fixture
def server(tmp_path, monkeypatch):
    for name in [*tracking.MLFLOW_HTTP_DEFAULTS, "MLFLOW_TRACKING_URI"]:
        monkeypatch.delenv(name, raising=False)  # the package's own retry budget is the one under test
    srv = Server(tmp_path / "server", free_port()).start()
    yield srv
    if srv.proc is not None:
        _stop(srv.proc)


def kill_server_at(args: list[str], server: Server, target: str, *, mode: str = "before", nth: int = 1,
                   env: dict[str, str] | None = None) -> tuple[Outcome, float]:
    """Run the CLI; SIGKILL the server at the ``nth`` call of ``target``. Returns the outcome and the
    seconds the command took in all."""
    start = time.monotonic()
    proc = subprocess.run([sys.executable, str(SERVERKILL), str(server.proc.pid), target, str(nth), mode,
                           *map(str, args)], cwd=ROOT, env=_env(env), capture_output=True, text=True,
                          timeout=BUDGET + 300)
    server.proc.wait(timeout=10)
    return Outcome(proc.returncode, proc.stdout, proc.stderr, False), time.monotonic() - start


def one_line_error(outcome: Outcome, server: Server) -> str:
    assert "serverkill: server killed" in outcome.stderr, outcome.stderr  # the kill happened
    assert outcome.returncode == 2, outcome.stderr
    assert "Traceback" not in outcome.stderr, outcome.stderr
    lines = [line for line in outcome.stderr.strip().splitlines() if line.strip()]
    assert lines[-1].startswith("error: ") and len(outcome.error_lines) == 1, outcome.stderr
    assert f"127.0.0.1:{server.port}" in lines[-1], lines[-1]  # names the server
    return lines[-1]


def test_server_killed_inside_register_fails_fast_and_the_rerun_completes_the_version(server, tmp_path):
    from mlflow.tracking import MlflowClient

    name = f"lr-{uuid.uuid4().hex[:8]}"
    cfg = make_config(server.uri, experiment=f"dead-{name}", model_name=name)
    samples = make_samples(tmp_path / "samples", cfg)
    training = make_training(tmp_path / "train", cfg, samples)
    evaluation = make_evaluation(tmp_path / "eval", cfg, BASE, TUNED, training=training)
    secret_uri = server.uri.replace("://", "://lr:hunter2-pass@")  # the server ignores it; never printed
    args = ["register", "--set", f"tracking.tracking_uri={secret_uri}", "--set", f"tracking.experiment=dead-{name}",
            "--set", f"registry.model_name={name}", "--training", training, "--evaluation", evaluation,
            "--samples", samples]
    # The version is created, then the server dies before the alias and the run's end are written.
    failed, seconds = kill_server_at(args, server, "mlflow.tracking.client:MlflowClient.create_model_version",
                                     mode="after")
    line = one_line_error(failed, server)
    assert seconds < BUDGET, f"{seconds:.0f}s: {line}"
    assert "hunter2-pass" not in failed.stderr + failed.stdout
    server.start()  # the same store, the same port
    client = MlflowClient(server.uri)
    (made,) = client.search_model_versions(f"name = '{name}'")
    assert not dict(client.get_registered_model(name).aliases)
    done = run_cli(args, timeout=BUDGET)
    assert done.returncode == 0, done.stderr
    (version,) = client.search_model_versions(f"name = '{name}'")  # the same version, completed
    assert version.version == made.version
    assert dict(client.get_registered_model(name).aliases) == {"challenger": version.version}
    assert client.get_run(version.run_id).info.status == "FINISHED"


def test_server_killed_during_a_stage_of_run_fails_fast_and_the_rerun_completes(server, tiny_models, tmp_path):
    from mlflow.tracking import MlflowClient

    name = f"lr-{uuid.uuid4().hex[:8]}"
    work = tmp_path / "work"
    sets = [f"expert.model={tiny_models['llama']}", f"amateur.model={tiny_models['llama_small']}", "data.limit=4",
            "sampling.max_new_tokens=8", "sampling.batch_size=4", "sampling.beta=auto:0.5", "training.max_steps=2",
            "training.samples_per_step=4", "training.holdout_fraction=0",
            "evaluation.data.limit=2", "evaluation.max_new_tokens=8", "evaluation.bootstrap_samples=100",
            f"tracking.experiment=dead-{name}", f"registry.model_name={name}"]
    args = ["run", "--workdir", work, *[a for s in sets for a in ("--set", s)]]
    env = {"MLFLOW_TRACKING_URI": server.uri}  # the URI only in the environment, as a pod gets it
    # The train stage's run is open (the loss streams into it) when the server dies.
    failed, seconds = kill_server_at(args, server, "lightreasoner.training:train", env=env)
    line = one_line_error(failed, server)
    assert seconds < BUDGET, f"{seconds:.0f}s: {line}"
    server.start()
    done = run_cli(args, env=env, timeout=BUDGET + 300)
    assert done.returncode == 0, done.stderr
    assert "resuming the unfinished run" in done.stderr
    client = MlflowClient(server.uri)
    exp = client.get_experiment_by_name(f"dead-{name}").experiment_id
    parents = client.search_runs([exp], "tags.`lightreasoner.kind` = 'pipeline'")
    assert sorted(r.info.status for r in parents) == ["FAILED", "FINISHED"]
    (version,) = client.search_model_versions(f"name = '{name}'")
    assert dict(client.get_registered_model(name).aliases)["challenger"] == version.version
