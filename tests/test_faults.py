"""Faults lose nothing (issue 15): one test per numbered fault, real SIGKILLs (tests/killer.py) and real
moto and MLflow servers (tests/servers.py)."""

from __future__ import annotations

import json
import os
import subprocess
import uuid
from contextlib import contextmanager
from pathlib import Path

import pytest
from fake_outputs import make_config, make_evaluation, make_samples, make_training
from killer import file_appears, kill_at_call, kill_when, run_cli
from servers import paused

from lightreasoner import outputs, registry, storage
from lightreasoner.cli import main
from lightreasoner.errors import LightReasonerError

pytestmark = pytest.mark.filterwarnings("ignore:Add type hints:UserWarning")

N = 40
BASE = [i < 20 for i in range(N)]
TUNED = [i < 30 for i in range(N)]


def common(tiny_models, *extra: str) -> list[str]:
    sets = [f"expert.model={tiny_models['llama']}", "amateur.keep_layers=1", "data.limit=6",
            "sampling.max_new_tokens=8", "sampling.batch_size=2", "sampling.beta=auto:0.5",
            "tracking.enabled=false", "training.lora_dropout=0.0", *extra]
    return [arg for s in sets for arg in ("--set", s)]


def one_line_error(outcome_or_err) -> str:
    err = outcome_or_err if isinstance(outcome_or_err, str) else outcome_or_err.stderr
    lines = [line for line in err.strip().splitlines() if line.strip()]
    assert "Traceback" not in err, err
    assert lines and lines[-1].startswith("error: "), err
    return lines[-1]


def fabricate(tmp_path, cfg, tag):
    samples = make_samples(tmp_path / f"samples-{tag}", cfg)
    training = make_training(tmp_path / f"train-{tag}", cfg, samples)
    evaluation = make_evaluation(tmp_path / f"eval-{tag}", cfg, BASE, TUNED, training=training)
    return samples, training, evaluation


def versions(client, name):
    return client.search_model_versions(f"name = '{name}'")


@pytest.fixture
def registry_setup(mlflow_server, aws_env, tmp_path):
    from mlflow.tracking import MlflowClient

    name = f"lr-{uuid.uuid4().hex[:8]}"
    cfg = make_config(mlflow_server.uri, experiment=f"faults-{name}", model_name=name)
    return name, cfg, MlflowClient(mlflow_server.uri)


# --- (a) the registry -------------------------------------------------------------------------------


@pytest.mark.slow
def test_1_register_refuses_an_evaluation_of_another_adapter(registry_setup, tmp_path):
    name, cfg, client = registry_setup
    samples, training, _ = fabricate(tmp_path, cfg, "a")
    _, other_training, other_eval = fabricate(tmp_path, cfg, "b")
    with pytest.raises(LightReasonerError, match="scored another adapter"):
        registry.register(cfg, training, other_eval, samples)
    legacy = make_evaluation(tmp_path / "legacy", cfg, BASE, TUNED)  # no adapter digest recorded
    with pytest.raises(LightReasonerError, match="records no adapter_sha256"):
        registry.register(cfg, training, legacy, samples)
    assert versions(client, name) == [] and client.get_experiment_by_name(f"faults-{name}") is None
    # evaluate records the digest of the adapter it scored (here: a real evaluation's metrics)
    assert json.loads((other_eval / "metrics.json").read_text())["adapter_sha256"] == \
        outputs.folder_sha256(other_training / "adapter")


@pytest.mark.slow
def test_1_evaluate_records_the_adapter_digest(tiny_models, tmp_path):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from lightreasoner.config import load_config
    from lightreasoner.evaluation import evaluate

    adapter = tmp_path / "adapter"
    base = AutoModelForCausalLM.from_pretrained(tiny_models["llama"])
    get_peft_model(base, LoraConfig(r=2, lora_alpha=4, target_modules=["q_proj", "v_proj"])).save_pretrained(adapter)
    cfg = load_config(None, [f"expert.model={tiny_models['llama']}", "evaluation.max_new_tokens=4",
                             "evaluation.data.limit=2", "evaluation.bootstrap_samples=100", "tracking.enabled=false"])
    result = evaluate(cfg, None, adapter, tmp_path / "eval", progress=False)
    assert result.metrics["adapter_sha256"] == outputs.folder_sha256(adapter)
    assert json.loads((tmp_path / "eval" / "manifest.json").read_text())["adapter"]["sha256"] == \
        outputs.folder_sha256(adapter)


@pytest.mark.slow
def test_2_register_refuses_a_corrupt_adapter(registry_setup, tmp_path):
    name, cfg, client = registry_setup
    samples, training, _ = fabricate(tmp_path, cfg, "c")
    (training / "adapter" / "adapter_model.safetensors").write_bytes(os.urandom(4096))
    evaluation = make_evaluation(tmp_path / "eval-c2", cfg, BASE, TUNED, training=training)  # digest matches
    with pytest.raises(LightReasonerError, match="adapter_model.safetensors does not load"):
        registry.register(cfg, training, evaluation, samples)
    # shapes that contradict adapter_config.json's rank are refused too
    from fake_outputs import write_lora_weights

    write_lora_weights(training / "adapter" / "adapter_model.safetensors", rank=4)
    evaluation = make_evaluation(tmp_path / "eval-c3", cfg, BASE, TUNED, training=training)
    with pytest.raises(LightReasonerError, match="has rank 4, adapter_config.json says r=8"):
        registry.register(cfg, training, evaluation, samples)
    assert versions(client, name) == [] and client.get_experiment_by_name(f"faults-{name}") is None


@pytest.mark.slow
def test_8_server_dies_after_the_version_is_created_and_the_retry_completes(registry_setup, mlflow_server,
                                                                           tmp_path, monkeypatch):
    from mlflow.tracking import MlflowClient

    name, cfg, client = registry_setup
    samples, training, evaluation = fabricate(tmp_path, cfg, "d")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "2")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    original = MlflowClient.create_model_version
    with paused(mlflow_server.proc) as pause:
        def create_then_die(self, *args, **kwargs):
            version = original(self, *args, **kwargs)
            pause.stop()  # the server stops answering right after the version exists
            return version

        monkeypatch.setattr(MlflowClient, "create_model_version", create_then_die)
        with pytest.raises(LightReasonerError):
            registry.register(cfg, training, evaluation, samples)
    monkeypatch.setattr(MlflowClient, "create_model_version", original)
    left = versions(client, name)
    assert len(left) == 1 and dict(client.get_registered_model(name).aliases) == {}
    assert client.get_run(left[0].run_id).info.status == "RUNNING"

    # The retry (a Kubeflow retry of the register step) completes that version instead of making another.
    again = registry.register(cfg, training, evaluation, samples)
    assert again.version == left[0].version and len(versions(client, name)) == 1
    assert dict(client.get_registered_model(name).aliases) == {"challenger": again.version}
    assert client.get_run(again.run_id).info.status == "FINISHED"
    # and a third call changes nothing
    assert registry.register(cfg, training, evaluation, samples).version == again.version
    assert len(versions(client, name)) == 1


