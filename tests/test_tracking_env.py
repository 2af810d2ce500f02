"""Where runs are tracked (issue 22): the tracking URI given only by ``MLFLOW_TRACKING_URI`` reaches every
entry point (``run``, the MLflow commands, each component as plain Python) and stays set; a Kubeflow
component refuses to start without a URI; ``pipeline run-local`` keeps its own store under ``--workdir``."""

from __future__ import annotations

import os
import uuid
from types import SimpleNamespace

import pytest
import yaml
from fake_outputs import make_config, make_evaluation, make_samples, make_training

from lightreasoner import tracking
from lightreasoner.cli import main
from lightreasoner.errors import LightReasonerError

pytestmark = pytest.mark.filterwarnings("ignore:Add type hints:UserWarning")

N = 40
BASE = [i < 20 for i in range(N)]
TUNED = [i < 30 for i in range(N)]


# --- fast: the rules themselves -------------------------------------------------------------------------


def test_a_component_config_needs_a_tracking_uri(monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    with pytest.raises(LightReasonerError) as err:
        tracking.require_uri(make_config(None))
    line = str(err.value)
    assert "\n" not in line and "mlflow_tracking_uri" in line and "MLFLOW_TRACKING_URI" in line
    off = make_config(None, extra=["tracking.enabled=false"])
    assert tracking.require_uri(off) is off
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://env:5000")
    resolved = tracking.require_uri(make_config(None))
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://elsewhere:5000")  # resolved once: written into the config
    assert resolved.tracking.tracking_uri == "http://env:5000" and tracking.tracking_uri(resolved) == "http://env:5000"
    assert tracking.require_uri(make_config("http://cfg:5000")).tracking.tracking_uri == "http://cfg:5000"


def test_the_uri_is_read_once_per_command_and_mlflow_is_pointed_back(monkeypatch, tmp_path):
    import mlflow

    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://env:5000")
    cfg = make_config(None)
    with tracking.pinned_tracking_uri() as pinned:
        monkeypatch.delenv("MLFLOW_TRACKING_URI")
        assert pinned == "http://env:5000" and tracking.tracking_uri(cfg) == "http://env:5000"
    assert tracking.is_embedded(cfg)  # outside the command: the environment as it is now
    # The fluent API is pointed at a store for a stage, then back; the variable exactly as it was.
    other = f"sqlite:///{tmp_path / 'other.db'}"
    for before in (None, "http://env:5000"):
        if before is None:
            monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
        else:
            monkeypatch.setenv("MLFLOW_TRACKING_URI", before)
        with tracking._scoped_tracking_uri(other):
            assert mlflow.get_tracking_uri() == other
        assert os.environ.get("MLFLOW_TRACKING_URI") == before


def test_entry_points_switch_telemetry_off_and_bound_mlflow_retries(monkeypatch):
    for name in [*tracking.MLFLOW_HTTP_DEFAULTS, *tracking.TELEMETRY_OFF]:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "7")  # the user's own setting wins
    assert main(["config", "--set", "data.limit=3"]) == 0
    assert os.environ["MLFLOW_DISABLE_TELEMETRY"] == "true" and os.environ["DO_NOT_TRACK"] == "true"
    assert os.environ["MLFLOW_HTTP_REQUEST_MAX_RETRIES"] == tracking.MLFLOW_HTTP_DEFAULTS[
        "MLFLOW_HTTP_REQUEST_MAX_RETRIES"]
    assert os.environ["MLFLOW_HTTP_REQUEST_TIMEOUT"] == "7"
    # The budget: at most ~2 minutes for one call to a server that does not answer at all.
    d = tracking.MLFLOW_HTTP_DEFAULTS
    retries, factor = int(d["MLFLOW_HTTP_REQUEST_MAX_RETRIES"]), float(d["MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR"])
    sleeps = sum(factor * 2 ** (i - 1) + float(d["MLFLOW_HTTP_REQUEST_BACKOFF_JITTER"]) for i in range(1, retries + 1))
    assert (retries + 1) * int(d["MLFLOW_HTTP_REQUEST_TIMEOUT"]) + sleeps <= 150
    assert tracking.MODEL_VERSION_WAIT <= 120


def test_default_parent_run_name():
    assert tracking.default_run_name("sft", 0) == "sft-19700101-000000"
    assert tracking.default_run_name().startswith("lightreasoner-20")


def test_no_private_mlflow_helpers_in_the_package():
    import re
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    private = re.compile(r"(from|import)\s+mlflow[\w.]*\._\w|mlflow(\.\w+)*\._[a-z]\w*")
    for folder in ("lightreasoner", "components", "pipelines"):
        for path in (root / folder).rglob("*.py"):
            hits = [line for line in path.read_text().splitlines() if private.search(line)]
            assert not hits, f"{path}: MLflow private API: {hits}"


# --- a real MLflow server, the URI only in the environment ---------------------------------------------


