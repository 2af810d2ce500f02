"""lightreasoner.registry against a real MLflow server (sqlite backend, s3:// artifacts on moto)."""

from __future__ import annotations

import threading
import uuid
from pathlib import Path

import pytest
from fake_outputs import make_config, make_evaluation, make_samples, make_training
from servers import free_port

from lightreasoner import registry
from lightreasoner.cli import main
from lightreasoner.errors import LightReasonerError

pytestmark = pytest.mark.filterwarnings("ignore:Add type hints:UserWarning")

N = 40
BASE = [i < 20 for i in range(N)]                 # 20/40
V1 = [i < 30 for i in range(N)]                   # 30/40: +10 over base, 0 losses
V2 = [i < 25 for i in range(N)]                   # 25/40: worse than v1
V3 = [i < 38 for i in range(N)]                   # 38/40: +8 over v1, 0 losses


def aliases(client, name):
    return dict(client.get_registered_model(name).aliases)


def fabricate(tmp_path, cfg, tuned, tag):
    samples = make_samples(tmp_path / f"samples-{tag}", cfg)
    training = make_training(tmp_path / f"train-{tag}", cfg, samples)
    evaluation = make_evaluation(tmp_path / f"eval-{tag}", cfg, BASE, tuned, training=training)
    return samples, training, evaluation


def test_mcnemar_exact():
    assert registry.mcnemar_exact(0, 0) == 1.0
    assert registry.mcnemar_exact(10, 0) == pytest.approx(2 * 0.5**10)
    assert registry.mcnemar_exact(3, 5) == registry.mcnemar_exact(5, 3)