@pytest.mark.slow
def test_8_killed_register_run_is_marked_failed_on_the_next_call(registry_setup, mlflow_server, tmp_path):
    name, cfg, client = registry_setup
    samples, training, evaluation = fabricate(tmp_path, cfg, "e")
    args = ["register", "--set", f"tracking.tracking_uri={mlflow_server.uri}", "--set",
            f"tracking.experiment=faults-{name}", "--set", f"registry.model_name={name}",
            "--training", training, "--evaluation", evaluation, "--samples", samples]
    killed = kill_at_call(args, "lightreasoner.registry:save_pyfunc", mode="before")
    assert killed.killed, killed.stderr
    exp = client.get_experiment_by_name(f"faults-{name}").experiment_id
    assert [r.info.status for r in client.search_runs([exp])] == ["RUNNING"]
    done = run_cli(args)
    assert done.returncode == 0, done.stderr
    statuses = sorted(r.info.status for r in client.search_runs([exp]))
    assert statuses == ["FAILED", "FINISHED"] and len(versions(client, name)) == 1


def test_13_mlmodel_is_logged_after_the_adapter_and_tokenizer(tmp_path, monkeypatch, aws_env):
    """A store whose artifacts go through MLflow (not our S3 writer): MLmodel strictly last, and a failed
    tokenizer upload leaves no MLmodel and no version."""
    from mlflow.tracking import MlflowClient

    name = f"lr-{uuid.uuid4().hex[:8]}"
    cfg = make_config(f"sqlite:///{tmp_path / 'mlflow.db'}", experiment="proxied", model_name=name)
    samples, training, evaluation = fabricate(tmp_path, cfg, "f")
    calls = []
    log_artifacts, log_artifact = MlflowClient.log_artifacts, MlflowClient.log_artifact

    def spy_dir(self, run_id, local_dir, artifact_path=None):
        calls.append(artifact_path)
        if artifact_path == "model/artifacts" and fail["on"]:
            raise OSError("connection reset while uploading the tokenizer")
        return log_artifacts(self, run_id, local_dir, artifact_path)

    def spy_file(self, run_id, local_path, artifact_path=None):
        calls.append(f"{artifact_path}/{Path(local_path).name}")
        return log_artifact(self, run_id, local_path, artifact_path)

    fail = {"on": True}
    monkeypatch.setattr(MlflowClient, "log_artifacts", spy_dir)
    monkeypatch.setattr(MlflowClient, "log_artifact", spy_file)
    with pytest.raises((LightReasonerError, OSError)):
        registry.register(cfg, training, evaluation, samples)
    assert "model/MLmodel" not in calls
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    assert versions(client, name) == []
    fail["on"] = False
    calls.clear()
    registry.register(cfg, training, evaluation, samples)
    model_calls = [c for c in calls if c and c.startswith("model")]
    assert model_calls[-1] == "model/MLmodel" and "model/artifacts" in model_calls[:-1]


# --- (b) bad input, secrets, leftovers, messages ------------------------------------------------------


def test_9_beta_nan_and_inf_are_refused(tiny_models, tmp_path, capsys):
    for beta in ("nan", "inf", "-inf"):
        out = tmp_path / f"s-{beta}"
        args = common(tiny_models)
        args[args.index("sampling.beta=auto:0.5")] = f"sampling.beta={beta}"
        assert main(["sample", *args, "--output", str(out)]) == 2
        assert "must be a finite number" in one_line_error(capsys.readouterr().err)
        assert not out.exists()


@pytest.mark.slow
def test_11_credentials_in_the_tracking_uri_are_never_written_or_printed(registry_setup, mlflow_server,
                                                                        tiny_models, tmp_path, capsys):
    name, cfg, client = registry_setup
    secret = "hunter2-not-for-logs"
    uri = mlflow_server.uri.replace("http://", f"http://alice:{secret}@")
    out = tmp_path / "samples"
    assert main(["sample", *common(tiny_models, f"tracking.tracking_uri={uri}"), "--output", str(out)]) == 0
    manifest = (out / "manifest.json").read_text()
    assert secret not in manifest and "alice:***@" in manifest
    samples, training, evaluation = fabricate(tmp_path, cfg, "g")
    assert main(["register", "--set", f"tracking.tracking_uri={uri}", "--set", f"tracking.experiment=faults-{name}",
                 "--set", f"registry.model_name={name}", "--training", str(training), "--evaluation",
                 str(evaluation)]) == 0
    captured = capsys.readouterr()
    assert secret not in captured.out + captured.err
    assert len(versions(client, name)) == 1


def test_12_refused_runs_leave_nothing_that_blocks_the_corrected_rerun(tiny_models, tmp_path, capsys):
    out = tmp_path / "samples"
    assert main(["sample", *common(tiny_models, "data.path=/no/such/problems.jsonl"), "--output", str(out)]) == 2
    one_line_error(capsys.readouterr().err)
    assert not out.exists()
    # A run of another config that died before its first batch left shards/state.json: not in the way.
    (out / "shards").mkdir(parents=True)
    (out / "shards" / "state.json").write_text(json.dumps({"fingerprint": "0" * 64}))
    assert main(["sample", *common(tiny_models), "--output", str(out)]) == 0
    assert (out / "manifest.json").is_file()


