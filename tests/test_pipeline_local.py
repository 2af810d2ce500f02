"""The pipeline end to end through kfp.local (SubprocessRunner) on tiny models and synthetic problems.

The runs use the pipeline's own defaults (the paper's setting: 1,000 problems, 128 sampling tokens, 512
evaluation tokens, 4 shards, ...) except the model and data names; the synthetic data set has 16
problems per split, so "1,000 problems" takes all 16 (the failure and cache tests also shorten training). The Expert is the controlled tiny model of
conftest (it answers "4", right on some problems), so rejection sampling keeps solutions for real.
"""

import json

import pyarrow.parquet as pq
import pytest
import yaml
from lightreasoner.pipelines.client import run_local
from mlflow.tracking import MlflowClient

pytestmark = pytest.mark.slow

SYNTHETIC = yaml.safe_dump({"data": {"synthetic_size": 16}, "evaluation": {"data": {"synthetic_size": 16}}})


def names(tiny_models, uri, experiment, **extra):
    """The model and data names (and where to log); everything else stays at the pipeline's defaults."""
    return {"expert": str(tiny_models["answering"]), "amateur": str(tiny_models["llama_small"]),
            "dataset": "synthetic", "eval_dataset": "synthetic", "eval_benchmarks": [], "config_yaml": SYNTHETIC,
            "mlflow_tracking_uri": uri, "mlflow_experiment": experiment, "registered_model": experiment, **extra}


def runs_of(uri, experiment):
    client = MlflowClient(uri)
    runs = client.search_runs([client.get_experiment_by_name(experiment).experiment_id])
    parents = sorted((r for r in runs if r.data.tags.get("lightreasoner.kind") == "pipeline"),
                     key=lambda r: r.info.start_time, reverse=True)
    children = {r.data.tags.get("lightreasoner.stage"): r for r in runs
                if parents and r.data.tags.get("mlflow.parentRunId") == parents[0].info.run_id}
    return client, parents, children


STAGES = {
    "lightreasoner": {"prepare", "sample", "train", "evaluate", "register"},
    "sft": {"prepare", "sft", "evaluate_sft"},
    "both": {"prepare", "sample", "train", "evaluate", "register", "sft", "evaluate_sft"},
}


def check_run(run, method: str, uri: str, experiment: str, shards: int) -> None:
    """Every stage's outputs and MLflow records of a finished local run."""
    out = run.outputs
    assert pq.read_table(out["prepare/problems"] / "problems.parquet").num_rows == 16
    if method != "sft":
        manifest = json.loads((out["merge-sample/samples"] / "manifest.json").read_text())
        assert manifest["shards"] == shards and manifest["counts"]["problems"] == 16
        assert manifest["config"]["sampling"]["max_new_tokens"] == 128  # the paper's default
        train = json.loads((out["train/adapter"] / "manifest.json").read_text())
        assert train["config"]["training"]["learning_rate"] == 5e-5 and train["steps"] >= 1
        metrics = json.loads((out["merge-evaluate/evaluation"] / "metrics.json").read_text())
        assert metrics["n"] == 16 and metrics["accuracy_tuned"] is not None
        page = (run.root / "merge-evaluate" / "summary").read_text()
        assert "accuracy tuned" in page and "data:image/png;base64," in page and "KL histogram" in page
    if method != "lightreasoner":
        sft_adapter = out[f"{'sft-both' if method == 'both' else 'sft'}/adapter"]
        sft_manifest = json.loads((sft_adapter / "manifest.json").read_text())
        assert sft_manifest["counts"]["kept_solutions"] >= 1  # the answering Expert was right somewhere
    client, parents, children = runs_of(uri, experiment)
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    assert parents[0].data.tags["kfp.run_id"]
    assert STAGES[method] <= set(children)
    assert all(r.info.status == "FINISHED" for r in children.values())
    # A stage's run records the settings it used, not the other stages'.
    if method != "sft":
        assert "sampling.beta" in children["sample"].data.params
        assert not any(k.startswith("evaluation.") for k in children["sample"].data.params)
        versions = client.search_model_versions(f"name='{experiment}'")
        assert len(versions) == 1
        # the pipeline run names the version it produced and the decision, and carries the comparison plots
        tags = parents[0].data.tags
        assert tags["lightreasoner.model_version"] == str(versions[0].version) and tags["promotion.decision"]
        assert versions[0].tags["promotion.decision"] == tags["promotion.decision"]
        assert {f.path for f in client.list_artifacts(parents[0].info.run_id, "plots")} >= {
            "plots/kl_histogram.png", "plots/loss_curve.png", "plots/accuracy.png"}
    if method == "both":
        assert "report/ratio_tuned_tokens" in parents[0].data.metrics