@pytest.mark.slow
def test_register_promote_flow(mlflow_server, aws_env, tmp_path, capsys):
    from mlflow.tracking import MlflowClient

    name = f"lr-{uuid.uuid4().hex[:8]}"
    cfg = make_config(mlflow_server.uri, experiment=f"reg-{name}", model_name=name)
    client = MlflowClient(mlflow_server.uri)

    # v1: registered (lineage tags, alias challenger), first promotion against the base Expert.
    samples, training, evaluation = fabricate(tmp_path, cfg, V1, "v1")
    v1 = registry.register(cfg, training, evaluation, samples)
    assert v1.version == "1" and aliases(client, name) == {"challenger": "1"}
    mv = client.get_model_version(name, "1")
    assert mv.tags["expert"] == cfg.expert.model and mv.tags["alpha"] == "0.2" and mv.tags["effective_beta"] == "0.4"
    assert mv.tags["samples_sha256"] and mv.tags["data"] == "synthetic:train[:4]"
    assert mv.tags["accuracy_tuned"] == "0.75" and mv.tags["delta"] == "0.25" and mv.tags["eval_set_sha256"]
    assert mv.source.startswith(f"s3://{aws_env.bucket}/mlflow/") and mv.run_id == v1.run_id
    run_keys = aws_env.keys(mv.source[len(f"s3://{aws_env.bucket}/"):])
    assert any(k.endswith("model/MLmodel") for k in run_keys)
    assert any(k.endswith("model/artifacts/adapter/adapter_config.json") for k in run_keys)

    d = registry.promote(cfg)
    assert d.promoted and d.champion_after == "1" and "base Expert" in d.reason
    assert aliases(client, name) == {"challenger": "1", "champion": "1"}
    d = registry.promote(cfg)  # idempotent
    assert not d.promoted and "already the champion" in d.reason
    assert aliases(client, name) == {"challenger": "1", "champion": "1"}

    # v2: worse than the champion -> refused, twice, nothing changes.
    _, training, evaluation = fabricate(tmp_path, cfg, V2, "v2")
    assert registry.register(cfg, training, evaluation).version == "2"
    for _ in range(2):
        d = registry.promote(cfg)
        assert not d.promoted and "does not beat champion version 1" in d.reason and d.delta == pytest.approx(-0.125)
        assert aliases(client, name) == {"challenger": "2", "champion": "1"}

    # A stricter bar refuses a real improvement; the CLI prints why.
    _, training, evaluation = fabricate(tmp_path, cfg, V3, "v3")
    assert main(["register", "--set", f"tracking.tracking_uri={mlflow_server.uri}", "--set",
                 f"tracking.experiment=reg-{name}", "--set", f"registry.model_name={name}",
                 "--training", str(training), "--evaluation", str(evaluation)]) == 0
    capsys.readouterr()
    assert main(["promote", "--set", f"tracking.tracking_uri={mlflow_server.uri}", "--model", name,
                 "--min-delta", "0.5"]) == 0
    assert "not promoted: version 3 does not beat champion version 1" in capsys.readouterr().out
    assert aliases(client, name) == {"challenger": "3", "champion": "1"}

    # v3 beats v1 (+8 paired wins, 0 losses): concurrent promote calls, exactly one champion, one promotion.
    decisions, errors = [], []

    def worker():
        try:
            decisions.append(registry.promote(cfg, echo=False))
        except Exception as exc:  # noqa: BLE001
            errors.append(exc)

    threads = [threading.Thread(target=worker) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert sum(d.promoted for d in decisions) == 1
    assert all("already the champion" in d.reason for d in decisions if not d.promoted)
    champions = [v.version for v in client.search_model_versions(f"name = '{name}'")
                 if "champion" in client.get_model_version(name, v.version).aliases]
    assert champions == ["3"] and aliases(client, name) == {"challenger": "3", "champion": "3"}
    mv3 = client.get_model_version(name, "3")
    assert mv3.tags["promoted_over"] == "1" and float(mv3.tags["promotion_delta"]) == pytest.approx(0.2)


@pytest.mark.slow
def test_promotion_refuses_evaluations_of_different_protocols(mlflow_server, aws_env, tmp_path):
    from mlflow.tracking import MlflowClient

    name = f"lr-{uuid.uuid4().hex[:8]}"
    cfg = make_config(mlflow_server.uri, experiment=f"reg-{name}", model_name=name)
    client = MlflowClient(mlflow_server.uri)
    paper = {"name": "qwen25-math-cot", "sha256": "a" * 64}
    demo = {"name": "sampling-prompt", "sha256": "b" * 64}
    for tag, tuned, protocol in (("v1", V1, paper), ("v2", V3, demo)):
        samples = make_samples(tmp_path / f"samples-{tag}", cfg)
        training = make_training(tmp_path / f"train-{tag}", cfg, samples)
        evaluation = make_evaluation(tmp_path / f"eval-{tag}", cfg, BASE, tuned, training=training, protocol=protocol)
        registry.register(cfg, training, evaluation, samples)
        if tag == "v1":
            assert registry.promote(cfg, echo=False).promoted
    assert client.get_model_version(name, "2").tags["eval_protocol"] == "sampling-prompt"
    d = registry.promote(cfg, echo=False)  # v2 is better, but measured under another protocol
    assert not d.promoted and "different protocols" in d.reason and "\n" not in d.reason
    assert "sampling-prompt" in d.reason and "qwen25-math-cot" in d.reason
    assert aliases(client, name) == {"challenger": "2", "champion": "1"}


@pytest.mark.slow
def test_register_fails_cleanly(mlflow_server, aws_env, tmp_path, monkeypatch):
    from mlflow.tracking import MlflowClient

    name = f"lr-{uuid.uuid4().hex[:8]}"
    cfg = make_config(mlflow_server.uri, experiment=f"fail-{name}", model_name=name)
    client = MlflowClient(mlflow_server.uri)
    samples, training, evaluation = fabricate(tmp_path, cfg, V1, "f")

    # Tracking server down: a clear one-line error, nothing registered anywhere.
    down = make_config(f"http://127.0.0.1:{free_port()}", model_name=name)
    with pytest.raises(LightReasonerError, match=r"^http://127.0.0.1:\d+: MLflow tracking server is not reachable"):
        registry.register(down, training, evaluation, samples)
    assert client.search_registered_models(f"name = '{name}'") == []

    # Wrong S3 credentials: the artifact upload fails, no model version is created, the run is FAILED.
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "definitely-wrong-secret")
    with pytest.raises(LightReasonerError, match="access denied") as err:
        registry.register(cfg, training, evaluation, samples)
    assert "definitely-wrong-secret" not in str(err.value)
    assert client.search_model_versions(f"name = '{name}'") == []
    exp = client.get_experiment_by_name(f"fail-{name}")
    assert [r.info.status for r in client.search_runs([exp.experiment_id])] == ["FAILED"]
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", aws_env.secret)

    # Bad inputs.
    with pytest.raises(LightReasonerError, match="not a training output"):
        registry.register(cfg, evaluation, evaluation)
    other = make_samples(tmp_path / "other", cfg)
    (other / "manifest.json").write_text((other / "manifest.json").read_text().replace(
        '"samples.parquet": "', '"samples.parquet": "0'))
    with pytest.raises(LightReasonerError, match="sha256 differs"):
        registry.register(cfg, training, evaluation, other)
    with pytest.raises(LightReasonerError, match="no version has alias 'challenger'|not registered"):
        registry.promote(cfg)
    with pytest.raises(LightReasonerError, match="no model version|not registered"):
        registry.promote(cfg, "no-such-model")
    with pytest.raises(LightReasonerError, match=r"run 0+: not found"):
        registry.compare(cfg, ["0" * 32])


