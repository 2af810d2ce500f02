"""lightreasoner.tracking against a real MLflow server (sqlite backend, s3:// artifacts on moto)."""

from __future__ import annotations

import hashlib
import json
import uuid

import pytest
from fake_outputs import make_config, make_evaluation, make_samples, make_training
from servers import free_port

from lightreasoner import records, storage, tracking
from lightreasoner.errors import LightReasonerError


def test_tracking_uri_resolution_and_embedded_store(tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    cfg = make_config(None, extra=[f"tracking.workdir={tmp_path / 'runs'}"])
    assert tracking.tracking_uri(cfg) == f"sqlite:///{tmp_path / 'runs' / 'mlflow.db'}"
    assert tracking.ui_command(cfg) == (f"mlflow ui --backend-store-uri sqlite:///{tmp_path / 'runs' / 'mlflow.db'} "
                                        f"--default-artifact-root {tmp_path / 'runs' / 'mlartifacts'}")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://env:5000")
    assert tracking.tracking_uri(cfg) == "http://env:5000"
    assert tracking.tracking_uri(make_config("http://cfg:5000")) == "http://cfg:5000"
    monkeypatch.delenv("MLFLOW_TRACKING_URI")
    # The embedded store works end to end with local artifacts.
    evaluation = make_evaluation(tmp_path / "eval", cfg, [True, False, False, True], [True, True, True, True])
    run_id = tracking.log_stage(cfg, "evaluate", evaluation)
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking.tracking_uri(cfg))
    run = client.get_run(run_id)
    assert run.data.metrics["evaluate/accuracy_tuned"] == 1.0
    assert run.info.artifact_uri.startswith((tmp_path / "runs" / "mlartifacts").as_uri())
    assert {f.path for f in client.list_artifacts(run_id)} >= {"metrics.json", "predictions_tuned.parquet", "plots"}
    assert tracking.log_stage(make_config(None, extra=["tracking.enabled=false"]), "evaluate", evaluation) is None