@pytest.mark.parametrize("method", ["sft", "both"])  # lightreasoner alone: the cache test below (its branch at the defaults runs in "both")
def test_pipeline_defaults_run_end_to_end(method, tiny_models, tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    run = run_local(None, tmp_path / "work", shards=2, method=method,
                    params=names(tiny_models, uri, f"kfp-{method}"))
    check_run(run, method, uri, f"kfp-{method}", shards=2)


# The two tests below check failure and caching, not the defaults (the test above runs those), so they
# train for 20 updates instead of the paper's 1,000 (a minute of each run on two cores).
SHORT = {"max_steps": 20}


def test_failed_stage_marks_the_parent_run_failed(tiny_models, tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    params = names(tiny_models, uri, "kfp-fail", eval_dataset=str(tmp_path / "no-such-file.jsonl"), **SHORT)
    with pytest.raises(Exception, match="local pipeline run failed"):
        run_local(None, tmp_path / "work", shards=1, params=params)
    _, parents, children = runs_of(uri, "kfp-fail")
    assert len(parents) == 1 and parents[0].info.status == "FAILED"
    assert {"prepare", "sample", "train"} <= set(children) and "evaluate" not in children


def test_changing_an_evaluation_setting_keeps_the_sampling_cache(tiny_models, tmp_path):
    """The second run evaluates across 2 shards (base and tuned pods per shard, then the merge): the same
    evaluation as the first run's single shard. 4 problems per batch: each shard holds 2 of the 4 batches."""
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    work = tmp_path / "work"
    first = run_local(None, work, shards=1, cache=True,
                      params=names(tiny_models, uri, "kfp-cache", eval_batch_size="4", **SHORT))
    check_run(first, "lightreasoner", uri, "kfp-cache", shards=1)
    second = run_local(None, work, shards=1, cache=True,
                       params=names(tiny_models, uri, "kfp-cache", eval_batch_size="4", eval_shards=2, **SHORT))
    # prepare, sampling, merge and training came from the cache; evaluation ran again, in 2 + 2 pods.
    assert not {"prepare/problems", "sample/shard", "merge-sample/samples",
                "train/adapter"} & set(second.outputs)
    pods = sorted(name.split("/")[1] for name in second.outputs if name.startswith("for-loop"))
    assert pods == ["evaluate-base", "evaluate-base", "evaluate-tuned", "evaluate-tuned"]
    one, two = first.outputs["merge-evaluate/evaluation"], second.outputs["merge-evaluate/evaluation"]
    manifest = json.loads((two / "manifest.json").read_text())
    assert manifest["config"]["evaluation"]["shards"] == 2 and manifest["shards"] == 2
    assert json.loads((one / "manifest.json").read_text())["shards"] == 1
    metrics = [json.loads((folder / "metrics.json").read_text()) for folder in (one, two)]
    assert metrics[0]["n"] == 16 and {**metrics[0], "adapter": None} == {**metrics[1], "adapter": None}
    for name in ("predictions_base.parquet", "predictions_tuned.parquet"):
        assert pq.read_table(one / name).equals(pq.read_table(two / name)), name
    _, parents, _ = runs_of(uri, "kfp-cache")
    assert len(parents) == 2 and {p.info.status for p in parents} == {"FINISHED"}
    assert len(MlflowClient(uri).search_model_versions("name='kfp-cache'")) == 2