def test_served_model_prompts_and_stops_as_its_evaluation_did(tmp_path):
    from lightreasoner.protocols import QWEN25_SYSTEM, resolve_protocol

    cfg = make_config("http://unused", experiment="x", model_name="m",
                      extra=["evaluation.protocol=qwen25-math-cot", "prompt.system_prompt=Train prompt."])
    protocol = resolve_protocol(cfg).as_dict()
    served = registry.serving_config(cfg.dump(), {"protocol": protocol}, cfg)
    assert served == {"protocol": "qwen25-math-cot", "system_prompt": QWEN25_SYSTEM, "chat_template": True,
                      "max_new_tokens": 2048, "eval_max_new_tokens": 2048, "stop_tokens": list(protocol["stop_tokens"]),
                      "prompt_template": protocol["prompt_template"], "stop_strings": list(protocol["stop_strings"])}
    # an evaluation from before protocols were recorded: the training config's prompt, as before
    old = registry.serving_config(cfg.dump(), {}, cfg)
    assert old["system_prompt"] == "Train prompt." and old["stop_tokens"] == [] and old["protocol"] == ""
    # a quick run scored with 32 tokens still serves whole answers: at least the protocol's own budget
    for name, budget in (("qwen25-math-cot", 2048), ("sampling-prompt", 512)):
        short = make_config("http://unused", extra=[f"evaluation.protocol={name}", "evaluation.max_new_tokens=32"])
        served = registry.serving_config(short.dump(), {"protocol": resolve_protocol(short).as_dict()}, short)
        assert (served["max_new_tokens"], served["eval_max_new_tokens"]) == (budget, 32)
    long = make_config("http://unused", extra=["evaluation.protocol=sampling-prompt", "evaluation.max_new_tokens=4096"])
    assert registry.serving_config(long.dump(), {"protocol": resolve_protocol(long).as_dict()}, long)[
        "max_new_tokens"] == 4096


def test_served_model_uses_the_literal_prompt_and_stop_strings_of_its_protocol(tiny_models):
    """Under qwen25-math-cot the served model gets the toolkit's literal prompt (the evaluation's token ids)
    and cuts its answer at the toolkit's stop words, as the evaluation that scored it did."""
    from transformers import AutoTokenizer

    from lightreasoner.mlflow_model import AdapterModel
    from lightreasoner.protocols import cut_output, prompt_ids, resolve_protocol

    cfg = make_config("http://unused", extra=["evaluation.protocol=qwen25-math-cot"])
    protocol = resolve_protocol(cfg)
    served = registry.serving_config(cfg.dump(), {"protocol": protocol.as_dict()}, cfg)
    model = AdapterModel()
    model.tokenizer = AutoTokenizer.from_pretrained(tiny_models["llama"])
    model.system_prompt, model.chat_template = served["system_prompt"], served["chat_template"]
    model.prompt_template, model.stop_strings = served["prompt_template"], served["stop_strings"]
    question = "What is 2 + 3?"
    assert model._prompt(question) == prompt_ids(model.tokenizer, question, protocol)
    text = "5 is \\boxed{5}<|im_end|> and more"
    assert model._cut(text) == cut_output(text, protocol) == "5 is \\boxed{5}"


