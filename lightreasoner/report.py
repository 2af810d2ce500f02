"""The efficiency report: LightReasoner against the SFT baseline, from the values logged to MLflow.

For each method: seconds per stage (LightReasoner: ``sample`` + ``train``; SFT: ``generate`` + ``train``,
model loading left out of both), problems used, tuned tokens, accuracy and its delta against the base
Expert; then the ratios LightReasoner / SFT (the paper reports about 0.1 for time, 0.2 for problems and
0.01 for tuned tokens). The inputs are the flat metrics the stages log (``sample/seconds``,
``train/tuned_tokens``, ``evaluate_sft/accuracy_tuned`` ...): read back from the MLflow parent run when
tracking is on (:func:`report_from_run`), else from the stage folders through the same readers
(:func:`metrics_from_folders`). The report is logged to the parent run as ``report/*`` metrics, the plot
``report/accuracy_vs_tuned_tokens.png`` and ``report/efficiency_report.json``.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path
from typing import Any

from .config import Config
from .errors import LightReasonerError
from .outputs import StageOutput, library_versions, write_json_atomic
from .plots import plot_report
from .records import READERS
from .records import benchmark_metrics as benchmark_metrics  # lives beside the readers that log it

REPORT_JSON = "efficiency_report.json"
REPORT_PLOT = "accuracy_vs_tuned_tokens.png"

# method -> where each quantity is logged (metric names of the stage runs, copied to the parent run)
SOURCES: dict[str, dict[str, Any]] = {
    "lightreasoner": {
        "stages": {"sample": "sample/seconds", "train": "train/train_seconds"},
        "problems": "sample/problems",
        "tuned_tokens": "train/tuned_tokens",
        "accuracy": "evaluate/accuracy_tuned",
        "accuracy_base": "evaluate/accuracy_base",
    },
    "sft": {
        "stages": {"generate": "sft/generate_seconds", "train": "sft/train_seconds"},
        "problems": "sft/problems",
        "tuned_tokens": "sft/tuned_tokens",
        "accuracy": "evaluate_sft/accuracy_tuned",
        "accuracy_base": "evaluate_sft/accuracy_base",
    },
}
LABELS = {"lightreasoner": "LightReasoner", "sft": "SFT (rejection sampling)"}


def _value(metrics: dict[str, float], key: str) -> float:
    if key not in metrics or metrics[key] is None:
        raise LightReasonerError(f"efficiency report: metric {key} was not logged (did both methods run?)")
    return float(metrics[key])


def _ratio(a: float, b: float) -> float | None:
    return a / b if b else None


def build_report(metrics: dict[str, float], source: str = "") -> dict[str, Any]:
    """The report from the logged metrics (a flat ``name -> value`` dict)."""
    methods: dict[str, dict[str, Any]] = {}
    for method, keys in SOURCES.items():
        seconds = {stage: _value(metrics, key) for stage, key in keys["stages"].items()}
        accuracy, base = _value(metrics, keys["accuracy"]), _value(metrics, keys["accuracy_base"])
        methods[method] = {
            "seconds": seconds,
            "total_seconds": sum(seconds.values()),
            "problems": _value(metrics, keys["problems"]),
            "tuned_tokens": _value(metrics, keys["tuned_tokens"]),
            "accuracy": accuracy,
            "accuracy_base": base,
            "delta": accuracy - base,
        }
    lr, sft = methods["lightreasoner"], methods["sft"]
    return {
        "source": source,
        "methods": methods,
        "ratios": {
            "time": _ratio(lr["total_seconds"], sft["total_seconds"]),
            "train_time": _ratio(lr["seconds"]["train"], sft["seconds"]["train"]),
            "problems": _ratio(lr["problems"], sft["problems"]),
            "tuned_tokens": _ratio(lr["tuned_tokens"], sft["tuned_tokens"]),
        },
        "accuracy_difference": lr["accuracy"] - sft["accuracy"],
        "same_base": lr["accuracy_base"] == sft["accuracy_base"],
    }


def report_metrics(report: dict[str, Any]) -> dict[str, float]:
    """The report as MLflow metrics (``report/...``)."""
    out: dict[str, float] = {}
    for method, values in report["methods"].items():
        for key in ("total_seconds", "problems", "tuned_tokens", "accuracy", "delta"):
            out[f"report/{method}_{key}"] = float(values[key])
    for key, value in report["ratios"].items():
        if value is not None:
            out[f"report/ratio_{key}"] = float(value)
    out["report/accuracy_difference"] = float(report["accuracy_difference"])
    return out


def report_table(report: dict[str, Any]):
    """The report as a rich table: one column per method and the ratio LightReasoner / SFT."""
    from rich.table import Table

    lr, sft = report["methods"]["lightreasoner"], report["methods"]["sft"]
    table = Table(title="efficiency: LightReasoner vs SFT", show_header=True)
    for name, justify in (("what", "left"), ("LightReasoner", "right"), ("SFT", "right"), ("LR / SFT", "right")):
        table.add_column(name, justify=justify)

    def ratio(key: str) -> str:
        value = report["ratios"].get(key)
        return "-" if value is None else f"{value:.3g}"

    table.add_row("time sample / generate (s)", f"{lr['seconds']['sample']:.1f}", f"{sft['seconds']['generate']:.1f}", "")
    table.add_row("time train (s)", f"{lr['seconds']['train']:.1f}", f"{sft['seconds']['train']:.1f}", ratio("train_time"))
    table.add_row("time total (s)", f"{lr['total_seconds']:.1f}", f"{sft['total_seconds']:.1f}", ratio("time"))
    table.add_row("problems used", f"{lr['problems']:.0f}", f"{sft['problems']:.0f}", ratio("problems"))
    table.add_row("tuned tokens", f"{lr['tuned_tokens']:.0f}", f"{sft['tuned_tokens']:.0f}", ratio("tuned_tokens"))
    table.add_row("accuracy base", f"{lr['accuracy_base']:.4f}", f"{sft['accuracy_base']:.4f}", "")
    table.add_row("accuracy tuned", f"{lr['accuracy']:.4f}", f"{sft['accuracy']:.4f}",
                  f"{report['accuracy_difference']:+.4f} (diff)")
    table.add_row("delta vs base", f"{lr['delta']:+.4f}", f"{sft['delta']:+.4f}", "")
    return table


def metrics_from_folders(folders: dict[str, str | Path]) -> dict[str, float]:
    """The metrics the stages log, read from their folders with the tracking readers (stage -> folder:
    sample, train, evaluate, sft, evaluate_sft)."""
    tmp = Path(tempfile.mkdtemp(prefix="lightreasoner-report-"))
    try:
        metrics: dict[str, float] = {}
        for stage, folder in folders.items():
            record = READERS[stage](Path(folder), tmp)
            metrics.update(record.metrics)
        return metrics
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def logged_metrics(config: Config, run_id: str) -> dict[str, float]:
    """The latest value of every metric of an MLflow run."""
    from .tracking import client_for, mlflow_errors

    client = client_for(config)
    with mlflow_errors(client.tracking_uri, f"reading run {run_id}"):
        return dict(client.get_run(run_id).data.metrics)


def log_report(config: Config, run_id: str, report: dict[str, Any], output: Path) -> None:
    """Metrics, plot and JSON of the report into the run ``run_id``."""
    from .tracking import client_for, log_artifact, log_batch, mlflow_errors

    client = client_for(config)
    with mlflow_errors(client.tracking_uri, "logging the efficiency report"):
        log_batch(client, run_id, metrics=[(k, v, 0) for k, v in report_metrics(report).items()])
        run = client.get_run(run_id)
        for name in (REPORT_JSON, REPORT_PLOT):
            log_artifact(client, run, output / name, "report")


def efficiency_report(config: Config, output: str | Path, *, parent_run_id: str | None = None,
                      folders: dict[str, str | Path] | None = None) -> dict[str, Any]:
    """Build the report (from the run's logged metrics when tracking is on and ``parent_run_id`` is
    given, else from ``folders``), write ``efficiency_report.json`` and the plot to ``output``, and log
    them to the run. Returns the report."""
    out = Path(output)
    # Everything that can be refused is checked before any output is written (the report is made anew).
    stage = StageOutput(out, stage="report", what="efficiency report", rerun=True, retire=(REPORT_JSON, REPORT_PLOT))
    if config.tracking.enabled and parent_run_id:
        report = build_report(logged_metrics(config, parent_run_id), f"mlflow run {parent_run_id}")
    elif folders:
        report = build_report(metrics_from_folders(folders), "stage folders")
    else:
        raise LightReasonerError("efficiency report: needs an MLflow run (tracking on) or the stage folders")
    stage.claim()
    plot_report(report, out / REPORT_PLOT, LABELS)
    write_json_atomic(report, out / REPORT_JSON)
    if config.tracking.enabled and parent_run_id:
        log_report(config, parent_run_id, report, out)
    stage.finish({"source": report["source"], "ratios": report["ratios"], "versions": library_versions(),
                  "files": [REPORT_JSON, REPORT_PLOT]})
    return report


# --- pages for the Kubeflow UI (Markdown with the plots embedded) ----------------------------------------