@pytest.mark.slow
def test_tracked_tiny_run(mlflow_server, aws_env, tmp_path, monkeypatch):
    from mlflow.tracking import MlflowClient

    monkeypatch.setenv("LIGHTREASONER_IMAGE", "registry.example/lightreasoner:1.2")
    monkeypatch.setenv("KFP_RUN_ID", "kfp-run-42")
    cfg = make_config(mlflow_server.uri, experiment=f"tiny-{uuid.uuid4().hex[:8]}")
    samples = make_samples(tmp_path / "samples", cfg)
    training = make_training(tmp_path / "train", cfg, samples)
    evaluation = make_evaluation(tmp_path / "eval", cfg, [True, False] * 5, [True] * 8 + [False, True])
    samples_uri = f"s3://{aws_env.bucket}/stage-outputs/samples"
    storage.upload_dir(samples, samples_uri)  # stages accept s3:// outputs too

    with tracking.pipeline_run(cfg, "tiny") as parent:
        ids = {"sample": tracking.log_stage(cfg, "sample", samples_uri, parent),
               "train": tracking.log_stage(cfg, "train", training, parent),
               "evaluate": tracking.log_stage(cfg, "evaluate", evaluation, parent)}

    client = MlflowClient(mlflow_server.uri)
    prun = client.get_run(parent)
    assert prun.info.status == "FINISHED"
    assert prun.data.params["sampling.alpha"] == "0.2" and prun.data.params["data.limit"] == "4"
    assert prun.data.tags["lightreasoner.image"] == "registry.example/lightreasoner:1.2"
    assert prun.data.tags["kubeflow.run_id"] == "kfp-run-42"
    assert prun.data.tags["lightreasoner.version"]
    children = client.search_runs([prun.info.experiment_id], f"tags.mlflow.parentRunId = '{parent}'")
    assert sorted(r.info.run_name for r in children) == ["evaluate", "sample", "train"]
    assert {r.info.run_id for r in children} == set(ids.values())

    sample = client.get_run(ids["sample"]).data
    manifest = json.loads((samples / "manifest.json").read_text())
    assert sample.metrics["sample/kept_fraction"] == pytest.approx(manifest["counts"]["kept_fraction"])
    assert sample.metrics["sample/kept_steps"] == manifest["counts"]["selected"]
    assert sample.metrics["sample/effective_beta"] == pytest.approx(0.4)
    assert sample.metrics["sample/problems_per_second"] == pytest.approx(1.5)
    assert sample.params["expert.model"] == cfg.expert.model
    history = client.get_metric_history(ids["train"], "train/loss")
    assert [(m.step, m.value) for m in sorted(history, key=lambda m: m.step)] == [(1, 1.5), (2, 0.9), (3, 0.5)]
    assert client.get_run(ids["train"]).data.metrics["train/tuned_tokens"] == 321
    ev = client.get_run(ids["evaluate"]).data.metrics
    assert ev["evaluate/accuracy_base"] == 0.5 and ev["evaluate/accuracy_tuned"] == 0.9
    assert ev["evaluate/delta"] == pytest.approx(0.4) and "evaluate/mcnemar_p" in ev
    assert prun.data.metrics["evaluate/delta"] == pytest.approx(0.4)  # copied to the parent run

    # Artifacts are in the bucket (listed with boto3, not through MLflow).
    exp = prun.info.experiment_id
    keys = set(aws_env.keys(f"mlflow/{exp}/"))
    art = {name: f"mlflow/{exp}/{rid}/artifacts/" for name, rid in ids.items()}
    for stage, names in {"sample": ["manifest.json", "samples.parquet", "plots/kl_histogram.png",
                                    "plots/kept_fraction_per_problem.png"],
                         "train": ["manifest.json", "adapter/adapter_config.json",
                                   "adapter/adapter_model.safetensors", "tokenizer/tokenizer.json"],
                         "evaluate": ["metrics.json", "manifest.json", "predictions_base.parquet",
                                      "predictions_tuned.parquet", "plots/accuracy.png"]}.items():
        for name in names:
            assert art[stage] + name in keys, (stage, name)

    # Readable in the UI: the experiment opens in the classic (model training) view; the pipeline run
    # carries the comparison plots; the training run's loss curve heads its artifacts; the evaluation's
    # tables load with mlflow.load_table.
    import mlflow

    assert client.get_experiment(exp).tags["mlflow.experimentKind"] == "custom_model_development"
    assert {f.path for f in client.list_artifacts(parent, "plots")} >= {
        "plots/kl_histogram.png", "plots/kept_fraction_per_problem.png", "plots/loss_curve.png", "plots/accuracy.png"}
    assert client.list_artifacts(ids["train"])[0].path == "0_loss_curve.png"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_server.uri)
    monkeypatch.setenv("MLFLOW_EXPERIMENT_ID", exp)  # load_table looks in the active experiment
    problems = mlflow.load_table("tables/problems.json", run_ids=[ids["evaluate"]])
    assert list(problems.columns) == ["benchmark", "problem_id", "question", "gold", "base_answer", "base_correct",
                                      "tuned_answer", "tuned_correct"]
    assert len(problems) == 10 and problems["question"][3] == "What is 3?"
    assert problems["base_correct"].sum() == 5 and problems["tuned_correct"].sum() == 9
    benchmarks = mlflow.load_table("tables/benchmarks.json", run_ids=[ids["evaluate"]])
    assert benchmarks["accuracy_tuned"].tolist() == [0.9] and benchmarks["benchmark"].tolist() == ["data"]

    from lightreasoner.registry import compare

    table = compare(cfg, [parent, ids["sample"]], echo=False).as_dict()
    assert table["evaluate/accuracy_tuned"][parent] == "0.9"
    assert table["sample/kept_fraction"][ids["sample"]] != "-"


@pytest.mark.slow
def test_secrets_never_logged(mlflow_server, aws_env, tmp_path, monkeypatch):
    from mlflow.tracking import MlflowClient

    hf = "hf_SuperSecretHuggingFaceToken0001"
    password = "Pa55w0rdInUrl"
    monkeypatch.setenv("HF_TOKEN", hf)
    monkeypatch.setenv("GITHUB_TOKEN", "ghp_NotForLogsNotForLogs00001")
    monkeypatch.setenv("LIGHTREASONER_IMAGE", f"https://robot:{password}@registry.example/lr:1")
    secrets = [hf, password, "ghp_NotForLogsNotForLogs00001", aws_env.secret, aws_env.key_id]
    cfg = make_config(mlflow_server.uri, experiment=f"secrets-{uuid.uuid4().hex[:8]}",
                      extra=[f"data.path=https://alice:{password}@data.example/gsm8k.jsonl"])
    leak = {"aws_secret_access_key": aws_env.secret, "env": {"AWS_ACCESS_KEY_ID": aws_env.key_id, "HF_TOKEN": hf},
            "note": f"downloaded with {hf}"}
    samples = make_samples(tmp_path / "samples", cfg, extra_manifest=leak)
    training = make_training(tmp_path / "train", cfg, samples, extra_manifest=leak)
    with tracking.pipeline_run(cfg) as parent:
        run_ids = [parent, tracking.log_stage(cfg, "sample", samples, parent),
                   tracking.log_stage(cfg, "train", training, parent)]
    client = MlflowClient(mlflow_server.uri)
    texts = []
    for rid in run_ids:
        data = client.get_run(rid).data
        texts += [f"{k}={v}" for k, v in data.params.items()] + [f"{k}={v}" for k, v in data.tags.items()]
    assert any("data.path=https://alice:***@data.example" in t for t in texts)
    s3 = aws_env.client()
    exp = client.get_run(parent).info.experiment_id
    for key in aws_env.keys(f"mlflow/{exp}/"):
        if key.endswith((".json", ".txt", ".yaml")):
            texts.append(s3.get_object(Bucket=aws_env.bucket, Key=key)["Body"].read().decode())
    blob = "\n".join(texts)
    for secret in secrets:
        assert secret not in blob
    assert "aws_secret_access_key" not in blob.lower()