@pytest.mark.slow
def test_10_one_line_errors(registry_setup, tiny_models, tmp_path, capsys):
    out = tmp_path / "samples"
    args = common(tiny_models)
    # invalid manifest.json: refused in one line; --overwrite replaces it
    out.mkdir()
    (out / "manifest.json").write_text("{not json")
    assert main(["sample", *args, "--output", str(out)]) == 2
    assert "not valid JSON" in one_line_error(capsys.readouterr().err)
    assert main(["sample", *args, "--output", str(out), "--overwrite"]) == 0
    capsys.readouterr()
    # invalid shards/state.json beside finished batches: one line; --overwrite starts again
    other = tmp_path / "other"
    (other / "shards").mkdir(parents=True)
    (other / "shards" / "state.json").write_text("")
    (other / "shards" / "batch-00000.parquet").write_bytes(b"PAR1 torn")
    assert main(["sample", *args, "--output", str(other)]) == 2
    assert "state.json: not valid JSON" in one_line_error(capsys.readouterr().err)
    assert main(["sample", *args, "--output", str(other), "--overwrite"]) == 0
    # a damaged batch file in a resumable run is computed again
    third = tmp_path / "third"
    from lightreasoner.config import load_config
    from lightreasoner.sampling import sampling_fingerprint

    cfg = load_config(None, [a for a in args if a != "--set"])
    (third / "shards").mkdir(parents=True)
    (third / "shards" / "state.json").write_text(json.dumps({"fingerprint": sampling_fingerprint(cfg, False)}))
    (third / "shards" / "batch-00000.parquet").write_bytes(b"garbage")
    assert main(["sample", *args, "--output", str(third)]) == 0
    assert (third / "samples.parquet").read_bytes() == (other / "samples.parquet").read_bytes()
    capsys.readouterr()
    # an output below a file (like a read-only or full disk: an OSError): one line naming the path
    (tmp_path / "afile").write_text("x")
    assert main(["prepare-data", "--set", "data.path=synthetic", "--set", "data.limit=3", "--output",
                 str(tmp_path / "afile" / "sub")]) == 2
    assert "afile" in one_line_error(capsys.readouterr().err)
    # register with a corrupt predictions file
    name, rcfg, _ = registry_setup
    samples, training, evaluation = fabricate(tmp_path, rcfg, "h")
    (evaluation / "predictions_tuned.parquet").write_bytes(b"not parquet")
    with pytest.raises(LightReasonerError, match="predictions_tuned.parquet: not a readable Parquet file"):
        registry.register(rcfg, training, evaluation, samples)


def test_14_misleading_messages(tiny_models, aws_env, tmp_path, capsys):
    from lightreasoner.training import load_samples

    samples = tmp_path / "samples"
    assert main(["sample", *common(tiny_models), "--output", str(samples)]) == 0
    manifest = json.loads((samples / "manifest.json").read_text())
    (samples / "manifest.json").write_text(json.dumps({**manifest, "stage": "train"}))
    with pytest.raises(LightReasonerError, match="holds the output of stage 'train', not samples"):
        load_samples(samples)
    # an error about an s3:// output names the URI, not the local work folder
    uri = f"s3://{aws_env.bucket}/faults-{uuid.uuid4().hex[:8]}/samples"
    storage.upload_dir(samples, uri)
    capsys.readouterr()
    assert main(["sample", *common(tiny_models), "--output", uri]) == 2
    line = one_line_error(capsys.readouterr().err)
    assert line.startswith(f"error: {uri}/manifest.json: belongs to stage 'train'") and "/tmp" not in line


# --- (c) checkpoints --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def cli_samples(tiny_models, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("fault-samples") / "samples"
    assert main(["sample", *common(tiny_models), "--output", str(out)]) == 0
    return out


TRAIN = ("training.max_steps=6", "training.batch_size=1", "training.save_steps=2", "training.save_total_limit=1")


