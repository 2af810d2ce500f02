"""Where the compiled pipeline's runs are tracked, through kfp.local (issue 22): with no tracking URI at all
it stops at its first step with the one-line message; with the URI only in the environment (as the chart's
Secret gives it) it succeeds run after run; ``pipeline run-local --quick`` keeps its store under --workdir.
Smallest settings: these tests check tracking, tests/test_pipeline_local.py the pipeline's defaults."""

from __future__ import annotations

import re
import uuid

import pytest
import yaml
from lightreasoner.pipelines.client import run_local
from mlflow.tracking import MlflowClient

from lightreasoner import tracking
from lightreasoner.cli import main
from lightreasoner.errors import LightReasonerError

pytestmark = [pytest.mark.slow, pytest.mark.filterwarnings("ignore:Add type hints:UserWarning")]

SMALL = yaml.safe_dump({"data": {"synthetic_size": 8}, "evaluation": {"data": {"synthetic_size": 8}}})


def small(tiny_models, experiment: str, **extra):
    return {"expert": str(tiny_models["llama"]), "amateur": str(tiny_models["llama_small"]),
            "dataset": "synthetic", "eval_dataset": "synthetic", "eval_benchmarks": [], "config_yaml": SMALL,
            "num_problems": 4,
            "max_new_tokens": 8, "beta": "auto:0.5", "max_steps": 2, "samples_per_step": 4,
            "holdout_fraction": 0.0, "eval_limit": 2, "eval_max_new_tokens": 8, "mlflow_experiment": experiment,
            "registered_model": experiment, **extra}


def test_no_tracking_uri_stops_the_pipeline_at_its_first_step(tiny_models, tmp_path, monkeypatch, capfd):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.chdir(tmp_path)
    with pytest.raises(LightReasonerError, match="local pipeline run failed"):
        run_local(None, tmp_path / "work", params=small(tiny_models, "no-uri", mlflow_tracking_uri=""))
    logs = capfd.readouterr()
    text = re.sub(r"\x1b\[[0-9;]*m", "", logs.out + logs.err)  # kfp.local's colours
    assert tracking.NO_URI in text
    assert "Task 'configure-run' finished with status FAILURE" in text, text[-3000:]
    assert not list((tmp_path / "work").rglob("prepare"))  # nothing ran after the first step (its task)
    assert not list(tmp_path.rglob("*.db"))  # and no store appeared anywhere


def test_the_uri_only_in_the_environment_tracks_every_run(tiny_models, mlflow_server, aws_env, tmp_path,
                                                          monkeypatch):
    """Three runs in a row (a race with MLflow's telemetry thread failed 2 of 6 runs before). The second and
    third take the pure steps from kfp.local's cache: what they run is every step that talks to MLflow."""
    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_server.uri)
    experiment = f"kfp-env-{uuid.uuid4().hex[:8]}"
    for _ in range(3):
        run_local(None, tmp_path / "work", cache=True,
                  params=small(tiny_models, experiment, mlflow_tracking_uri=""))
    client = MlflowClient(mlflow_server.uri)
    runs = client.search_runs([client.get_experiment_by_name(experiment).experiment_id])
    parents = [r for r in runs if r.data.tags.get("lightreasoner.kind") == "pipeline"]
    assert len(parents) == 3 and {p.info.status for p in parents} == {"FINISHED"}
    assert all(p.info.run_name.startswith("lightreasoner-20") for p in parents)  # <method>-<date>
    assert len(client.search_model_versions(f"name = '{experiment}'")) == 3
    assert not list(tmp_path.rglob("*.db"))


def test_run_local_quick_keeps_its_store_under_the_workdir(tiny_models, tmp_path, monkeypatch, capsys):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.chdir(tmp_path)
    work = tmp_path / "work"
    sets = [f"expert.model={tiny_models['llama']}", f"amateur.model={tiny_models['llama_small']}",
            "sampling.max_new_tokens=8", "evaluation.max_new_tokens=8", "training.max_steps=2",
            "evaluation.data.limit=2"]
    assert main(["pipeline", "run-local", "--quick", "--workdir", str(work), "--run-name", "quick-one",
                 *[a for s in sets for a in ("--set", s)]]) == 0
    out = capsys.readouterr().out
    store = f"sqlite:///{work / 'mlflow.db'}"
    assert f"browse the run: mlflow ui --backend-store-uri {store} --default-artifact-root {work / 'mlartifacts'}" in out
    assert not (tmp_path / "lightreasoner-runs").exists()
    client = MlflowClient(store)
    (parent,) = client.search_runs([client.get_experiment_by_name("lightreasoner").experiment_id],
                                   "tags.`lightreasoner.kind` = 'pipeline'")
    assert parent.info.status == "FINISHED" and parent.info.run_name == "quick-one"
    assert parent.data.params["data.limit"] == "8"  # run --quick's size (lightreasoner.runner.QUICK)
    assert parent.info.artifact_uri.startswith((work / "mlartifacts").as_uri())