def test_tracking_server_down(aws_env, tmp_path):
    cfg = make_config(f"http://127.0.0.1:{free_port()}")
    evaluation = make_evaluation(tmp_path / "eval", cfg, [True, False], [True, True])
    with pytest.raises(LightReasonerError, match=r"http://127.0.0.1:\d+: MLflow tracking server is not reachable"):
        tracking.log_stage(cfg, "evaluate", evaluation)
    with pytest.raises(LightReasonerError, match="not reachable"):
        tracking.start_pipeline(cfg)


@pytest.mark.slow
def test_bad_stage_inputs(mlflow_server, aws_env, tmp_path):
    cfg = make_config(mlflow_server.uri)
    (tmp_path / "empty").mkdir()
    with pytest.raises(LightReasonerError, match="missing manifest.json"):
        tracking.log_stage(cfg, "sample", tmp_path / "empty")
    with pytest.raises(LightReasonerError, match="stage 'bogus'"):
        tracking.log_stage(cfg, "bogus", tmp_path / "empty")
    with pytest.raises(LightReasonerError, match="not found"):
        tracking.log_stage(cfg, "train", tmp_path / "nope")


# --- datasets and the stage run's lifecycle ----------------------------------------------------------


def _inputs(client, run_id: str) -> dict[str, tuple]:
    """name -> (digest, source type, source, context) of a run's dataset inputs."""
    out = {}
    for item in client.get_run(run_id).inputs.dataset_inputs:
        tags = {t.key: t.value for t in item.tags}
        d = item.dataset
        out[d.name] = (d.digest, d.source_type, json.loads(d.source), tags.get("mlflow.data.context"))
    return out


@pytest.mark.slow
def test_stage_inputs_are_logged_as_mlflow_datasets(mlflow_server, aws_env, tmp_path):
    import pyarrow.parquet as pq
    from fake_outputs import sha256
    from mlflow.tracking import MlflowClient

    from lightreasoner.data import prepare_data

    cfg = make_config(mlflow_server.uri, experiment=f"datasets-{uuid.uuid4().hex[:8]}")
    problems = prepare_data(cfg.data, tmp_path / "problems")
    samples = make_samples(tmp_path / "samples", cfg)
    training = make_training(tmp_path / "train", cfg, samples)
    evaluation = make_evaluation(tmp_path / "eval", cfg, [True, False, True], [True, True, True])
    parent = tracking.start_pipeline(cfg)
    ids = {stage: tracking.log_stage(cfg, stage, folder, parent)
           for stage, folder in (("prepare", tmp_path / "problems"), ("train", training), ("evaluate", evaluation))}
    client = MlflowClient(mlflow_server.uri)

    # prepare: the configured problems (the synthetic generator here), digested by the problem ids it wrote.
    (name, (digest, source_type, source, context)), = _inputs(client, ids["prepare"]).items()
    assert name == "synthetic:train[:4]" and context == "training"
    assert source_type == "code" and source["tags"]["split"] == "train"
    ids_text = "\n".join(pq.read_table(problems).column("problem_id").to_pylist())
    assert digest == hashlib.sha256(ids_text.encode()).hexdigest()[:16]
    # train: the samples folder, digested by the samples.parquet sha256 the adapter was trained on.
    (digest, source_type, source, context), = _inputs(client, ids["train"]).values()
    assert (digest, context) == (sha256(samples / "samples.parquet")[:16], "training")
    assert source_type == "local" and source["uri"] == samples.resolve().as_uri()
    # evaluate: the evaluation problems.
    (name, (digest, _, _, context)), = _inputs(client, ids["evaluate"]).items()
    assert name == "synthetic:test" and context == "evaluation" and digest
    # A hub data set keeps its hub name and split (lineage links to the Hugging Face dataset).
    hub = records._problems_input({"path": "openai/gsm8k", "split": "test", "hf_config": "main"}, "evaluation",
                                   None, 10)
    assert (hub.hub, hub.name, hub.hf_config) == (True, "openai/gsm8k:test", "main")