@pytest.fixture(scope="module")
def full_training(tiny_models, cli_samples, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("fault-train") / "full"
    assert main(["train", *common(tiny_models, *TRAIN), "--samples", str(cli_samples), "--output", str(out)]) == 0
    return out


def adapter_tensors(folder: Path):
    from safetensors.torch import load_file

    return load_file(str(folder / "adapter" / "adapter_model.safetensors"))


def same_adapter(a: Path, b: Path) -> bool:
    import torch

    ta, tb = adapter_tensors(a), adapter_tensors(b)
    return ta.keys() == tb.keys() and all(torch.allclose(ta[k], tb[k], atol=1e-5) for k in ta)


@pytest.mark.slow
@pytest.mark.parametrize("target, mode", [
    ("transformers.trainer_callback:TrainerState.save_to_json", "torn"),  # an empty trainer_state.json
    ("lightreasoner.trainer:write_json_atomic", "before"),  # killed just before the counters file
])
def test_6_kill_inside_a_checkpoint_save_resumes_from_the_last_complete_one(
        tiny_models, cli_samples, full_training, tmp_path, target, mode):
    out = tmp_path / "train"
    args = ["train", *common(tiny_models, *TRAIN), "--samples", cli_samples, "--output", out]
    killed = kill_at_call(args, target, nth=2, mode=mode)  # the save at step 4 is interrupted
    assert killed.killed, killed.stderr
    assert (out / "checkpoints" / "checkpoint-2").is_dir()  # not rotated away before step 4 was complete
    resumed = run_cli([*args, "--resume"])
    assert resumed.returncode == 0, resumed.stderr
    done = json.loads((out / "manifest.json").read_text())
    full = json.loads((full_training / "manifest.json").read_text())
    assert done["resumed_from"] == "checkpoint-2"
    assert done["steps"] == full["steps"] == 6 and done["tuned_tokens"] == full["tuned_tokens"]
    assert same_adapter(out, full_training)


@pytest.mark.slow
def test_7_resuming_at_the_final_step_adds_no_step(tiny_models, cli_samples, full_training, tmp_path):
    out = tmp_path / "train"
    args = ["train", *common(tiny_models, *TRAIN), "--samples", cli_samples, "--output", out]
    killed = kill_at_call(args, "lightreasoner.training:save_outputs", mode="before")  # after checkpoint-6
    assert killed.killed and (out / "checkpoints" / "checkpoint-6").is_dir()
    resumed = run_cli([*args, "--resume"])
    assert resumed.returncode == 0, resumed.stderr
    done = json.loads((out / "manifest.json").read_text())
    full = json.loads((full_training / "manifest.json").read_text())
    assert done["steps"] == 6 and done["tuned_tokens"] == full["tuned_tokens"]
    assert [e["step"] for e in done["loss_history"]] == [e["step"] for e in full["loss_history"]]
    assert same_adapter(out, full_training)


# --- (d) s3:// outputs ------------------------------------------------------------------------------


def _s3_args(tiny_models, uri):
    return ["sample", *common(tiny_models), "--output", uri]


@pytest.mark.slow
def test_3_a_rerun_never_touches_a_finished_s3_output(tiny_models, aws_env):
    uri = f"s3://{aws_env.bucket}/faults-{uuid.uuid4().hex[:8]}/samples"
    first = run_cli(_s3_args(tiny_models, uri))
    assert first.returncode == 0, first.stderr
    key = uri[len(f"s3://{aws_env.bucket}/"):] + "/manifest.json"
    before = aws_env.client().head_object(Bucket=aws_env.bucket, Key=key)
    # Any upload or delete in the rerun kills it: a finished output must not be written at all.
    rerun = kill_at_call(_s3_args(tiny_models, uri), "lightreasoner.storage:upload_dir", mode="before")
    assert not rerun.killed and rerun.returncode == 0, rerun.stderr
    after = aws_env.client().head_object(Bucket=aws_env.bucket, Key=key)
    assert after["ETag"] == before["ETag"] and after["LastModified"] == before["LastModified"]


@pytest.mark.slow
def test_4_s3_sampling_resumes_after_a_kill_in_compute_and_in_upload(tiny_models, aws_env, tmp_path):
    uri = f"s3://{aws_env.bucket}/faults-{uuid.uuid4().hex[:8]}/samples"
    env = {"LIGHTREASONER_CACHE": str(tmp_path / "cache")}
    # 6 problems in batches of 2: killed before the second batch is generated.
    first = kill_at_call(_s3_args(tiny_models, uri), "lightreasoner.sampling:generate_greedy", nth=2, env=env)
    assert first.killed
    # The rerun generates only the 2 batches left (a third generation would kill it) ...
    second = kill_at_call(_s3_args(tiny_models, uri), "lightreasoner.sampling:generate_greedy", nth=3, env=env)
    assert not second.killed and second.returncode == 0, second.stderr
    keys = aws_env.keys(uri[len(f"s3://{aws_env.bucket}/"):] + "/")
    assert any(k.endswith("/manifest.json") for k in keys) and not any("/shards/" in k for k in keys)
    # ... and a kill in the middle of the upload is resumed without --overwrite.
    uri2 = uri + "-2"
    killed = kill_at_call(_s3_args(tiny_models, uri2), "lightreasoner.storage:upload_file", nth=2, env=env)
    assert killed.killed
    done = run_cli(_s3_args(tiny_models, uri2), env=env)
    assert done.returncode == 0, done.stderr
    s3 = aws_env.client()
    body = {u: s3.get_object(Bucket=aws_env.bucket, Key=u[len(f"s3://{aws_env.bucket}/"):] + "/samples.parquet")
            ["Body"].read() for u in (uri, uri2)}
    assert body[uri] == body[uri2]


@pytest.mark.slow
def test_5_unusable_s3_output_fails_before_compute(tiny_models, cli_samples, aws_env):
    for command in (["train", "--samples", cli_samples], ["evaluate", "--limit", "2"]):
        args = [command[0], *common(tiny_models, "training.max_steps=1"), *command[1:],
                "--output", "s3://no-such-bucket-lightreasoner/out"]
        target = "lightreasoner.training:fit_lora" if command[0] == "train" else "lightreasoner.evaluation:predict"
        outcome = kill_at_call(args, target, mode="before")  # reaching the compute would kill it
        assert not outcome.killed and outcome.returncode == 2
        assert "bucket does not exist" in one_line_error(outcome)


# --- (e) two runs into one output --------------------------------------------------------------------


@pytest.mark.slow
def test_concurrent_second_run_is_refused_cleanly(tiny_models, tmp_path, capsys):
    out = tmp_path / "samples"
    args = _s3_args(tiny_models, str(out))
    state = {}

    def second_run() -> None:
        state["rc"] = main(args)
        state["err"] = capsys.readouterr().err

    # the first run is frozen while the second runs, so it cannot finish (and release its lock) meanwhile
    first = kill_when(args, file_appears(out, "shards/state.json"), meanwhile=second_run)
    assert state["rc"] == 2 and "another lightreasoner process is writing this output" in \
        one_line_error(state["err"])
    assert first.killed
    assert run_cli(args).returncode == 0 and (out / "manifest.json").is_file()


@pytest.mark.slow
def test_4_s3_training_resumes_from_its_checkpoint(tiny_models, cli_samples, full_training, aws_env, tmp_path,
                                                   monkeypatch):
    uri = f"s3://{aws_env.bucket}/faults-{uuid.uuid4().hex[:8]}/train"
    monkeypatch.setenv("LIGHTREASONER_CACHE", str(tmp_path / "cache"))
    args = ["train", *common(tiny_models, *TRAIN), "--samples", cli_samples, "--output", uri, "--resume"]
    work = storage.work_dir(uri)
    killed = kill_when(args, file_appears(work, "checkpoints/checkpoint-4/lightreasoner-counters.json"))
    assert killed.killed
    done = run_cli(args)
    assert done.returncode == 0, done.stderr
    manifest = json.loads(aws_env.client().get_object(
        Bucket=aws_env.bucket, Key=uri[len(f"s3://{aws_env.bucket}/"):] + "/manifest.json")["Body"].read())
    assert manifest["resumed_from"] == "checkpoint-4" and manifest["steps"] == 6
    assert not work.exists()
    # a rerun without --resume into the finished prefix is refused and changes nothing
    again = run_cli(args[:-1])
    assert again.returncode == 2 and uri in one_line_error(again)


# --- (f) `lightreasoner run` resumes --------------------------------------------------------------------


def _run_args(tiny_models, work, uri, name):
    return ["run", "--workdir", work, *common(
        tiny_models, "tracking.enabled=true", f"tracking.tracking_uri={uri}", f"tracking.experiment=faults-{name}",
        f"registry.model_name={name}", "training.max_steps=2", "training.samples_per_step=4",
        "training.holdout_fraction=0", "evaluation.data.limit=2", "evaluation.max_new_tokens=8",
        "evaluation.bootstrap_samples=100")]


def _parents(client, name):
    exp = client.get_experiment_by_name(f"faults-{name}").experiment_id
    return {r.info.run_id: r for r in client.search_runs([exp], "tags.`lightreasoner.kind` = 'pipeline'")}


@pytest.mark.slow
def test_8_run_killed_after_sampling_resumes_without_sampling_again(tiny_models, mlflow_server, aws_env, tmp_path):
    from mlflow.tracking import MlflowClient

    name = f"lr-{uuid.uuid4().hex[:8]}"
    work = tmp_path / "work"
    args = _run_args(tiny_models, work, mlflow_server.uri, name)
    killed = kill_when(args, file_appears(work, "runs/*/samples/manifest.json"))
    assert killed.killed, killed.stderr
    client = MlflowClient(mlflow_server.uri)
    (first,) = _parents(client, name).values()
    assert first.info.status == "RUNNING"
    (folder,) = (work / "runs").iterdir()
    manifest = folder / "samples" / "manifest.json"
    stamp = manifest.stat().st_mtime_ns
    # The rerun continues that folder: sampling again (its scorer) would kill it.
    rerun = kill_at_call(args, "lightreasoner.sampling:score_chunked", mode="before")
    assert not rerun.killed and rerun.returncode == 0, rerun.stderr
    assert "resuming the unfinished run" in rerun.stderr
    assert list((work / "runs").iterdir()) == [folder] and manifest.stat().st_mtime_ns == stamp
    parents = _parents(client, name)
    assert len(parents) == 2
    assert parents[first.info.run_id].info.status == "FAILED"
    assert parents[first.info.run_id].data.tags["lightreasoner.error"].startswith("interrupted")
    (second,) = [r for r in parents.values() if r.info.run_id != first.info.run_id]
    assert second.info.status == "FINISHED"
    assert json.loads((folder / "run.json").read_text())["status"] == "finished"
    # a run after a finished one is a new run (new folder), not a resumption
    exp = first.info.experiment_id
    assert not client.search_runs([exp], "attributes.status = 'RUNNING'")


@pytest.mark.slow
def test_8_run_whose_tracking_server_dies_is_resumed_and_its_run_failed(tiny_models, mlflow_server, aws_env,
                                                                        tmp_path):
    import glob

    from mlflow.tracking import MlflowClient

    name = f"lr-{uuid.uuid4().hex[:8]}"
    work = tmp_path / "work"
    args = _run_args(tiny_models, work, mlflow_server.uri, name)
    with paused(mlflow_server.proc) as pause:
        def stop_server_after_sampling() -> bool:
            if not pause.stopped and glob.glob(str(work / "runs" / "*" / "samples" / "manifest.json")):
                pause.stop()
            return False

        failed = kill_when(args, stop_server_after_sampling, timeout=240,
                           env={"MLFLOW_HTTP_REQUEST_TIMEOUT": "2", "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0"})
    assert pause.stopped is False and failed.returncode == 2
    assert mlflow_server.uri.split("//")[1] in one_line_error(failed)
    client = MlflowClient(mlflow_server.uri)
    (first,) = _parents(client, name).values()
    assert first.info.status == "RUNNING"  # the server was gone when the run failed
    (folder,) = (work / "runs").iterdir()
    stamp = (folder / "samples" / "manifest.json").stat().st_mtime_ns
    rerun = kill_at_call(args, "lightreasoner.sampling:score_chunked", mode="before")
    assert not rerun.killed and rerun.returncode == 0, rerun.stderr
    assert (folder / "samples" / "manifest.json").stat().st_mtime_ns == stamp
    statuses = {r.info.run_id: r.info.status for r in _parents(client, name).values()}
    assert statuses.pop(first.info.run_id) == "FAILED" and list(statuses.values()) == ["FINISHED"]


# --- (g) s3:// work in progress resumes on another machine ----------------------------------------------


@pytest.mark.slow
def test_4_s3_sampling_resumes_on_another_machine(tiny_models, aws_env, tmp_path):
    prefix = f"faults-{uuid.uuid4().hex[:8]}"
    uri = f"s3://{aws_env.bucket}/{prefix}/samples"
    env = {"LIGHTREASONER_CACHE": str(tmp_path / "cache")}
    # 6 problems in batches of 2: killed before the third batch is generated (two batches are done)
    first = kill_at_call(_s3_args(tiny_models, uri), "lightreasoner.sampling:generate_greedy", nth=3, env=env)
    assert first.killed
    keys = aws_env.keys(f"{prefix}/samples/_work/")
    assert sorted(k.rsplit("/", 1)[1] for k in keys if "batch-" in k) == ["batch-00000.parquet",
                                                                          "batch-00001.parquet"]
    # another machine: no local work folder (another cache); it generates only the batch left
    other = {"LIGHTREASONER_CACHE": str(tmp_path / "other-cache")}
    second = kill_at_call(_s3_args(tiny_models, uri), "lightreasoner.sampling:generate_greedy", nth=2, env=other)
    assert not second.killed and second.returncode == 0, second.stderr
    assert not aws_env.keys(f"{prefix}/samples/_work/")  # removed once the output is complete
    # byte-identical to an uninterrupted run
    whole = f"s3://{aws_env.bucket}/{prefix}/whole"
    assert run_cli(_s3_args(tiny_models, whole), env=env).returncode == 0
    s3 = aws_env.client()
    body = {u: s3.get_object(Bucket=aws_env.bucket, Key=f"{prefix}/{u}/samples.parquet")["Body"].read()
            for u in ("samples", "whole")}
    assert body["samples"] == body["whole"]


@pytest.mark.slow
def test_4_s3_training_resumes_on_another_machine(tiny_models, cli_samples, full_training, aws_env, tmp_path):
    prefix = f"faults-{uuid.uuid4().hex[:8]}"
    uri = f"s3://{aws_env.bucket}/{prefix}/train"
    args = ["train", *common(tiny_models, *TRAIN), "--samples", cli_samples, "--output", uri, "--resume"]
    # killed as the third checkpoint (step 6) is saved: checkpoint-4 is complete and uploaded
    killed = kill_at_call(args, "transformers.trainer_callback:TrainerState.save_to_json", nth=3,
                          env={"LIGHTREASONER_CACHE": str(tmp_path / "cache")})
    assert killed.killed, killed.stderr
    work = sorted(k.split("/_work/")[1] for k in aws_env.keys(f"{prefix}/train/_work/"))
    assert "checkpoints/checkpoint-4/lightreasoner-counters.json" in work
    assert not any(k.startswith("checkpoints/checkpoint-2/") for k in work)  # rotated away there too
    done = run_cli(args, env={"LIGHTREASONER_CACHE": str(tmp_path / "other-cache")})
    assert done.returncode == 0, done.stderr
    manifest = json.loads(aws_env.client().get_object(Bucket=aws_env.bucket,
                                                      Key=f"{prefix}/train/manifest.json")["Body"].read())
    full = json.loads((full_training / "manifest.json").read_text())
    assert manifest["resumed_from"] == "checkpoint-4" and manifest["tuned_tokens"] == full["tuned_tokens"]
    assert not aws_env.keys(f"{prefix}/train/_work/")
    local = tmp_path / "downloaded"
    storage.download_dir(uri, local)
    assert same_adapter(local, full_training)


# --- (h) item 10: read-only output folder, disk full ---------------------------------------------------


@contextmanager
def read_only(folder: Path):
    """``folder`` cannot be written to: mode 0o555, or for root (who ignores permissions) the immutable
    attribute (``chattr +i``; skipped where the file system or the container does not allow it)."""
    folder.mkdir()
    if os.geteuid() != 0:
        folder.chmod(0o555)
        try:
            yield
        finally:
            folder.chmod(0o755)
        return
    if subprocess.run(["chattr", "+i", str(folder)], capture_output=True).returncode != 0:
        pytest.skip("running as root and chattr +i is not available: no read-only folder to test with")
    try:
        yield
    finally:
        subprocess.run(["chattr", "-i", str(folder)], check=True)


@pytest.mark.slow
def test_10_read_only_output_folder_is_one_line_and_blocks_nothing(tiny_models, cli_samples, tmp_path, capsys):
    parent = tmp_path / "read-only"
    with read_only(parent):
        for command in (["sample"], ["train", "--samples", str(cli_samples)], ["prepare-data"]):
            out = parent / command[0]
            assert main([command[0], *common(tiny_models, "training.max_steps=1"), *command[1:],
                         "--output", str(out)]) == 2
            line = one_line_error(capsys.readouterr().err)
            assert str(out) in line and ("Permission denied" in line or "Operation not permitted" in line), line
            assert not out.exists()
    assert main(["sample", *common(tiny_models), "--output", str(parent / "sample")]) == 0
    assert (parent / "sample" / "samples.parquet").read_bytes() == (cli_samples / "samples.parquet").read_bytes()


@pytest.mark.slow
def test_10_disk_full_is_one_line_and_the_rerun_resumes(tiny_models, cli_samples, full_training, tmp_path):
    # a file may not grow past 1 KiB: the first batch file of sampling cannot be written (EFBIG)
    out = tmp_path / "samples"
    full = run_cli(["sample", *common(tiny_models), "--output", out], max_file_bytes=1024)
    line = one_line_error(full)
    assert full.returncode == 2 and str(out) in line and "File too large" in line, line
    assert not list(out.rglob("*.tmp"))
    done = run_cli(["sample", *common(tiny_models), "--output", out])
    assert done.returncode == 0, done.stderr
    assert (out / "samples.parquet").read_bytes() == (cli_samples / "samples.parquet").read_bytes()
    # training: the first checkpoint cannot be saved; --resume then trains to the same adapter
    train = tmp_path / "train"
    args = ["train", *common(tiny_models, *TRAIN), "--samples", cli_samples, "--output", train]
    full = run_cli(args, max_file_bytes=1024)
    line = one_line_error(full)
    assert full.returncode == 2 and "File too large" in line, line
    done = run_cli([*args, "--resume"])
    assert done.returncode == 0, done.stderr
    assert same_adapter(train, full_training)


@pytest.mark.slow
def test_8_run_killed_inside_register_completes_the_same_version(tiny_models, mlflow_server, aws_env, tmp_path):
    from mlflow.tracking import MlflowClient

    name = f"lr-{uuid.uuid4().hex[:8]}"
    work = tmp_path / "work"
    args = _run_args(tiny_models, work, mlflow_server.uri, name)
    killed = kill_at_call(args, "mlflow.tracking.client:MlflowClient.create_model_version", mode="after")
    assert killed.killed, killed.stderr
    client = MlflowClient(mlflow_server.uri)
    assert len(versions(client, name)) == 1
    done = kill_at_call(args, "lightreasoner.sampling:score_chunked", mode="before")
    assert not done.killed and done.returncode == 0, done.stderr
    (version,) = versions(client, name)  # the resumed run completed the version, made no second one
    assert dict(client.get_registered_model(name).aliases) == {"challenger": version.version}
    assert sorted(r.info.status for r in _parents(client, name).values()) == ["FAILED", "FINISHED"]


# --- (i) one writer per s3:// output across machines -----------------------------------------------------


@pytest.mark.slow
def test_s3_output_lock_holds_across_machines(tiny_models, aws_env, tmp_path, monkeypatch):
    prefix = f"faults-{uuid.uuid4().hex[:8]}"
    uri = f"s3://{aws_env.bucket}/{prefix}/samples"
    machines = {}
    for name in ("a", "b"):  # another cache and another temp folder (the per-machine lock): another machine
        (tmp_path / name / "tmp").mkdir(parents=True)
        machines[name] = {"LIGHTREASONER_CACHE": str(tmp_path / name / "cache"), "TMPDIR": str(tmp_path / name / "tmp")}
    monkeypatch.setenv("LIGHTREASONER_CACHE", machines["a"]["LIGHTREASONER_CACHE"])
    work_a = storage.work_dir(uri)
    args = ["sample", *common(tiny_models, "data.limit=40"), "--output", uri]  # 20 batches: long enough
    state = {}

    refuse_at_once = {"LIGHTREASONER_S3_LOCK_WAIT_SECONDS": "0"}  # (a frozen holder sends no heartbeat)

    def second_machine() -> None:
        state["second"] = run_cli(args, env={**machines["b"], **refuse_at_once})

    # machine a is frozen while b tries, so it cannot finish and release the lock in the meantime
    first = kill_when(args, file_appears(work_a, "shards/batch-*.parquet"), meanwhile=second_machine,
                      env=machines["a"])
    assert first.killed
    line = one_line_error(state["second"])
    assert state["second"].returncode == 2 and "another lightreasoner process is writing this output (host" in line
    # A lock of a live process on another host is honoured until it is stale ...
    s3 = aws_env.client()
    lock = {"host": "node-elsewhere", "pid": 1, "token": "x"}
    s3.put_object(Bucket=aws_env.bucket, Key=f"{prefix}/samples/_work.lock", Body=json.dumps(lock).encode())
    refused = run_cli(args, env={**machines["b"], **refuse_at_once})
    assert refused.returncode == 2 and "host node-elsewhere" in one_line_error(refused)
    # ... then taken over once stale (a stale threshold of 0: stale now, whatever the runner's speed):
    # machine b resumes the batches machine a uploaded, and releases the lock
    stale_now = {"LIGHTREASONER_S3_LOCK_STALE_SECONDS": "0", "LIGHTREASONER_S3_LOCK_HEARTBEAT_SECONDS": "30"}
    done = run_cli(args, env={**machines["b"], **stale_now})
    assert done.returncode == 0, done.stderr
    keys = aws_env.keys(f"{prefix}/samples/")
    assert f"{prefix}/samples/manifest.json" in keys and not any("_work" in k for k in keys)


# --- (j) issue 24: non-finite settings and training, disk full in a checkpoint, inputs need manifests ----


DIVERGE = "training.learning_rate=1e38"  # finite (the config accepts it), but the weights overflow at once


@pytest.mark.slow
def test_24_non_finite_loss_stops_training_in_one_line(tiny_models, cli_samples, full_training, tmp_path,
                                                       capsys):
    out = tmp_path / "train"
    args = ["train", *common(tiny_models, *TRAIN), "--samples", str(cli_samples), "--output", str(out)]
    assert main([*args, "--set", DIVERGE]) == 2
    line = one_line_error(capsys.readouterr().err)
    assert "training diverged at update 2: the loss is nan" in line and "learning_rate (now 1e+38)" in line, line
    assert not out.exists()  # no checkpoint, no adapter, no state: nothing to register, nothing in the way
    assert main([*args, "--set", DIVERGE, "--set", "training.max_grad_norm=0", "--resume"]) == 2
    assert "or clip gradients with training.max_grad_norm (now 0: off)" in one_line_error(capsys.readouterr().err)
    assert not out.exists()
    assert main(args) == 0  # the corrected rerun: no --overwrite, nothing refused
    assert same_adapter(out, full_training)


def test_24_non_finite_gradient_norm_stops_before_the_update(tmp_path):
    import torch
    from transformers import TrainerControl, TrainerState, TrainingArguments

    from lightreasoner.trainer import TrainingDiverged, trainer_classes

    trainer_cls, _, _ = trainer_classes()
    model = torch.nn.Linear(2, 2)
    model.weight.grad = torch.tensor([[1.0, float("inf")], [0.0, 0.0]])
    state = TrainerState()
    state.global_step = 4
    args = TrainingArguments(output_dir=str(tmp_path), learning_rate=0.5, max_grad_norm=1.0, report_to="none")
    with pytest.raises(TrainingDiverged, match=r"at update 5: the gradient norm is (inf|nan) .*learning_rate "
                                                r"\(now 0\.5\); nothing was kept$"):
        trainer_cls.FiniteGradientsCallback().on_pre_optimizer_step(args, state, TrainerControl(), model=model)
    model.weight.grad = torch.ones(2, 2)
    trainer_cls.FiniteGradientsCallback().on_pre_optimizer_step(args, state, TrainerControl(), model=model)


def test_24_epochs_inf_is_refused_before_anything_is_written(tmp_path, capsys):
    out = tmp_path / "train"
    for setting in ("training.epochs=inf", "training.learning_rate=inf", "registry.min_delta=nan"):
        assert main(["train", "--set", setting, "--samples", str(tmp_path / "no-samples"), "--output", str(out)]) == 2
        line = one_line_error(capsys.readouterr().err)
        assert f"{setting.split('=')[0]}: " in line and "must be a finite number" in line, line
        assert not out.exists()


def test_24_a_crash_before_the_first_checkpoint_never_blocks_the_corrected_rerun(tmp_path):
    """A run of another config that died before its first complete checkpoint (its state file and a torn
    checkpoint): the corrected rerun replaces it, no --overwrite (train has none) and no --resume needed."""
    from lightreasoner.training import CHECKPOINTS, STATE, _prepare_output

    out = tmp_path / "train"
    (out / CHECKPOINTS / "checkpoint-2").mkdir(parents=True)
    (out / CHECKPOINTS / "checkpoint-2" / "adapter_model.safetensors").write_bytes(b"torn")
    (out / STATE).write_text(json.dumps({"fingerprint": "0" * 64}))
    for resume in (False, True):
        claim = _prepare_output(out, "1" * 64, resume)
        assert claim.clear and not claim.resume and claim.finished is None
    # a complete checkpoint is work worth keeping: another config is still refused (choose another folder)
    (out / CHECKPOINTS / "checkpoint-2" / "lightreasoner-counters.json").write_text("{}")
    (out / CHECKPOINTS / "checkpoint-2" / "trainer_state.json").write_text("{}")
    with pytest.raises(LightReasonerError, match="holds training work of a different config"):
        _prepare_output(out, "1" * 64, True)
    assert _prepare_output(out, "0" * 64, True).resume
    # anything else in the folder is not ours to delete
    (out / CHECKPOINTS / "checkpoint-2" / "trainer_state.json").unlink()
    (out / "notes.txt").write_text("mine")
    with pytest.raises(LightReasonerError, match="not empty and holds no training output"):
        _prepare_output(out, "1" * 64, False)


@pytest.mark.slow
@pytest.mark.parametrize("limit", [6000, 20000], ids=["safetensors", "torch.save"])
def test_24_disk_full_inside_a_checkpoint_is_one_line_and_resume_completes(tiny_models, cli_samples, full_training,
                                                                           tmp_path, limit):
    """A file may not grow past ``limit`` bytes (RLIMIT_FSIZE: EFBIG like a full disk): the first checkpoint's
    adapter_model.safetensors (6000) or optimizer.pt (20000) cannot be written. One line, no traceback, the
    torn checkpoint removed; ``--resume`` then trains to the same adapter."""
    out = tmp_path / "train"
    args = ["train", *common(tiny_models, *TRAIN), "--samples", cli_samples, "--output", out]
    full = run_cli(args, max_file_bytes=limit)
    line = one_line_error(full)
    assert full.returncode == 2 and f"{out}/checkpoints/checkpoint-2" in line and "File too large" in line, line
    assert "free some space and rerun" in line and not (out / "checkpoints" / "checkpoint-2").exists()
    assert not (out / "manifest.json").exists() and not (out / "adapter").exists()
    done = run_cli([*args, "--resume"])
    assert done.returncode == 0, done.stderr
    assert same_adapter(out, full_training)


@contextmanager
def small_tmpfs(folder: Path, size: str):
    """A tmpfs of ``size`` mounted at ``folder`` (root only; skipped where mounting is not allowed)."""
    folder.mkdir()
    if os.geteuid() != 0 or subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(folder)],
                                           capture_output=True).returncode != 0:
        pytest.skip("cannot mount a tmpfs here")
    try:
        yield lambda bigger: subprocess.run(["mount", "-o", f"remount,size={bigger}", str(folder)], check=True)
    finally:
        subprocess.run(["umount", "-l", str(folder)], capture_output=True)