def _config_file(tmp_path, tiny_models, name: str) -> str:
    data = {"expert": {"model": str(tiny_models["llama"])}, "amateur": {"model": str(tiny_models["llama_small"])},
            "data": {"limit": 4}, "sampling": {"max_new_tokens": 8, "batch_size": 4, "beta": "auto:0.5"},
            "training": {"max_steps": 2, "samples_per_step": 4, "holdout_fraction": 0},
            "evaluation": {"data": {"limit": 2}, "max_new_tokens": 8, "bootstrap_samples": 100},
            "tracking": {"experiment": f"env-{name}"}, "registry": {"model_name": name}}
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(data))
    return str(path)


@pytest.mark.slow
def test_every_entry_point_with_the_uri_only_in_the_environment(tiny_models, mlflow_server, aws_env, tmp_path,
                                                                monkeypatch, capsys):
    """`run`, the commands that use MLflow, and each MLflow component called as plain Python, in one process
    (where MLflow's private helper used to delete the variable after the first stage)."""
    from mlflow.tracking import MlflowClient

    from lightreasoner import components

    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_server.uri)
    monkeypatch.chdir(tmp_path)
    name = f"env-{uuid.uuid4().hex[:8]}"
    config = _config_file(tmp_path, tiny_models, name)
    client = MlflowClient(mlflow_server.uri)

    assert main(["run", "--config", config, "--workdir", str(tmp_path / "work"), "--run-name", "nightly"]) == 0
    assert os.environ["MLFLOW_TRACKING_URI"] == mlflow_server.uri
    exp = client.get_experiment_by_name(f"env-{name}").experiment_id
    (parent,) = client.search_runs([exp], "tags.`lightreasoner.kind` = 'pipeline'")
    assert parent.info.status == "FINISHED" and parent.info.run_name == "nightly"
    stages = {r.data.tags.get("lightreasoner.stage") for r in client.search_runs([exp], "attributes.status = 'FINISHED'")}
    assert {"prepare", "sample", "train", "evaluate", "register"} <= stages
    assert not (tmp_path / "work" / "mlflow.db").exists() and not (tmp_path / "lightreasoner-runs").exists()

    # The commands that talk to MLflow.
    cfg = make_config(None, experiment=f"env-{name}", model_name=name)
    samples = make_samples(tmp_path / "samples", cfg)
    training = make_training(tmp_path / "train", cfg, samples)
    evaluation = make_evaluation(tmp_path / "eval", cfg, BASE, TUNED, training=training)
    sets = ["--set", f"tracking.experiment=env-{name}", "--set", f"registry.model_name={name}"]
    assert main(["register", *sets, "--training", str(training), "--evaluation", str(evaluation),
                 "--samples", str(samples)]) == 0
    assert main(["promote", *sets]) == 0
    assert main(["compare", *sets, "--json", parent.info.run_id]) == 0
    assert os.environ["MLFLOW_TRACKING_URI"] == mlflow_server.uri
    assert len(client.search_model_versions(f"name = '{name}'")) == 2

    # Each MLflow component, as plain Python (the pipeline's settings leave mlflow_tracking_uri empty).
    yaml_text = yaml.safe_dump(cfg.dump())
    kfp_run = f"kfp-{uuid.uuid4().hex[:8]}"
    conf = components.configure_run(config_yaml=yaml_text, settings="", run_name="", kfp_run_id=kfp_run,
                                    method="lightreasoner")
    assert conf.parent_run_id and os.environ["MLFLOW_TRACKING_URI"] == mlflow_server.uri
    assert mlflow_server.uri not in conf.full  # the Secret's URI never becomes a step's parameter
    for stage, folder in (("sample", samples), ("train", training), ("evaluate", evaluation)):
        components.log_stage(config=conf.full, stage=stage, output=SimpleNamespace(path=str(folder)),
                             parent_run_id=conf.parent_run_id)
    # a registration of this pipeline run (its key names the parent run): a third version
    out = components.register(config=conf.full, samples=SimpleNamespace(path=str(samples)),
                                    adapter=SimpleNamespace(path=str(training)),
                                    evaluation=SimpleNamespace(path=str(evaluation)),
                                    parent_run_id=conf.parent_run_id, promote=True)
    components.finish_run(config_yaml=yaml_text, settings="", kfp_run_id=kfp_run,
                          status=SimpleNamespace(state="SUCCEEDED"))
    assert os.environ["MLFLOW_TRACKING_URI"] == mlflow_server.uri
    run = client.get_run(conf.parent_run_id)
    assert run.info.status == "FINISHED" and run.info.run_name.startswith("lightreasoner-20")
    children = client.search_runs([exp], f"tags.`mlflow.parentRunId` = '{conf.parent_run_id}'")
    assert {"sample", "train", "evaluate", "register"} <= {r.data.tags["lightreasoner.stage"] for r in children}
    assert out.version == "3"
    assert not (tmp_path / "lightreasoner-runs").exists()  # nothing fell back to a local store
