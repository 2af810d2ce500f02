"""The pipeline end to end through kfp.local (SubprocessRunner) on tiny models and synthetic problems."""

import json

import pyarrow.parquet as pq
from conftest import tiny_config
from mlflow.tracking import MlflowClient

from pipelines.client import run_local


def test_local_pipeline_run_with_two_shards(tiny_models, tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    cfg = tiny_config(tiny_models, **{"tracking.enabled": "true", "tracking.tracking_uri": uri,
                                      "tracking.experiment": "kfp-local", "data.limit": 6,
                                      "sampling.batch_size": 2, "sampling.beta": "auto:0.5",
                                      "training.max_steps": 2, "evaluation.data.limit": 4,
                                      "evaluation.bootstrap_samples": 200, "registry.model_name": "tiny-local"})
    run = run_local(cfg, tmp_path / "work", shards=2)
    out = run.outputs
    problems = pq.read_table(out["prepare-data/problems"] / "problems.parquet")
    assert problems.num_rows == 6
    samples = out["merge-samples/samples"]
    manifest = json.loads((samples / "manifest.json").read_text())
    assert manifest["shards"] == 2 and manifest["counts"]["problems"] == 6
    assert json.loads((out["finetune-lora/adapter"] / "manifest.json").read_text())["steps"] == 2
    metrics = json.loads((out["evaluate/evaluation"] / "metrics.json").read_text())
    assert metrics["n"] == 4 and metrics["accuracy_tuned"] is not None

    client = MlflowClient(uri)
    exp = client.get_experiment_by_name("kfp-local")
    runs = client.search_runs([exp.experiment_id])
    parents = [r for r in runs if r.data.tags.get("lightreasoner.kind") == "pipeline"]
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    children = {r.data.tags.get("lightreasoner.stage") for r in runs
                if r.data.tags.get("mlflow.parentRunId") == parents[0].info.run_id}
    assert {"prepare", "sample", "train", "evaluate", "register"} <= children
    assert parents[0].data.params["sampling.beta"] == "auto:0.5"
    versions = client.search_model_versions("name='tiny-local'")
    assert len(versions) == 1
    assert client.get_model_version_by_alias("tiny-local", "challenger").version == versions[0].version