@pytest.mark.slow
def test_24_disk_full_on_a_120k_tmpfs_then_resume_after_freeing_space(tiny_models, cli_samples, full_training,
                                                                      tmp_path):
    with small_tmpfs(tmp_path / "disk", "120k") as grow:
        out = tmp_path / "disk" / "train"
        args = ["train", *common(tiny_models, *TRAIN), "--samples", cli_samples, "--output", out]
        full = run_cli(args)
        line = one_line_error(full)
        assert full.returncode == 2 and "No space left on device" in line and str(out) in line, line
        assert not (out / "manifest.json").exists() and not (out / "adapter").exists()
        grow("4m")  # space freed
        done = run_cli([*args, "--resume"])
        assert done.returncode == 0, done.stderr
        assert same_adapter(out, full_training)


def _reader_cases(tmp_path):
    """(kind, a finished output folder of that kind, a function that reads it as a stage input)."""
    from lightreasoner.adapters import resolve_adapter
    from lightreasoner.training import load_samples

    cfg = make_config(f"sqlite:///{tmp_path / 'mlflow.db'}")
    samples, training, evaluation = fabricate(tmp_path, cfg, "in")
    return [
        ("samples", samples, lambda folder: load_samples(folder)),
        ("samples", samples, lambda folder: registry.register(cfg, training, evaluation, folder)),
        ("training", training, lambda folder: registry.register(cfg, folder, evaluation, samples)),
        ("training", training, lambda folder: resolve_adapter(folder)),
        ("evaluation", evaluation, lambda folder: registry.register(cfg, training, folder, samples)),
    ]


