"""The SFT baseline (rejection sampling + LoRA), the efficiency report and the pipeline's method branches."""

import json

import pyarrow.parquet as pq
import pytest
import torch
import yaml
from conftest import tiny_config
from mlflow.tracking import MlflowClient

from lightreasoner import records, tracking
from lightreasoner import sft as sft_module
from lightreasoner.adapters import resolve_adapter
from lightreasoner.data import load_problems
from lightreasoner.errors import LightReasonerError
from lightreasoner.loss import SoftLabelCollator, batch_loss
from lightreasoner.models import load_model, load_tokenizer
from lightreasoner.report import REPORT_JSON, REPORT_PLOT, SOURCES, efficiency_report
from lightreasoner.samples import build_examples


def sft_config(tiny_models, **sets):
    return tiny_config(tiny_models, **{"data.limit": 4, "sft.samples_per_problem": 3, "sft.max_new_tokens": 12,
                                       "training.max_steps": 2, "training.batch_size": 2,
                                       "training.lora_dropout": 0.0, **sets})


def fake_sampler(problems, tok, right):
    """A generator that writes "The answer is <gold>" for the (problem index, sample index) pairs in
    ``right`` and a wrong answer otherwise (twice the same right answer for sample 2 of problem 0)."""
    by_prompt = {}

    def sample_completions(model, tokenizer, prompts, config, progress=False):
        rows = []
        for i, prompt in enumerate(prompts):
            gold = problems[i].answer
            out = []
            for k in range(config.sft.samples_per_problem):
                answer = gold if (i, k) in right else str(int(gold) + 1)
                out.append(tok(f" The answer is {answer}", add_special_tokens=False)["input_ids"] + [tok.eos_token_id])
            by_prompt[tuple(prompt)] = out
            rows.append(out)
        return rows

    return sample_completions


def test_rejection_keeps_only_correct_solutions_and_output_is_a_training_output(tiny_models, tmp_path, monkeypatch):
    cfg = sft_config(tiny_models)
    problems = load_problems(cfg.data)
    tok = load_tokenizer(cfg.expert)
    right = {(0, 0), (0, 2), (2, 1)}  # (0, 0) and (0, 2) are the same text: kept once
    monkeypatch.setattr(sft_module, "sample_completions", fake_sampler(problems, tok, right))
    result = sft_module.sft(cfg, tmp_path / "sft", problems=problems, progress=False)
    m = result.manifest
    table = pq.read_table(tmp_path / "sft" / sft_module.SOLUTIONS).to_pylist()
    assert len(table) == 12 and all(r["correct"] == ((problems.index(next(p for p in problems if
                                                       p.problem_id == r["problem_id"])), r["sample_index"]) in right)
                                    for r in table)
    assert [(r["problem_id"], r["sample_index"]) for r in table if r["kept"]] == [
        (problems[0].problem_id, 0), (problems[2].problem_id, 1)]
    assert all(r["kept"] <= r["correct"] for r in table)
    assert m["stage"] == "sft" and m["problems_used"] == 4 and m["kept_solutions"] == 2
    assert m["counts"]["samples"] == 12 and m["counts"]["correct"] == 3 and m["counts"]["kept_problems"] == 2
    completion = sum(len(r["completion_token_ids"]) for r in table if r["kept"])
    assert m["counts"]["completion_tokens"] == completion
    # 2 kept solutions, batch 2, 2 steps = 2 epochs: every completion token trained twice
    assert m["steps"] == 2 and m["tuned_tokens"] == 2 * completion
    assert m["final_loss"] is not None and m["expert"]["sha256"]
    for key in ("generate_seconds", "train_seconds", "wall_seconds"):
        assert m[key] > 0
    # evaluation and tracking take it like a stage-2 output (evaluated in the run test below)
    assert resolve_adapter(tmp_path / "sft").training_manifest["stage"] == "sft"
    record = records.READERS["sft"](tmp_path / "sft", tmp_path)
    assert record.metrics["sft/tuned_tokens"] == 2 * completion and record.metrics["sft/problems"] == 4


