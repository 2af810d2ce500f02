"""The Kubeflow pipeline: compiled spec, committed YAML up to date, submission and schedules."""

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from lightreasoner.pipelines import client
from lightreasoner.pipelines.lightreasoner_pipeline import COMPILED, NO_TELEMETRY, compile_pipeline

from lightreasoner import parameters, stages
from lightreasoner.cli import main
from lightreasoner.config import load_config
from lightreasoner.errors import LightReasonerError


@pytest.fixture(scope="module")
def spec(tmp_path_factory):
    from lightreasoner.images import DEFAULT_IMAGE

    path = compile_pipeline(tmp_path_factory.mktemp("c") / "p.yaml", image=DEFAULT_IMAGE)
    docs = list(yaml.safe_load_all(path.read_text()))
    return path, docs[0], docs[1] if len(docs) > 1 else {}


def test_committed_yaml_is_current(spec):
    # Byte for byte: the compile is stable, and the package's version name is its digest.
    path, _, _ = spec
    assert path.read_bytes() == COMPILED.read_bytes(), \
        "the committed pipeline is out of date: run `python scripts/compile-pipeline.py`"


def branch_tasks(ir):
    """Every task of the DAG: the root's, those inside the exit handler, its ``dsl.If`` branches and loops."""
    tasks, todo = {}, [ir["root"]["dag"]["tasks"]]
    while todo:
        for name, task in todo.pop().items():
            tasks[name] = task
            dag = ir["components"].get(task["componentRef"]["name"], {}).get("dag")
            if dag:
                todo.append(dag["tasks"])
    return tasks


PURE = {"prepare", "sample", "merge-sample", "train", "evaluation-shards", "evaluate-base", "evaluate-tuned",
        "merge-evaluate", "sft", "sft-both", "evaluate-sft-base", "evaluate-sft-tuned", "evaluate-sft-base-both",
        "evaluate-sft-tuned-both", "merge-evaluate-sft", "merge-evaluate-sft-both"}


def test_stages_parameters_and_defaults(spec):
    _, ir, _ = spec
    tasks = branch_tasks(ir)
    assert {"configure-run", "prepare", "merge-sample", "train", "evaluate-base", "evaluate-tuned", "merge-evaluate",
            "register", "finish-run", "sample", "report", "log-prepare", "sft", "sft-both"} <= set(tasks)
    loops = {t["taskInfo"]["name"]: t for name, t in tasks.items() if name.startswith("for-loop")}
    assert loops["sampling-shards"]["parameterIterator"]["items"]["inputParameter"] == "pipelinechannel--sampling_shards"
    # Evaluation: base and tuned pods per shard of evaluation.shards; the base pods do not wait for training.
    for name in ("evaluate-base-shards", "evaluate-tuned-shards", "evaluate-sft-base-shards"):
        items = loops[name]["parameterIterator"]["items"]["inputParameter"]
        assert items == "pipelinechannel--evaluation-shards-Output", name
    assert "dependentTasks" not in loops["evaluate-base-shards"]
    assert loops["evaluate-tuned-shards"]["dependentTasks"] == ["train"]
    params = ir["root"]["inputDefinitions"]["parameters"]
    assert set(params) == {p.name for p in parameters.table()}
    defaults = {k: v.get("defaultValue") for k, v in params.items()}
    assert defaults["expert"] == "Qwen/Qwen2.5-Math-1.5B" and defaults["amateur"] == "Qwen/Qwen2.5-0.5B"
    assert defaults["dataset"] == "openai/gsm8k" and defaults["num_problems"] == 1000.0
    assert defaults["alpha"] == 0.2 and defaults["beta"] == "0.4" and defaults["max_new_tokens"] == 128.0
    assert defaults["lora_r"] == 8.0 and defaults["lora_alpha"] == 16.0 and defaults["learning_rate"] == 5e-5


def test_only_pure_steps_are_cached_and_the_run_id_never_enters_a_cache_key(spec):
    _, ir, _ = spec
    tasks = branch_tasks(ir)
    for name, task in tasks.items():
        if task["componentRef"]["name"].startswith(("comp-condition", "comp-for-loop", "comp-exit-handler")):
            continue
        cached = task.get("cachingOptions", {}).get("enableCache", False)
        assert cached == (name in PURE), name
        if cached:  # a cached step's inputs: its settings and artifacts, never the KFP run id
            assert "pipeline_job" not in str(task.get("inputs")) and "kfp_run_id" not in str(task.get("inputs"))
            assert "configure-run" in str(task["inputs"]["parameters"]["config"])  # its stage's settings
    # register retries, and is idempotent (tests/test_registry.py); the GPU stages retry and resume.
    assert tasks["register"]["retryPolicy"]["maxRetryCount"] == 2