@pytest.mark.parametrize("case", range(5), ids=["sample>train", "sample>register", "train>register",
                                                "train>evaluate", "evaluate>register"])
@pytest.mark.parametrize("damage, message", [
    ("absent", "missing manifest.json (not a finished {kind} folder"),
    ("torn", "manifest.json: not valid JSON"),
    ("other-stage", "holds the output of stage 'prepare', not"),
])
def test_24_every_stage_input_needs_its_manifest(tmp_path, case, damage, message):
    """One check (outputs.read_input) for every input a stage reads: an output whose manifest was never
    written (the stage was killed before its last write), is torn, or belongs to another stage is refused in
    one line, before anything is created (no MLflow experiment)."""
    kind, folder, read = _reader_cases(tmp_path)[case]
    manifest = folder / "manifest.json"
    if damage == "absent":
        manifest.unlink()
    elif damage == "torn":
        manifest.write_text('{"stage": ')
    else:
        manifest.write_text(json.dumps({**json.loads(manifest.read_text()), "stage": "prepare"}))
    with pytest.raises(LightReasonerError) as err:
        read(folder)
    line = str(err.value)
    assert message.format(kind=kind) in line and str(folder) in line and "\n" not in line, line
    assert not (tmp_path / "mlflow.db").exists()


@pytest.mark.slow
def test_24_register_refuses_an_evaluation_killed_inside_its_manifest_write(tiny_models, tmp_path, capsys):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    adapter = tmp_path / "adapter"
    base = AutoModelForCausalLM.from_pretrained(tiny_models["llama"])
    get_peft_model(base, LoraConfig(r=2, lora_alpha=4, target_modules=["q_proj", "v_proj"])).save_pretrained(adapter)
    out = tmp_path / "eval"
    args = ["evaluate", *common(tiny_models, "evaluation.max_new_tokens=4", "evaluation.data.limit=2",
                                "evaluation.bootstrap_samples=100"), "--adapter", adapter, "--output", out]
    # evaluate writes metrics.json, then manifest.json last (atomically): killed at that last write
    killed = kill_at_call(args, "lightreasoner.outputs:StageOutput.finish")
    assert killed.killed, killed.stderr
    assert (out / "metrics.json").is_file() and not (out / "manifest.json").exists()
    cfg = make_config(f"sqlite:///{tmp_path / 'mlflow.db'}")
    samples = make_samples(tmp_path / "samples", cfg)
    training = make_training(tmp_path / "train", cfg, samples)
    assert main(["register", "--set", f"tracking.tracking_uri=sqlite:///{tmp_path / 'mlflow.db'}", "--training",
                 str(training), "--evaluation", str(out), "--samples", str(samples)]) == 2
    line = one_line_error(capsys.readouterr().err)
    assert str(out) in line and "missing manifest.json (not a finished evaluation folder" in line, line
    assert not (tmp_path / "mlflow.db").exists()
    # the rerun of evaluate (always redone in place) completes it
    assert run_cli(args).returncode == 0 and json.loads((out / "manifest.json").read_text())["stage"] == "evaluate"