def test_sft_has_its_own_problem_count(tiny_models, tmp_path, monkeypatch):
    """sft.num_problems is not tied to data.limit (the LightReasoner problems): 6 SFT problems for 4."""
    cfg = sft_config(tiny_models, **{"sft.num_problems": 6, "sft.samples_per_problem": 1})
    lr_problems = load_problems(cfg.data)
    own = load_problems(cfg.data.model_copy(update={"limit": 6}))
    assert len(lr_problems) == 4 and [p.problem_id for p in own[:4]] == [p.problem_id for p in lr_problems]
    monkeypatch.setattr(sft_module, "sample_completions",
                        fake_sampler(own, load_tokenizer(cfg.expert), {(0, 0), (4, 0), (5, 0)}))
    m = sft_module.sft(cfg, tmp_path / "sft", problems=lr_problems, progress=False).manifest
    assert m["problems_used"] == m["counts"]["problems"] == 6
    assert m["kept_problems"] == m["counts"]["kept_problems"] == 3 and m["kept_solutions"] == 3
    assert m["tuned_tokens"] > 0
    assert len(sft_module.sft_problems(cfg.model_copy(update={"sft": cfg.sft.model_copy(
        update={"num_problems": 2})}), lr_problems)) == 2
    assert len(sft_module.sft_problems(cfg.model_copy(update={"sft": cfg.sft.model_copy(
        update={"num_problems": None})}), lr_problems)) == 4


def test_no_correct_solution_is_a_one_line_error_and_writes_nothing(tiny_models, tmp_path, monkeypatch):
    cfg = sft_config(tiny_models)
    problems = load_problems(cfg.data)
    monkeypatch.setattr(sft_module, "sample_completions", fake_sampler(problems, load_tokenizer(cfg.expert), set()))
    out = tmp_path / "sft"
    with pytest.raises(LightReasonerError, match="kept no solution") as info:
        sft_module.sft(cfg, out, problems=problems, progress=False)
    assert "\n" not in str(info.value) and "12 sampled for 4 problems" in str(info.value)
    assert not (out / "manifest.json").exists() and not (out / "adapter").exists()


def test_sft_loss_is_next_token_loss_on_completion_tokens_only(tiny_models):
    cfg = sft_config(tiny_models)
    tok = load_tokenizer(cfg.expert)
    model = load_model(cfg.expert)
    sols = [
        sft_module.Solution("a", 0, [5, 17, 40, 41], [60, 61, 62, tok.eos_token_id], "", "1", "1", True, True),
        sft_module.Solution("b", 0, [5, 18, 42], [70, 71, tok.eos_token_id], "", "2", "2", True, True),
        sft_module.Solution("c", 0, [5, 19], [80, 81], "", "9", "2", False, False),  # rejected: not trained
    ]
    trajectories = sft_module.solution_trajectories(sols)
    assert [t.problem_id for t in trajectories] == ["a#0", "b#0"]
    batch = SoftLabelCollator(tok.pad_token_id)(build_examples(trajectories, "packed"))
    assert batch["positions"].shape[0] == 7  # one kept step per completion token
    with torch.no_grad():
        loss = batch_loss(model, batch)
        # by hand: each unpadded prompt + completion alone, cross-entropy of the completion tokens only
        losses = []
        for s in sols[:2]:
            seq = torch.tensor([s.prompt + s.completion])
            logits = model(input_ids=seq).logits[0].float()
            p = len(s.prompt)
            rows = logits[p - 1 : p - 1 + len(s.completion)]
            losses.append(torch.nn.functional.cross_entropy(rows, torch.tensor(s.completion), reduction="none"))
        expected = torch.cat(losses).mean()
    assert torch.allclose(loss, expected, atol=1e-5), (loss, expected)


@pytest.mark.slow
def test_report_ratios_come_from_the_logged_values(tmp_path):
    from lightreasoner.config import load_config

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    cfg = load_config(None, [f"tracking.tracking_uri={uri}", "tracking.experiment=report"])
    parent = tracking.start_pipeline(cfg, "report-test")
    logged = {"sample/seconds": 30.0, "train/train_seconds": 10.0, "sample/problems": 200.0,
              "train/tuned_tokens": 500.0, "evaluate/accuracy_base": 0.5, "evaluate/accuracy_tuned": 0.6,
              "sft/generate_seconds": 300.0, "sft/train_seconds": 100.0, "sft/problems": 1000.0,
              "sft/tuned_tokens": 50000.0, "evaluate_sft/accuracy_base": 0.5, "evaluate_sft/accuracy_tuned": 0.55}
    client = MlflowClient(uri)
    for key, value in logged.items():
        client.log_metric(parent, key, value)
    report = efficiency_report(cfg, tmp_path / "report", parent_run_id=parent)  # no folders: MLflow only
    assert report["ratios"]["time"] == pytest.approx(40.0 / 400.0)
    assert report["ratios"]["problems"] == pytest.approx(0.2)
    assert report["ratios"]["tuned_tokens"] == pytest.approx(0.01)
    assert report["methods"]["lightreasoner"]["delta"] == pytest.approx(0.1)
    assert report["methods"]["sft"]["delta"] == pytest.approx(0.05) and report["same_base"]
    metrics = client.get_run(parent).data.metrics
    assert metrics["report/ratio_tuned_tokens"] == pytest.approx(0.01)
    assert metrics["report/ratio_time"] == pytest.approx(0.1)
    artifacts = {a.path for a in client.list_artifacts(parent, "report")}
    assert {f"report/{REPORT_JSON}", f"report/{REPORT_PLOT}"} <= artifacts
    assert json.loads((tmp_path / "report" / REPORT_JSON).read_text())["ratios"] == report["ratios"]
    # a metric the report needs and no stage logged: one line naming it
    client2 = tracking.start_pipeline(cfg, "incomplete")
    with pytest.raises(LightReasonerError, match="metric sample/seconds was not logged"):
        efficiency_report(cfg, tmp_path / "r2", parent_run_id=client2)
    assert set(SOURCES) == {"lightreasoner", "sft"}


