"""The Kubeflow pipeline: compiled spec, committed YAML up to date, submission and schedules."""

import pytest
import yaml

from lightreasoner.cli import main
from lightreasoner.config import load_config
from lightreasoner.errors import LightReasonerError
from pipelines import client
from pipelines.lightreasoner_pipeline import COMPILED, PARAMETERS, compile_pipeline


@pytest.fixture(scope="module")
def spec(tmp_path_factory):
    path = compile_pipeline(tmp_path_factory.mktemp("c") / "p.yaml")
    docs = list(yaml.safe_load_all(path.read_text()))
    return path, docs[0], docs[1] if len(docs) > 1 else {}


def test_committed_yaml_is_current(spec):
    # Compared as data: the compiler's header comment lists dict defaults in no fixed order.
    path, _, _ = spec
    fresh, committed = list(yaml.safe_load_all(path.read_text())), list(yaml.safe_load_all(COMPILED.read_text()))
    assert fresh == committed, "the committed pipeline is out of date: run `lightreasoner pipeline compile`"


def branch_tasks(ir):
    """The root DAG's tasks and those of its ``dsl.If`` branches (the ``method`` parameter's)."""
    tasks = dict(ir["root"]["dag"]["tasks"])
    for task in list(tasks.values()):
        if "triggerPolicy" in task:
            tasks.update(ir["components"][task["componentRef"]["name"]]["dag"]["tasks"])
    return tasks


def test_stages_parameters_and_defaults(spec):
    _, ir, _ = spec
    tasks = branch_tasks(ir)
    assert {"prepare-data", "merge-samples", "finetune-lora", "evaluate", "register-model"} <= set(tasks)
    loop = next(t for name, t in tasks.items() if name.startswith("for-loop"))
    assert "sample-contrastive" in ir["components"][loop["componentRef"]["name"]]["dag"]["tasks"]
    assert loop["parameterIterator"]["items"]["inputParameter"] == "pipelinechannel--sampling_shards"
    params = ir["root"]["inputDefinitions"]["parameters"]
    assert set(PARAMETERS) <= set(params)
    defaults = {k: v.get("defaultValue") for k, v in params.items()}
    assert defaults["expert"] == "Qwen/Qwen2.5-Math-1.5B" and defaults["amateur"] == "Qwen/Qwen2.5-0.5B"
    assert defaults["dataset"] == "openai/gsm8k" and defaults["num_problems"] == 1000.0
    assert defaults["alpha"] == 0.2 and defaults["beta"] == "0.4" and defaults["max_new_tokens"] == 128.0
    assert defaults["lora_r"] == 8.0 and defaults["lora_alpha"] == 16.0 and defaults["learning_rate"] == 5e-5
    caching = {name: t.get("cachingOptions", {}).get("enableCache", False) for name, t in tasks.items()}
    assert caching["prepare-data"] and not caching["finetune-lora"] and not caching["register-model"]


def test_gpu_stages_request_accelerators_and_secrets_are_env(spec):
    _, ir, platform = spec
    executors = ir["deploymentSpec"]["executors"]
    for stage in ("sample-contrastive", "finetune-lora", "evaluate"):
        res = executors[f"exec-{stage}"]["container"]["resources"]
        assert res["accelerator"]["resourceCount"] == "1" and "gpu" in res["accelerator"]["resourceType"]
        assert res["memoryLimit"] and res["cpuLimit"]
    assert "accelerator" not in executors["exec-prepare-data"]["container"].get("resources", {})
    k8s = platform["platforms"]["kubernetes"]["deploymentSpec"]["executors"]
    sample = k8s["exec-sample-contrastive"]
    assert sample["nodeSelector"]["nodeSelectorJson"] and sample["tolerations"]
    envs = {e["envVar"] for s in sample["secretAsEnv"] for e in s["keyToEnv"]}
    assert {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "MLFLOW_TRACKING_URI"} <= envs
    assert "AWS_SECRET_ACCESS_KEY" not in str(ir["root"]["inputDefinitions"])


def test_image_is_overridable(tmp_path):
    path = compile_pipeline(tmp_path / "p.yaml", image="registry.example/lr:test")
    assert "registry.example/lr:test" in path.read_text()