@pytest.mark.slow
def test_registered_model_loads_and_answers(mlflow_server, aws_env, tiny_models, tmp_path, monkeypatch):
    """The pyfunc model from the registry: Expert (tiny llama) + a real peft LoRA adapter, greedy answers."""
    import mlflow.pyfunc
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    name = f"lr-{uuid.uuid4().hex[:8]}"
    cfg = make_config(mlflow_server.uri, experiment=f"load-{name}", model_name=name,
                      extra=[f"expert.model={tiny_models['llama']}", "evaluation.max_new_tokens=4"])
    samples, training, evaluation = fabricate(tmp_path, cfg, V1, "load")
    base = AutoModelForCausalLM.from_pretrained(tiny_models["llama"])
    peft_model = get_peft_model(base, LoraConfig(r=2, lora_alpha=4, target_modules=["q_proj", "v_proj"]))
    for f in (training / "adapter").iterdir():
        f.unlink()
    peft_model.save_pretrained(training / "adapter")
    AutoTokenizer.from_pretrained(tiny_models["llama"]).save_pretrained(training / "tokenizer")
    protocol = {"name": "p", "sha256": "c" * 64, "system_prompt": "Box it.", "chat_template": True,
                "max_new_tokens": 4, "stop_tokens": ["<|im_end|>", "not-a-token"], "stop_strings": ["\n\n"]}
    evaluation = make_evaluation(tmp_path / "eval-real", cfg, BASE, V1, training=training, protocol=protocol)
    registry.register(cfg, training, evaluation, samples)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_server.uri)  # models:/ URIs resolve on this server
    model = mlflow.pyfunc.load_model(f"models:/{name}@challenger")
    answers = model.predict(["What is 2 + 3?", "What is 7 * 6?"])
    assert len(answers) == 2 and all(isinstance(a, str) for a in answers)
    # it prompts and stops as the evaluation that scored it (end tokens the tokenizer lacks are skipped)
    served = model.unwrap_python_model()
    tok = AutoTokenizer.from_pretrained(tiny_models["llama"])
    # evaluated with 4 tokens, served with at least the protocol's budget (512 for a protocol of unknown name)
    assert served.system_prompt == "Box it." and served.max_new_tokens == 512 and served.stop_strings == ["\n\n"]
    assert model.metadata.signature.params.to_dict() == [
        {"name": "max_new_tokens", "type": "long", "default": 512, "shape": None}]
    assert len(model.predict(["What is 2 + 3?"], params={"max_new_tokens": 1})) == 1
    assert set(served.stop_ids) >= {tok.eos_token_id} and len(served.stop_ids) <= 1 + ("<|im_end|>" in tok.get_vocab())
    # Self-contained: a fresh environment without lightreasoner (the installed wheels reused, no network)
    # loads it from the registry and answers; its requirements are the image's, not this machine's.
    answer = answer_in_clean_env(tmp_path, f"models:/{name}@challenger")
    assert answer["lightreasoner_importable"] is False and isinstance(answer["answers"][0], str)
    meta = model.metadata
    assert [t.name for t in meta.signature.inputs.input_types()] == ["string"] and meta.saved_input_example_info
    assert "python_model.pkl" not in str(meta.flavors)