@pytest.mark.slow
def test_pipeline_has_the_method_parameter_and_the_sft_branch(tmp_path):
    from lightreasoner.pipelines.lightreasoner_pipeline import compile_pipeline

    ir = next(yaml.safe_load_all(compile_pipeline(tmp_path / "p.yaml").read_text()))
    params = ir["root"]["inputDefinitions"]["parameters"]
    assert params["method"]["defaultValue"] == "lightreasoner"
    comps = ir["components"]

    def tasks_of(name):
        return comps[name]["dag"]["tasks"]

    def branch_tasks(tasks) -> set[str]:  # the names of the tasks in a branch, its loops' included
        names = set(tasks)
        for task in tasks.values():
            if "dag" in comps[task["componentRef"]["name"]]:
                names |= branch_tasks(tasks_of(task["componentRef"]["name"]))
        return names

    root = tasks_of("comp-exit-handler-1")  # everything runs inside the exit handler that ends the MLflow run
    conditions = {t["triggerPolicy"]["condition"]: name for name, t in root.items() if "triggerPolicy" in t}
    assert any("== 'sft'" in c for c in conditions) and any("!= 'sft'" in c for c in conditions)
    sft_only = tasks_of(root[next(n for c, n in conditions.items() if "== 'sft'" in c)]["componentRef"]["name"])
    assert {"sft", "evaluate-sft-base", "evaluate-sft-tuned", "merge-evaluate-sft"} <= branch_tasks(sft_only)
    lr = tasks_of(root[next(n for c, n in conditions.items() if "!= 'sft'" in c)]["componentRef"]["name"])
    assert {"merge-sample", "train", "merge-evaluate", "register"} <= set(lr)
    both = next(t for t in lr.values() if "== 'both'" in t.get("triggerPolicy", {}).get("condition", ""))
    inner = set(tasks_of(both["componentRef"]["name"]))
    assert {"sft-both", "merge-evaluate-sft-both", "report"} <= inner


@pytest.mark.slow
def test_run_both_methods_share_problems_and_base_and_report(tiny_models, tmp_path, monkeypatch):
    from rich.console import Console

    from lightreasoner.report import report_table
    from lightreasoner.runner import run_all, summary_table

    cfg = sft_config(tiny_models, **{"tracking.enabled": "true", "sampling.beta": "auto:0.5",
                                     "training.max_steps": 1, "evaluation.data.limit": 2,
                                     "evaluation.bootstrap_samples": 100, "sft.samples_per_problem": 2})
    problems = load_problems(cfg.data)
    monkeypatch.setattr(sft_module, "sample_completions",
                        fake_sampler(problems, load_tokenizer(cfg.expert), {(0, 0), (1, 1)}))
    s = run_all(cfg, tmp_path / "work", progress=False, promote=False, method="both")
    assert s.sampling["counts"]["problems"] == 4 and s.sft["problems_used"] == 4
    assert s.evaluation["problems_sha256"] == s.sft_evaluation["problems_sha256"]
    assert s.evaluation["accuracy_base"] == s.sft_evaluation["accuracy_base"]
    r = s.report
    assert r["source"].startswith("mlflow run") and r["same_base"]
    assert r["methods"]["lightreasoner"]["tuned_tokens"] == s.training["tuned_tokens"]
    assert r["methods"]["sft"]["tuned_tokens"] == s.sft["tuned_tokens"]
    assert r["ratios"]["tuned_tokens"] == pytest.approx(s.training["tuned_tokens"] / s.sft["tuned_tokens"])
    client = MlflowClient(f"sqlite:///{tmp_path / 'work' / 'mlflow.db'}")
    parent = client.get_run(s.parent_run_id)
    assert parent.info.status == "FINISHED" and "report/ratio_time" in parent.data.metrics
    console = Console(record=True, width=140)
    console.print(summary_table(s))
    console.print(report_table(r))
    text = console.export_text()
    for row in ("SFT problems sampled / kept", "SFT sampled / kept solutions", "SFT tuned tokens",
                "accuracy tuned", "tuned tokens", "LR / SFT", "time total (s)", "eval answers changed"):
        assert row in text