def test_arguments_follow_the_config():
    cfg = load_config("configs/paper-qwen2.5-math.yaml")
    args = client.arguments_from_config(cfg)
    assert args["expert"] == "Qwen/Qwen2.5-Math-1.5B" and args["num_problems"] == 1000
    assert args["eval_limit"] == 0 and args["beta"] == "0.4" and "expert:" in args["config_yaml"]


class FakeClient:
    calls: list = []
    jobs: list = []

    def __init__(self, host, existing_token, namespace):
        self.calls.append(("init", host, existing_token, namespace))

    def create_run_from_pipeline_package(self, **kw):
        self.calls.append(("run", kw))
        return type("Run", (), {"run_id": "run-1"})()

    def create_experiment(self, name, namespace=None):
        return type("Exp", (), {"experiment_id": "exp-1"})()

    def create_recurring_run(self, **kw):
        self.calls.append(("schedule", kw))
        n = sum(1 for c in self.calls if c[0] == "schedule")
        self.jobs.append(type("Job", (), {"recurring_run_id": f"job-{n}",
                                          "display_name": kw["job_name"]})())
        return self.jobs[-1]

    def list_recurring_runs(self, experiment_id, page_size):
        return type("List", (), {"recurring_runs": list(self.jobs)})()

    def delete_recurring_run(self, recurring_run_id):
        self.jobs[:] = [j for j in self.jobs if j.recurring_run_id != recurring_run_id]


def test_submit_uploads_the_compiled_package_with_parameters(monkeypatch):
    FakeClient.calls = []
    monkeypatch.setenv("KFP_TOKEN", "s3cr3t-token")
    params = client.parse_params(["num_problems=50", "beta=auto:0.2", "expert=Qwen/Qwen2.5-Math-1.5B",
                                  "learning_rate=5e-05", "promote=false"])
    run_id = client.submit("http://kfp.local:8888", params, token=client.read_token(None), factory=FakeClient)
    assert run_id == "run-1"
    init, (_, kw) = FakeClient.calls
    assert init[2] == "s3cr3t-token"
    assert kw["pipeline_file"] == str(COMPILED)
    assert kw["arguments"] == {"num_problems": 50, "beta": "auto:0.2", "expert": "Qwen/Qwen2.5-Math-1.5B",
                               "learning_rate": 5e-05, "promote": False}
    with pytest.raises(LightReasonerError, match="num_problems='many': expected an integer"):
        client.parse_params(["num_problems=many"])


def test_schedule_takes_five_field_cron(monkeypatch):
    FakeClient.calls, FakeClient.jobs = [], []
    job = client.schedule("http://kfp:8888", "0 3 * * *", client.parse_params(["num_shards=2"]), factory=FakeClient)
    assert job == "job-1"
    kw = FakeClient.calls[-1][1]
    assert kw["cron_expression"] == "0 0 3 * * *" and kw["experiment_id"] == "exp-1"
    assert kw["params"] == {"sampling_shards": [0, 1]} and kw["pipeline_package_path"] == str(COMPILED)
    client.schedule("http://kfp:8888", "0 4 * * *", {}, factory=FakeClient)  # a second install replaces it
    assert [j.recurring_run_id for j in FakeClient.jobs] == ["job-2"]


@pytest.mark.parametrize(
    "argv, message",
    [
        (["pipeline", "schedule", "--host", "http://127.0.0.1:9", "--cron", "0 3 * *"], "--cron '0 3 * *': expected 5 fields"),
        (["pipeline", "submit", "--host", "127.0.0.1:9"], "expected an http(s):// URL"),
        (["pipeline", "submit", "--host", "http://127.0.0.1:9", "--param", "nope=1"], "unknown pipeline parameter"),
        (["pipeline", "submit", "--host", "http://127.0.0.1:9", "--token-file", "/no/such"], "file not found"),
        (["pipeline", "submit", "--host", "http://127.0.0.1:9"], "cannot reach Kubeflow Pipelines"),
    ],
)
def test_cli_errors_are_one_line(argv, message, capsys, monkeypatch):
    monkeypatch.setenv("KFP_TOKEN", "tok-should-not-print")
    assert main(argv) == 2
    captured = capsys.readouterr()
    lines = [line for line in captured.err.splitlines() if line.strip()]
    assert len(lines) == 1 and message in lines[0]
    assert "tok-should-not-print" not in captured.err + captured.out


def test_bad_cron_rejected_before_connecting():
    with pytest.raises(LightReasonerError, match="expected 5 fields"):
        client.schedule("http://x:1", "every day", {}, factory=FakeClient)