@pytest.mark.slow
def test_a_failing_stage_leaves_its_run_failed_with_its_own_error(mlflow_server, aws_env, tmp_path):
    from mlflow.tracking import MlflowClient

    cfg = make_config(mlflow_server.uri, experiment=f"fail-{uuid.uuid4().hex[:8]}")
    client = MlflowClient(mlflow_server.uri)
    with pytest.raises(LightReasonerError) as failed:
        with tracking.pipeline_run(cfg, "fails") as parent:
            with tracking.tracked_stage(cfg, "train", tmp_path / "train", parent) as run_id:
                import mlflow

                assert mlflow.active_run().info.run_id == run_id  # the stage runs inside its run
                raise LightReasonerError("training.learning_rate: loss is NaN at step 3")
    assert str(failed.value) == "training.learning_rate: loss is NaN at step 3"
    run = client.get_run(run_id)
    assert run.info.status == "FAILED"
    assert run.data.tags["mlflow.parentRunId"] == parent
    assert run.data.tags["lightreasoner.error"] == "training.learning_rate: loss is NaN at step 3"
    assert client.get_run(parent).info.status == "FAILED"
    import mlflow

    assert mlflow.active_run() is None  # nothing left active for the next stage
    # A stage that completes: its run ends FINISHED with the folder logged into it.
    evaluation = make_evaluation(tmp_path / "eval", cfg, [True, False], [True, True])
    with tracking.tracked_stage(cfg, "evaluate", evaluation) as run_id:
        pass
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED" and run.data.metrics["evaluate/accuracy_tuned"] == 1.0
    assert run.inputs.dataset_inputs


@pytest.mark.slow
def test_server_down_does_not_hide_the_stage_error(mlflow_server, aws_env, tmp_path, monkeypatch, caplog):
    from servers import paused

    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "2")
    cfg = make_config(mlflow_server.uri, experiment=f"down-{uuid.uuid4().hex[:8]}")
    with paused(mlflow_server.proc) as server, pytest.raises(LightReasonerError) as failed:
        with tracking.tracked_stage(cfg, "sample", tmp_path / "samples"):
            server.stop()  # the tracking server goes away while the stage runs
            raise LightReasonerError("sampling.beta: no step passed beta 0.4")
    assert str(failed.value) == "sampling.beta: no step passed beta 0.4"
    assert "ending the failed sample run failed" in caplog.text
    import mlflow

    assert mlflow.active_run() is None


@pytest.mark.slow
def test_training_loss_is_visible_while_it_trains(mlflow_server, aws_env, tiny_models, tmp_path):
    """The loss streams to the train run as the trainer logs it: polled from the server mid-training."""
    from conftest import tiny_config
    from mlflow.tracking import MlflowClient
    from transformers import TrainerCallback

    from lightreasoner.sampling import sample
    from lightreasoner.training import train

    cfg = tiny_config(tiny_models, **{"tracking.enabled": "true", "tracking.tracking_uri": mlflow_server.uri,
                                      "tracking.experiment": f"live-{uuid.uuid4().hex[:8]}",
                                      "sampling.beta": "auto:0.5", "training.max_steps": 5,
                                      "training.logging_steps": 1})
    sample(cfg, tmp_path / "samples", progress=False)
    client = MlflowClient(mlflow_server.uri)
    seen: dict[int, int] = {}

    class Probe(TrainerCallback):  # what a user watching the MLflow UI would see, step by step
        def on_step_end(self, args, state, control, **kwargs):
            seen[state.global_step] = len(client.get_metric_history(run_id, "train/loss"))

    with tracking.tracked_stage(cfg, "train", tmp_path / "train") as run_id:
        train(cfg, tmp_path / "samples", tmp_path / "train", progress=False,
              callbacks=[*tracking.live_training_callbacks(cfg, run_id), Probe()])
    # on_step_end runs before that step's log: at step 3 the losses of steps 1 and 2 are on the server.
    assert seen[3] >= 2
    history = client.get_metric_history(run_id, "train/loss")
    assert sorted(m.step for m in history) == [1, 2, 3, 4, 5]  # streamed once, not replayed again
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED" and "train/learning_rate" in run.data.metrics


def test_kl_histogram_counts_what_the_metrics_count(tmp_path, monkeypatch):
    """Candidate steps only (t = 0 left out with skip_first_step), kept = the manifest's selected steps."""
    from lightreasoner import plots, records

    cfg = make_config(None, extra=["sampling.skip_first_step=true"])
    samples = make_samples(tmp_path / "samples", cfg)
    legends = []
    real_save = plots.save

    def spy(fig, path, dpi=110):
        legends.extend(t.get_text() for ax in fig.axes if ax.get_legend() for t in ax.get_legend().get_texts())
        return real_save(fig, path, dpi)

    monkeypatch.setattr(plots, "save", spy)
    record = records.read_sample(samples, tmp_path)
    kept, steps = int(record.metrics["sample/kept_steps"]), 12 - 3  # 12 steps in 3 trajectories, t = 0 skipped
    assert legends[0] == f"beta = 0.4 (kept {kept} of {steps} candidate steps, {kept / steps:.1%})"
