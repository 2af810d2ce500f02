"""The pages the Kubeflow UI shows: the McNemar table and the Markdown summaries; the efficiency report's
output folder (manifest last)."""

import json

import pytest

from lightreasoner.presentation import efficiency_markdown, log_kfp_metrics, mcnemar_table


def test_mcnemar_table_from_paired_counts():
    metrics = {"n": 10, "correct_base": 6, "correct_tuned": 7, "base_only_correct": 1, "tuned_only_correct": 2}
    table = mcnemar_table(metrics)
    assert table == [[5, 1], [2, 2]] and sum(map(sum, table)) == 10
    assert mcnemar_table({"n": 3, "correct_base": 1, "correct_tuned": None}) is None


def test_kfp_metrics_are_logged_and_written(tmp_path):
    class Artifact:
        path = str(tmp_path / "metrics")
        metadata: dict = {}

        def log_metric(self, key, value):
            self.metadata[key] = value

    art = Artifact()
    log_kfp_metrics(art, {"steps": 3, "loss": 0.5, "name": "x", "missing": None, "flag": True})
    assert art.metadata == {"steps": 3.0, "loss": 0.5}
    assert json.loads((tmp_path / "metrics").read_text()) == {"loss": 0.5, "steps": 3.0}


def test_efficiency_markdown_lists_both_methods_and_ratios(tmp_path):
    method = {"total_seconds": 10.0, "problems": 4.0, "tuned_tokens": 100.0, "accuracy": 0.5, "delta": 0.1}
    report = {"methods": {"lightreasoner": method, "sft": {**method, "total_seconds": 40.0}},
              "ratios": {"time": 0.25, "tuned_tokens": 1.0}}
    page = efficiency_markdown(report, tmp_path)
    assert "| total_seconds | 10 | 40 |" in page and "| time | 0.25 |" in page


def _bench_metrics(model: str) -> dict:
    def bench(n, base, tuned):
        return {"n": n, "accuracy_base": base, "accuracy_tuned": tuned, "delta": tuned - base, "delta_ci_low": -0.1,
                "delta_ci_high": 0.2, "mcnemar_p": 0.5, "version": {"n": n, "paper_rows": 0}}

    per = {"gsm8k": bench(1319, 0.43, 0.70), "svamp": bench(300, 0.5, 0.75)}
    return {"expert": {"model": model}, "benchmarks": per,
            "average": {"n": 1619, "accuracy_base": 0.465, "accuracy_tuned": 0.725, "delta": 0.26,
                        "delta_ci_low": None, "delta_ci_high": None, "mcnemar_p": None}}


def test_report_puts_the_papers_numbers_beside_ours_for_a_paper_expert(tmp_path):
    from lightreasoner.presentation import benchmark_markdown, paper_markdown
    from lightreasoner.records import benchmark_metrics

    for model in ("Qwen/Qwen2.5-Math-1.5B", "/models/qwen2.5-math-1.5b/"):
        text = benchmark_markdown(_bench_metrics(model))
        assert "arXiv 2510.07962" in text and "| paper base | paper SFT | paper LightR | our base | our tuned |" in text
        assert "| gsm8k | 42.5 | 69.2 | 70.6 | 43.0 | 70.0 | +0.5 | -0.6 |" in text
        assert "| svamp | 68.8 | 64.1 | 76.0 | 50.0 | 75.0 | -18.8 | -1.0 |" in text
        assert "| average | 55.6 | 66.7 | 73.3 | 46.5 | 72.5 |" in text
    assert "- svamp: 300 rows, the paper's set has 1,000" in text and "gsm8k: 1,319 rows" not in text
    import json

    from lightreasoner.presentation import summary_markdown

    folder = tmp_path / "eval"
    folder.mkdir()
    (folder / "metrics.json").write_text(json.dumps(_bench_metrics("deepseek-ai/DeepSeek-R1-Distill-Qwen-1.5B")))
    page = summary_markdown(folder)  # the KFP summary page
    assert "The paper's numbers for DeepSeek-R1-Distill-Qwen-1.5B" in page and "| gsm8k | 75.2 | 78.2 | 79.5 |" in page
    flat = benchmark_metrics(_bench_metrics("Qwen/Qwen2.5-Math-1.5B"))
    assert flat["gsm8k/paper_base"] == 0.425 and flat["svamp/paper_lightreasoner"] == 0.76
    # Another Expert: our table only, no paper columns (the row-count note stays).
    other = _bench_metrics("HuggingFaceTB/SmolLM2-135M-Instruct")
    assert paper_markdown(other) == "" and "paper" not in benchmark_markdown(other).replace("the paper's set", "")
    assert not any("paper" in k for k in benchmark_metrics(other))


