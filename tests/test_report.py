"""The pages the Kubeflow UI shows: the McNemar table and the Markdown summaries."""

import json

from lightreasoner.report import efficiency_markdown, log_kfp_metrics, mcnemar_table


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