def answer_in_clean_env(tmp_path, uri: str) -> dict:
    """Load ``uri`` with mlflow.pyfunc in a new virtual environment that sees this one's installed
    packages as a plain path (so no editable lightreasoner) and answer one question."""
    import json
    import os
    import subprocess
    import sys
    import sysconfig

    env_dir = tmp_path / "clean-venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(env_dir)], check=True, timeout=120)
    purelib = subprocess.run([str(env_dir / "bin" / "python"), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                             capture_output=True, text=True, check=True).stdout.strip()
    # A path entry, not a site dir: the .pth files there (the editable lightreasoner) are not run.
    (Path(purelib) / "reuse.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    code = ("import json, mlflow.pyfunc, pandas as pd\n"
            "try:\n import lightreasoner; ok = True\nexcept ImportError:\n ok = False\n"
            f"m = mlflow.pyfunc.load_model({uri!r})\n"
            "a = m.predict(pd.DataFrame({'question': ['What is 2 + 3?']}))\n"
            "print(json.dumps({'lightreasoner_importable': ok, 'answers': list(a)}))")
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    proc = subprocess.run([str(env_dir / "bin" / "python"), "-c", code], capture_output=True, text=True,
                          timeout=600, cwd=tmp_path, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_model_requirements_are_the_images_versions():
    root = Path(__file__).resolve().parents[1]
    pins = {}
    for name in ("requirements.lock", "constraints.txt"):
        for line in (root / "docker" / name).read_text().splitlines():
            if "==" in line and not line.startswith("#"):
                pkg, version = line.split("==", 1)
                pins[pkg.strip().lower()] = version.strip()
    for requirement in registry.model_requirements():
        pkg, version = requirement.split("==", 1)
        assert pins[pkg.lower()] == version, requirement
        assert "+" not in version  # never a local build such as +cpu


@pytest.mark.slow
def test_decisions_are_on_the_record(mlflow_server, aws_env, tmp_path):
    """Promoted, refused, promoted: every version says why, a replaced challenger says by whom, every
    pipeline run names the version it produced and its decision; compare shows both."""
    from mlflow.tracking import MlflowClient

    from lightreasoner import tracking

    name = f"lr-{uuid.uuid4().hex[:8]}"
    cfg = make_config(mlflow_server.uri, experiment=f"rec-{name}", model_name=name)
    client = MlflowClient(mlflow_server.uri)
    parents = []
    for tag, tuned in (("v1", V1), ("v2", V2), ("v3", V3)):
        samples, training, evaluation = fabricate(tmp_path, cfg, tuned, tag)
        parent = tracking.start_pipeline(cfg, f"run-{tag}")
        registry.register(cfg, training, evaluation, samples, parent_run_id=parent)
        registry.promote(cfg, echo=False)
        tracking.end_pipeline(cfg, parent)
        parents.append(parent)
    assert aliases(client, name) == {"challenger": "3", "champion": "3"}

    v1, v2, v3 = (client.get_model_version(name, v) for v in ("1", "2", "3"))
    assert v1.tags["promotion.decision"] == "promoted" and v1.tags["promotion.compared_to"] == "base expert"
    assert float(v1.tags["promotion.delta"]) == pytest.approx(0.25) and "Promoted to champion" in v1.description
    assert v2.tags["promotion.decision"] == "refused" and v2.tags["promotion.compared_to"] == "1"
    assert float(v2.tags["promotion.delta"]) == pytest.approx(-0.125) and float(v2.tags["promotion.p_value"]) < 1
    assert "does not beat champion version 1" in v2.tags["promotion.reason"]
    assert v2.description.startswith(f"LightReasoner adapter on {cfg.expert.model}. Not promoted (champion stays 1)")
    assert v3.tags["promotion.decision"] == "promoted" and v3.tags["promotion.compared_to"] == "1"
    assert "over champion version 1" in v3.description
    assert v1.tags["superseded_by"] == "2" and v2.tags["superseded_by"] == "3" and "superseded_by" not in v3.tags
    # each version's source run is the pipeline run (its page lists it); the register run is tagged
    for version, parent in zip((v1, v2, v3), parents, strict=True):
        prun = client.get_run(parent)
        assert version.run_id == parent and version.source == f"{prun.info.artifact_uri}/model"
        register_run = client.get_run(version.tags["lightreasoner.register_run"])
        assert register_run.data.tags["mlflow.parentRunId"] == parent and register_run.info.status == "FINISHED"

    for version, (parent, decision) in enumerate(zip(parents, ("promoted", "refused", "promoted"), strict=True), 1):
        tags = client.get_run(parent).data.tags
        assert tags["lightreasoner.model_version"] == str(version) and tags["lightreasoner.registered_model"] == name
        assert tags["lightreasoner.model_uri"] == f"models:/{name}/{version}"
        assert tags["promotion.decision"] == decision
        assert f"{mlflow_server.uri}/#/models/{name}/versions/{version}" in tags["mlflow.note.content"]
        # the runs list answers "which version did this run produce?"
        found = client.search_runs([client.get_run(parent).info.experiment_id],
                                   f"tags.`lightreasoner.model_version` = '{version}' and tags.`lightreasoner.kind` = 'pipeline'")
        assert [r.info.run_id for r in found] == [parent]

    table = registry.compare(cfg, parents, echo=False).as_dict()
    assert list(table["promotion"].values()) == ["promoted", "refused", "promoted"]
    assert list(table["model version"].values()) == [f"{name} v1", f"{name} v2", f"{name} v3"]