def test_24_sft_stops_on_a_non_finite_loss_and_leaves_its_folder_empty(tiny_models, tmp_path, monkeypatch):
    from test_sft import fake_sampler, sft_config

    from lightreasoner import sft as sft_module
    from lightreasoner.data import load_problems
    from lightreasoner.models import load_tokenizer
    from lightreasoner.trainer import TrainingDiverged

    cfg = sft_config(tiny_models, **{"training.learning_rate": 1e38, "training.max_steps": 3})
    problems = load_problems(cfg.data)
    right = {(i, k) for i in range(4) for k in range(3)}
    monkeypatch.setattr(sft_module, "sample_completions", fake_sampler(problems, load_tokenizer(cfg.expert), right))
    out = tmp_path / "sft"
    with pytest.raises(TrainingDiverged, match="training diverged at update 2: the loss is nan") as err:
        sft_module.sft(cfg, out, problems=problems, progress=False)
    assert "\n" not in str(err.value) and not any(out.iterdir())  # solutions, checkpoints: all gone
    cfg.training.learning_rate = 5e-5  # the corrected rerun into the same folder
    assert sft_module.sft(cfg, out, problems=problems, progress=False).manifest["steps"] == 3


def test_24_one_error_path_for_every_failed_write(tmp_path, monkeypatch):
    """outputs.writing: whatever library failed to write (OSError, safetensors, torch.save's zip writer),
    one line naming the file and the cause; anything else passes unchanged."""
    import errno

    class SafetensorError(Exception):  # safetensors' own error type (its Rust I/O error inside the text)
        pass

    where = tmp_path / "checkpoint-2"
    cases = [
        (OSError(errno.ENOSPC, "No space left on device"), "No space left on device (free some space and rerun"),
        (OSError(errno.EDQUOT, "Disk quota exceeded", str(where / "optimizer.pt")), "optimizer.pt: Disk quota"),
        (PermissionError(errno.EACCES, "Permission denied"), "checkpoint-2: Permission denied"),
        (SafetensorError("Error while serializing: I/O error: File too large (os error 27)"), "File too large (free"),
        (RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 18432 vs 18324"),
         "No space left on device (free"),  # no errno: the probe write finds it
    ]
    monkeypatch.setattr(outputs, "_probe_errno", lambda path: errno.ENOSPC)
    for exc, message in cases:
        with pytest.raises(LightReasonerError) as err, outputs.writing(where):
            raise exc
        assert message in str(err.value) and "\n" not in str(err.value) and err.value.__cause__ is exc
    for exc in (ValueError("not a write"), MemoryError(), LightReasonerError("already one line")):
        with pytest.raises(type(exc)) as err, outputs.writing(where):
            raise exc
        assert err.value is exc