LOGGED = {"sample/seconds": 30.0, "train/train_seconds": 10.0, "sample/problems": 200.0,
          "train/tuned_tokens": 500.0, "evaluate/accuracy_base": 0.5, "evaluate/accuracy_tuned": 0.6,
          "sft/generate_seconds": 300.0, "sft/train_seconds": 100.0, "sft/problems": 1000.0,
          "sft/tuned_tokens": 50000.0, "evaluate_sft/accuracy_base": 0.5, "evaluate_sft/accuracy_tuned": 0.55}


def _report_from_folders(monkeypatch, out):
    from lightreasoner import report
    from lightreasoner.config import load_config

    monkeypatch.setattr(report, "metrics_from_folders", lambda folders: dict(LOGGED))
    config = load_config(None, ["tracking.enabled=false"])
    return report.efficiency_report(config, out, folders={"sample": "unused"})


def test_efficiency_report_writes_its_manifest_last_and_is_made_anew(tmp_path, monkeypatch):
    from lightreasoner.outputs import read_manifest
    from lightreasoner.report import REPORT_JSON, REPORT_PLOT

    out = tmp_path / "report"
    result = _report_from_folders(monkeypatch, out)
    assert json.loads((out / REPORT_JSON).read_text()) == json.loads(json.dumps(result))
    manifest = read_manifest(out, "report")
    assert manifest["stage"] == "report" and manifest["files"] == [REPORT_JSON, REPORT_PLOT]
    assert manifest["ratios"] == result["ratios"] and "lightreasoner" in manifest["versions"]
    assert sorted(p.name for p in out.iterdir()) == sorted([REPORT_JSON, REPORT_PLOT, "manifest.json"])
    _report_from_folders(monkeypatch, out)  # a rerun into its own folder makes it again
    assert read_manifest(out, "report")["stage"] == "report"


def test_efficiency_report_failed_work_leaves_no_manifest(tmp_path, monkeypatch):
    from lightreasoner import report
    from lightreasoner.errors import LightReasonerError

    out = tmp_path / "report"
    _report_from_folders(monkeypatch, out)

    def broken(*args, **kwargs):
        raise LightReasonerError(f"{out / report.REPORT_PLOT}: No space left on device")

    monkeypatch.setattr(report, "plot_report", broken)
    with pytest.raises(LightReasonerError, match="No space left"):
        _report_from_folders(monkeypatch, out)
    assert not (out / "manifest.json").exists() and not (out / report.REPORT_JSON).exists()
    monkeypatch.undo()
    _report_from_folders(monkeypatch, out)  # nothing blocks the rerun
    assert (out / "manifest.json").is_file()


def test_efficiency_report_refuses_another_stages_output_untouched(tmp_path, monkeypatch):
    from lightreasoner.errors import LightReasonerError

    out = tmp_path / "evaluation"
    out.mkdir()
    (out / "manifest.json").write_text(json.dumps({"stage": "evaluate"}))
    (out / "metrics.json").write_text("{}")
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    with pytest.raises(LightReasonerError) as err:
        _report_from_folders(monkeypatch, out)
    assert "belongs to stage 'evaluate', not to stage 'report'" in str(err.value) and "\n" not in str(err.value)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