def test_the_exit_handler_ends_the_mlflow_run_whatever_happened(spec):
    _, ir, _ = spec
    root = ir["root"]["dag"]["tasks"]
    assert root["finish-run"]["triggerPolicy"]["strategy"] == "ALL_UPSTREAM_TASKS_COMPLETED"
    assert root["finish-run"]["dependentTasks"] == ["exit-handler-1"]
    inputs = ir["components"]["comp-finish-run"]["inputDefinitions"]["parameters"]
    assert inputs["status"]["parameterType"] == "TASK_FINAL_STATUS"


def test_components_install_nothing_at_start(spec):
    _, ir, _ = spec
    for name, executor in ir["deploymentSpec"]["executors"].items():
        command = " ".join(executor["container"]["command"])
        assert "pip install" not in command and "pip3 install" not in command, name


@pytest.mark.slow
def test_compiling_in_two_processes_with_other_hash_seeds_gives_the_same_bytes(tmp_path):
    # The compiler's header prints dict defaults (gpu_tolerations) in the hash order of a protobuf map.
    paths = []
    for seed in ("1", "2", "3"):
        paths.append(tmp_path / f"p{seed}.yaml")
        env = {**os.environ, "PYTHONHASHSEED": seed, "OMP_NUM_THREADS": "1"}
        env.pop("LIGHTREASONER_IMAGE", None)
        proc = subprocess.run([sys.executable, "-m", "lightreasoner.pipelines.lightreasoner_pipeline",
                               "-o", str(paths[-1])], env=env, capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, proc.stderr
    assert paths[0].read_bytes() == paths[1].read_bytes() == paths[2].read_bytes()
    assert paths[0].read_bytes() == COMPILED.read_bytes()
    assert len({client.package_version(p) for p in paths}) == 1  # one pipeline version, not three
    assert not list(tmp_path.glob(".*"))  # no temporary file left behind


def kubernetes_executors(platform) -> dict:
    return platform["platforms"]["kubernetes"]["deploymentSpec"]["executors"]


def executor_stages(ir) -> dict[str, str]:
    """Executor -> the stage whose timeout bounds it: a task named after a stage (``train``, ``sft-both``)
    or one of its pods (``evaluate-base``, ``evaluate-sft-tuned-both``) is that stage's; the steps around
    a stage (``log-train``, ``merge-sample``) and the bookkeeping steps are not (they get stages.STEP)."""
    names = {s.name.replace("_", "-"): s.name for s in stages.GRAPH}
    out = {}
    for executor in ir["deploymentSpec"]["executors"]:
        name = executor.removeprefix("exec-").removesuffix("-both")
        name = re.sub(r"-(base|tuned)$", "", name)
        if name in names:
            out[executor] = names[name]
    return out


def stage_of(task: str) -> str | None:
    """The stage a task belongs to, by its name: the stage's own pods (``train``, ``evaluate-base``,
    ``sft-both``) and the merge step that writes its output (``merge-sample``); None for the others."""
    names = {s.name.replace("_", "-"): s.name for s in stages.GRAPH}
    name = re.sub(r"-(base|tuned)$", "", task.removeprefix("merge-").removesuffix("-both"))
    return names.get(name)


def test_every_stage_task_reads_the_outputs_of_the_stages_it_lists(spec):
    """The DAG follows the registry: the tasks of a stage read exactly the outputs of ``Stage.inputs``."""
    _, ir, _ = spec
    outputs = "|".join({s.output for s in stages.GRAPH if s.output} | {"shard"})
    read: dict[str, set[str]] = {}
    for name, task in branch_tasks(ir).items():
        stage = stage_of(name)
        if stage is None:
            continue
        for artifact in task.get("inputs", {}).get("artifacts", {}).values():
            producer = artifact.get("taskOutputArtifact", {}).get("producerTask")
            channel = re.fullmatch(rf"pipelinechannel--(.+)-({outputs})", artifact.get("componentInputArtifact", ""))
            producer = producer or (channel and channel[1])
            if producer and stage_of(producer) not in (None, stage):
                read.setdefault(stage, set()).add(stage_of(producer))
    assert read == {s.name: set(s.inputs) for s in stages.GRAPH if s.inputs}


def upstream(ir) -> dict[str, set[str]]:
    """Task -> every task it waits for: its own ``dependentTasks``, those of the branches and loops around
    it, and theirs in turn (a task inside a ``dsl.If`` starts only when the branch's dependencies are done)."""
    direct, parent = {}, {}
    todo = [(None, ir["root"]["dag"]["tasks"])]
    while todo:
        outer, tasks = todo.pop()
        for name, task in tasks.items():
            direct[name], parent[name] = set(task.get("dependentTasks", [])), outer
            dag = ir["components"].get(task["componentRef"]["name"], {}).get("dag")
            if dag:
                todo.append((name, dag["tasks"]))

    def before(name: str | None) -> set[str]:
        if name is None:
            return set()
        out = set(direct[name]) | before(parent[name])
        for dep in direct[name]:
            out |= before(dep)
        return out
    return {name: before(name) for name in direct}


def test_the_report_waits_for_every_log_step_of_the_stages_it_reads(spec):
    """The report reads its inputs' metrics from the MLflow parent run: every stage it lists must have been
    logged first (a report that ran before ``log-sample`` found no ``sample/seconds``)."""
    _, ir, _ = spec
    before = upstream(ir)["report"]
    for stage in stages.STAGES["report"].inputs:
        logs = {f"log-{stage.replace('_', '-')}{suffix}" for suffix in ("", "-both")}
        assert logs & before, (stage, sorted(before))


def test_every_step_has_a_timeout_from_the_stage_table(spec):
    _, ir, platform = spec
    k8s = kubernetes_executors(platform)
    assert set(k8s) == set(ir["deploymentSpec"]["executors"])  # every executor has platform settings
    limits = stages.timeouts()
    by_stage = executor_stages(ir)
    assert {by_stage[n] for n in by_stage if n.endswith(("-base", "-tuned"))} == {"evaluate", "evaluate_sft"}
    for name, executor in k8s.items():
        seconds = int(executor.get("activeDeadlineSeconds", 0))
        assert seconds == limits[by_stage.get(name, stages.STEP)], name
    # The bookkeeping steps are bounded too, and short.
    assert set(by_stage.values()) == set(stages.STAGES)  # every stage has a task named after it
    for name in ("exec-configure-run", "exec-log-train", "exec-finish-run", "exec-merge-sample"):
        assert int(k8s[name]["activeDeadlineSeconds"]) == stages.STEP_TIMEOUT <= 3600


@pytest.mark.slow
def test_step_timeouts_are_compile_options(tmp_path, capsys):
    path = compile_pipeline(tmp_path / "p.yaml", timeouts={"train": 12 * 3600, "step": 600})
    k8s = kubernetes_executors(list(yaml.safe_load_all(path.read_text()))[1])
    assert k8s["exec-train"]["activeDeadlineSeconds"] == str(12 * 3600)
    assert k8s["exec-configure-run"]["activeDeadlineSeconds"] == "600"
    assert k8s["exec-evaluate-base"]["activeDeadlineSeconds"] == str(stages.STAGES["evaluate"].timeout)
    # The same through the CLI, with durations.
    out = tmp_path / "cli.yaml"
    assert main(["pipeline", "compile", "-o", str(out), "--step-timeout", "train=12h",
                 "--step-timeout", "step=10m"]) == 0
    assert out.read_bytes() == path.read_bytes()


def test_step_timeouts_table():
    table = stages.timeouts()
    assert set(table) == {s.name for s in stages.GRAPH} | {stages.STEP}
    assert all(seconds > 0 for seconds in table.values())
    assert stages.parse_timeout("train=12h") == ("train", 43200)
    assert stages.parse_timeout("step=20m") == ("step", 1200)
    assert stages.parse_timeout("sample=5400") == stages.parse_timeout("sample=5400s") == ("sample", 5400)
    with pytest.raises(LightReasonerError, match="expected NAME=DURATION"):
        stages.parse_timeout("train=0")
    with pytest.raises(LightReasonerError, match="unknown step"):
        stages.timeouts({"nope": 60})
    with pytest.raises(LightReasonerError, match="expected a positive number"):
        stages.timeouts({"train": -1})


def test_s3_keys_are_optional_and_telemetry_is_off_in_every_executor(spec):
    _, ir, platform = spec
    for name, executor in kubernetes_executors(platform).items():
        mounts = executor["secretAsEnv"]
        envs = {e["envVar"] for m in mounts for e in m["keyToEnv"]}
        assert {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "MLFLOW_TRACKING_URI"} <= envs, name
        # IRSA / Workload Identity: no static keys needed; the AWS chain finds the credentials.
        assert all(m.get("optional") is True for m in mounts), name
    for name, executor in ir["deploymentSpec"]["executors"].items():
        env = {e["name"]: e["value"] for e in executor["container"].get("env", [])}
        assert env.items() >= NO_TELEMETRY.items(), name
        assert NO_TELEMETRY == {"MLFLOW_DISABLE_TELEMETRY": "true", "DO_NOT_TRACK": "true"}


@pytest.mark.slow
def test_compile_without_output_writes_the_build_folder_not_the_committed_file(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("LIGHTREASONER_IMAGE", raising=False)
    before = COMPILED.stat().st_mtime_ns
    assert main(["pipeline", "compile"]) == 0
    built = tmp_path / "build" / "lightreasoner_pipeline.yaml"
    assert capsys.readouterr().out.strip() == "build/lightreasoner_pipeline.yaml"
    assert built.read_bytes() == COMPILED.read_bytes() and COMPILED.stat().st_mtime_ns == before


@pytest.mark.slow
def test_model_cache_pvc_is_mounted_on_every_gpu_step(tmp_path):
    path = compile_pipeline(tmp_path / "p.yaml", hf_cache_pvc="hf-models")
    platform = list(yaml.safe_load_all(path.read_text()))[1]["platforms"]["kubernetes"]["deploymentSpec"]
    for stage in ("sample", "train", "evaluate-base", "evaluate-tuned", "sft", "sft-both", "evaluate-sft-base"):
        executor = platform["executors"][f"exec-{stage}"]
        assert executor["pvcMount"][0]["mountPath"] == "/cache/huggingface"
        assert "emptyDirMounts" not in executor
        assert any(e["envVar"] == "HF_TOKEN" for s in executor["secretAsEnv"] for e in s["keyToEnv"])


def test_gpu_stages_request_accelerators_and_secrets_are_env(spec):
    _, ir, platform = spec
    executors = ir["deploymentSpec"]["executors"]
    for stage in ("sample", "train", "evaluate-base", "evaluate-tuned"):
        res = executors[f"exec-{stage}"]["container"]["resources"]
        assert res["accelerator"]["resourceCount"] == "1" and "gpu" in res["accelerator"]["resourceType"]
        assert res["memoryLimit"] and res["cpuLimit"]
    for stage in ("prepare", "evaluation-shards", "merge-evaluate"):
        assert "accelerator" not in executors[f"exec-{stage}"]["container"].get("resources", {}), stage
    k8s = platform["platforms"]["kubernetes"]["deploymentSpec"]["executors"]
    sample = k8s["exec-sample"]
    assert sample["nodeSelector"]["nodeSelectorJson"] and sample["tolerations"]
    envs = {e["envVar"] for s in sample["secretAsEnv"] for e in s["keyToEnv"]}
    assert {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "MLFLOW_TRACKING_URI"} <= envs
    assert "AWS_SECRET_ACCESS_KEY" not in str(ir["root"]["inputDefinitions"])


@pytest.mark.slow
def test_image_is_overridable(tmp_path):
    path = compile_pipeline(tmp_path / "p.yaml", image="registry.example/lr:test")
    assert "registry.example/lr:test" in path.read_text()


def test_arguments_follow_the_config():
    cfg = load_config(Path(__file__).resolve().parents[1] / "configs" / "paper-qwen2.5-math.yaml")
    args = client.arguments_from_config(cfg)
    assert args["expert"] == "Qwen/Qwen2.5-Math-1.5B" and args["num_problems"] == 1000
    assert args["eval_limit"] == 0 and args["beta"] == "0.4" and "expert:" in args["config_yaml"]


def obj(**kw):
    return type("Obj", (), kw)()


class FakeClient:
    """The kfp.Client calls submit/schedule make, with a pipeline store (uploads are recorded)."""

    calls: list = []
    jobs: list = []
    pipelines: dict = {}  # name -> (id, {version name: version id})

    def __init__(self, host, existing_token, namespace):
        self.calls.append(("init", host, existing_token, namespace))

    @classmethod
    def reset(cls):
        cls.calls, cls.jobs, cls.pipelines = [], [], {}

    def get_pipeline_id(self, name):
        return self.pipelines[name][0] if name in self.pipelines else None

    def upload_pipeline(self, pipeline_package_path, pipeline_name, description=None, namespace=None):
        self.calls.append(("upload_pipeline", pipeline_name))
        self.pipelines[pipeline_name] = (f"pipe-{len(self.pipelines) + 1}", {})
        return obj(pipeline_id=self.pipelines[pipeline_name][0])

    def list_pipeline_versions(self, pipeline_id, page_token="", page_size=10):
        versions = next(v for pid, v in self.pipelines.values() if pid == pipeline_id)
        return obj(pipeline_versions=[obj(display_name=k, pipeline_version_id=v) for k, v in versions.items()],
                   next_page_token="")

    def upload_pipeline_version(self, pipeline_package_path, pipeline_version_name, pipeline_id):
        self.calls.append(("upload_version", pipeline_version_name))
        versions = next(v for pid, v in self.pipelines.values() if pid == pipeline_id)
        versions[pipeline_version_name] = f"ver-{len(versions) + 1}"
        return obj(pipeline_version_id=versions[pipeline_version_name])

    def run_pipeline(self, **kw):
        self.calls.append(("run", kw))
        return obj(run_id="run-1")

    def create_experiment(self, name, namespace=None):
        self.calls.append(("create_experiment", name))
        return obj(experiment_id="exp-1")

    def get_experiment(self, experiment_name=None, namespace=None):
        if not any(c == ("create_experiment", experiment_name) for c in self.calls):
            raise ValueError(f"No experiment is found with name {experiment_name}.")
        return obj(experiment_id="exp-1")

    def create_recurring_run(self, **kw):
        self.calls.append(("schedule", kw))
        n = sum(1 for c in self.calls if c[0] == "schedule")
        self.jobs.append(obj(recurring_run_id=f"job-{n}", display_name=kw["job_name"]))
        return self.jobs[-1]

    def list_recurring_runs(self, experiment_id, page_size, page_token=""):
        return obj(recurring_runs=list(self.jobs), next_page_token="")

    def delete_recurring_run(self, recurring_run_id):
        self.jobs[:] = [j for j in self.jobs if j.recurring_run_id != recurring_run_id]


def uploads():
    return [c for c in FakeClient.calls if c[0].startswith("upload")]


def test_submit_runs_a_named_pipeline_version_with_parameters(monkeypatch):
    FakeClient.reset()
    monkeypatch.setenv("KFP_TOKEN", "s3cr3t-token")
    params = client.parse_params(["num_problems=50", "beta=auto:0.2", "expert=Qwen/Qwen2.5-Math-1.5B",
                                  "learning_rate=5e-05", "promote=false"])
    run_id = client.submit("http://kfp.local:8888", params, token=client.read_token(None), factory=FakeClient)
    assert run_id == "run-1"
    assert FakeClient.calls[0][2] == "s3cr3t-token"
    version = client.package_version(COMPILED)
    assert uploads() == [("upload_pipeline", "lightreasoner"), ("upload_version", version)]
    kw = FakeClient.calls[-1][1]
    assert kw["pipeline_id"] == "pipe-1" and kw["version_id"] == "ver-1" and "pipeline_package_path" not in kw
    assert kw["params"] == {"num_problems": 50, "beta": "auto:0.2", "expert": "Qwen/Qwen2.5-Math-1.5B",
                            "learning_rate": 5e-05, "promote": False}
    with pytest.raises(LightReasonerError, match="num_problems='many': expected an integer"):
        client.parse_params(["num_problems=many"])


@pytest.mark.slow
def test_an_unchanged_package_is_not_uploaded_again(tmp_path):
    FakeClient.reset()
    client.submit("http://kfp:8888", {}, factory=FakeClient)
    client.submit("http://kfp:8888", {}, factory=FakeClient)
    client.schedule("http://kfp:8888", "0 3 * * *", {}, factory=FakeClient)
    assert len(uploads()) == 2  # the pipeline and its one version
    # Another image is another package: a new version of the same pipeline.
    client.submit("http://kfp:8888", {}, image="registry.example/lr:2", factory=FakeClient)
    assert [c[0] for c in uploads()] == ["upload_pipeline", "upload_version", "upload_version"]
    assert FakeClient.calls[-1][1]["version_id"] == "ver-2"


def test_schedule_takes_five_field_cron_and_a_pipeline_version(monkeypatch):
    FakeClient.reset()
    job = client.schedule("http://kfp:8888", "0 3 * * *", client.parse_params(["num_shards=2"]), factory=FakeClient)
    assert job == "job-1"
    kw = FakeClient.calls[-1][1]
    assert kw["cron_expression"] == "0 0 3 * * *" and kw["experiment_id"] == "exp-1"
    assert kw["params"] == {"sampling_shards": [0, 1]} and kw["version_id"] == "ver-1"
    client.schedule("http://kfp:8888", "0 4 * * *", {}, factory=FakeClient)  # a second install replaces it
    assert [j.recurring_run_id for j in FakeClient.jobs] == ["job-2"]


@pytest.mark.parametrize(
    "items, message",
    [
        (["nope=1"], "--param 'nope': unknown pipeline parameter"),
        (["num_problems=many"], "--param num_problems='many': expected an integer"),
        (["alpha=2"], "sampling.alpha: Input should be less than or equal to 1"),
        (["method=fast"], "--param method='fast': expected one of lightreasoner, sft, both"),
        (["amateur=", "amateur_keep_layers=0"], "set amateur.model or amateur.keep_layers"),
    ],
)
def test_bad_parameters_are_refused_before_anything_is_uploaded(items, message):
    FakeClient.reset()
    with pytest.raises(LightReasonerError, match=message) as info:
        client.submit("http://kfp:8888", client.parse_params(items), factory=FakeClient)
    assert "\n" not in str(info.value) and FakeClient.calls == []


@pytest.mark.parametrize(
    "argv, message",
    [
        (["pipeline", "schedule", "--host", "http://127.0.0.1:9", "--cron", "0 3 * *"], "--cron '0 3 * *': expected 5 fields"),
        (["pipeline", "submit", "--host", "127.0.0.1:9"], "expected an http(s):// URL"),
        (["pipeline", "submit", "--host", "http://127.0.0.1:9", "--param", "nope=1"], "unknown pipeline parameter"),
        (["pipeline", "submit", "--host", "http://127.0.0.1:9", "--param", "lora_r=two"], "expected an integer"),
        (["pipeline", "submit", "--host", "http://127.0.0.1:9", "--token-file", "/no/such"], "file not found"),
        (["pipeline", "submit", "--host", "http://127.0.0.1:9"], "cannot reach Kubeflow Pipelines"),
        (["pipeline", "unschedule", "--host", "http://127.0.0.1:9"], "cannot reach Kubeflow Pipelines"),
        (["pipeline", "compile", "--step-timeout", "train=soon"], "--step-timeout 'train=soon': expected NAME=DURATION"),
        (["pipeline", "schedule", "--host", "http://127.0.0.1:9", "--cron", "0 3 * * *", "--step-timeout",
          "nope=1h"], "--step-timeout nope: unknown step"),
    ],
)
def test_cli_errors_are_one_line(argv, message, capsys, monkeypatch):
    monkeypatch.setenv("KFP_TOKEN", "tok-should-not-print")
    assert main(argv) == 2
    captured = capsys.readouterr()
    lines = [line for line in captured.err.splitlines() if line.strip()]
    assert len(lines) == 1 and message in lines[0]
    assert "tok-should-not-print" not in captured.err + captured.out


def test_unschedule_deletes_the_named_recurring_run_only(monkeypatch, capsys):
    FakeClient.reset()
    assert client.unschedule("http://kfp:8888", name="lr", factory=FakeClient) == 0  # no experiment yet
    client.schedule("http://kfp:8888", "0 3 * * *", {}, name="lr", factory=FakeClient)
    client.schedule("http://kfp:8888", "0 4 * * *", {}, name="other", factory=FakeClient)
    assert client.unschedule("http://kfp:8888", name="lr", factory=FakeClient) == 1
    assert [j.display_name for j in FakeClient.jobs] == ["other"]
    assert client.unschedule("http://kfp:8888", name="lr", factory=FakeClient) == 0  # a second uninstall: no-op
    assert not any(c[0] == "create_experiment" for c in FakeClient.calls[-3:])  # deleting creates nothing


def test_bad_cron_rejected_before_connecting():
    with pytest.raises(LightReasonerError, match="expected 5 fields"):
        client.schedule("http://x:1", "every day", {}, factory=FakeClient)
