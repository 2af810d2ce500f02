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

import json
import shutil
import tempfile
from pathlib import Path
from typing import Any

from .config import Config
from .errors import LightReasonerError
from .plots import plot_report
from .records import READERS, paper_of
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
    out.mkdir(parents=True, exist_ok=True)
    if config.tracking.enabled and parent_run_id:
        report = build_report(logged_metrics(config, parent_run_id), f"mlflow run {parent_run_id}")
    elif folders:
        report = build_report(metrics_from_folders(folders), "stage folders")
    else:
        raise LightReasonerError("efficiency report: needs an MLflow run (tracking on) or the stage folders")
    plot_report(report, out / REPORT_PLOT, LABELS)
    (out / REPORT_JSON).write_text(json.dumps(report, indent=2, sort_keys=True))
    if config.tracking.enabled and parent_run_id:
        log_report(config, parent_run_id, report, out)
    return report


# --- pages for the Kubeflow UI (Markdown with the plots embedded) ----------------------------------------


def mcnemar_table(metrics: dict[str, Any]) -> list[list[int]] | None:
    """The paired outcome table of an evaluation: rows base right/wrong, columns tuned right/wrong
    (its off-diagonal cells are McNemar's b and c). None when no tuned model was scored."""
    if metrics.get("correct_tuned") is None:
        return None
    n, base_only, tuned_only = int(metrics["n"]), int(metrics["base_only_correct"]), int(metrics["tuned_only_correct"])
    both = int(metrics["correct_base"]) - base_only
    return [[both, base_only], [tuned_only, n - both - base_only - tuned_only]]


def _png(path: Path, alt: str) -> str:
    import base64

    return f"![{alt}](data:image/png;base64,{base64.b64encode(path.read_bytes()).decode()})"


def _fmt(value: Any) -> str:
    if value is None:
        return "-"
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def _pct(value: Any, sign: bool = False) -> str:
    return "n/a" if value is None else (f"{value * 100:+.1f}" if sign else f"{value * 100:.1f}")


def benchmark_markdown(metrics: dict[str, Any]) -> str:
    """The per-benchmark table of an evaluation (accuracy in %, as the paper's table): base, tuned, delta with
    its 95% interval, McNemar p, then the average over the benchmarks; empty without benchmarks."""
    from .evaluation import benchmark_rows

    per = metrics.get("benchmarks") or {}
    if not per or list(per) == ["data"]:
        return ""
    lines = ["| benchmark | n | base | tuned | delta | 95% interval | McNemar p |", "| --- | --- | --- | --- | --- | --- | --- |"]
    for row in benchmark_rows(metrics):
        interval = ("" if row["delta_ci_low"] is None else
                    f"[{_pct(row['delta_ci_low'], True)}, {_pct(row['delta_ci_high'], True)}]")
        p = "" if row["mcnemar_p"] is None else f"{row['mcnemar_p']:.3g}"
        lines.append(f"| {row['benchmark']} | {row['n']} | {_pct(row['accuracy_base'])} | {_pct(row['accuracy_tuned'])} "
                     f"| {_pct(row['delta'], True)} | {interval} | {p} |")
    from .benchmarks import row_count_notes

    notes = row_count_notes(metrics)
    if notes:
        lines += ["", *[f"- {note}" for note in notes]]
    paper = paper_markdown(metrics)
    if paper:
        lines += ["", paper.rstrip("\n")]
    return "\n".join(lines) + "\n"


def paper_markdown(metrics: dict[str, Any]) -> str:
    """The paper's published accuracies beside ours (in %), per benchmark run, when the Expert is one of the
    paper's (else empty): paper base / SFT / LightReasoner, our base / tuned, and the differences."""
    paper = paper_of(metrics)
    if not paper:
        return ""

    def cell(value: Any, sign: bool = False) -> str:
        return "-" if value is None else (f"{value:+.1f}" if sign else f"{value:.1f}")

    lines = [f"The paper's numbers for {paper['model']} ({paper['source']}), accuracy in %:", "",
             "| benchmark | paper base | paper SFT | paper LightR | our base | our tuned | base - paper | "
             "tuned - paper LightR |", "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    for r in paper["rows"]:
        lines.append(f"| {r['benchmark']} | {cell(r['paper_base'])} | {cell(r['paper_sft'])} | "
                     f"{cell(r['paper_lightreasoner'])} | {cell(r['base'])} | {cell(r['tuned'])} | "
                     f"{cell(r['base_minus_paper'], True)} | {cell(r['tuned_minus_paper'], True)} |")
    return "\n".join(lines) + "\n"


def summary_markdown(evaluation: str | Path, samples: str | Path | None = None) -> str:
    """The run's summary page: accuracy base/tuned with interval and McNemar p, the paired table, the
    accuracy plot and (given the samples folder) the KL histogram, as self-contained Markdown."""
    from .plots import sample_kl_plots

    evaluation = Path(evaluation)
    metrics = json.loads((evaluation / "metrics.json").read_text())
    lines = ["# LightReasoner run summary", "", "| what | value |", "| --- | --- |"]
    rows = [("problems (eval)", metrics.get("n")), ("accuracy base", metrics.get("accuracy_base")),
            ("accuracy tuned", metrics.get("accuracy_tuned")), ("delta", metrics.get("delta")),
            ("95% interval", f"[{_fmt(metrics.get('delta_ci_low'))}, {_fmt(metrics.get('delta_ci_high'))}]"),
            ("McNemar p", metrics.get("mcnemar_p"))]
    if samples is not None:
        manifest = json.loads((Path(samples) / "manifest.json").read_text())
        counts = manifest.get("counts", {})
        rows = [("problems (train)", counts.get("problems")), ("kept steps", counts.get("selected")),
                ("effective beta", manifest.get("effective_beta")), *rows]
    lines += [f"| {name} | {_fmt(value)} |" for name, value in rows]
    table = mcnemar_table(metrics)
    if table is not None:
        lines += ["", "| | tuned right | tuned wrong |", "| --- | --- | --- |",
                  f"| base right | {table[0][0]} | {table[0][1]} |", f"| base wrong | {table[1][0]} | {table[1][1]} |"]
    protocol = metrics.get("protocol") or {}
    if protocol:
        lines += ["", f"Protocol: `{protocol.get('name')}` ({protocol.get('max_new_tokens')} new tokens, "
                  f"sha256 {str(protocol.get('sha256'))[:12]})."]
    bench = benchmark_markdown(metrics)
    if bench:
        lines += ["", bench.rstrip("\n")]
    if (evaluation / "accuracy.png").is_file():
        lines += ["", _png(evaluation / "accuracy.png", "accuracy")]
    if (evaluation / "benchmark_deltas.png").is_file():
        lines += ["", _png(evaluation / "benchmark_deltas.png", "delta per benchmark")]
    if samples is not None:
        with tempfile.TemporaryDirectory() as tmp:
            histogram = sample_kl_plots(Path(samples), manifest, Path(tmp))[0]
            lines += ["", _png(histogram, "KL histogram")]
    return "\n".join(lines) + "\n"


def efficiency_markdown(report: dict[str, Any], folder: str | Path) -> str:
    """The efficiency report as Markdown with its plot embedded."""
    lines = ["# LightReasoner vs SFT", "", "| | " + " | ".join(LABELS[m] for m in report["methods"]) + " |",
             "| --- |" + " --- |" * len(report["methods"])]
    for key in ("total_seconds", "problems", "tuned_tokens", "accuracy", "delta"):
        lines.append(f"| {key} | " + " | ".join(_fmt(v[key]) for v in report["methods"].values()) + " |")
    lines += ["", "| ratio LightReasoner / SFT | value |", "| --- | --- |"]
    lines += [f"| {key} | {_fmt(value)} |" for key, value in report["ratios"].items()]
    plot = Path(folder) / REPORT_PLOT
    if plot.is_file():
        lines += ["", _png(plot, "accuracy vs tuned tokens")]
    return "\n".join(lines) + "\n"


def log_kfp_metrics(artifact: Any, values: dict[str, Any]) -> None:
    """Log the numeric ``values`` on a KFP ``Metrics`` output (the UI reads its metadata) and write them
    to the artifact's file as well: an output artifact without a file makes a cached step miss."""
    numbers = {k: float(v) for k, v in values.items() if isinstance(v, int | float) and not isinstance(v, bool)}
    for key, value in numbers.items():
        artifact.log_metric(key, value)
    write_kfp_file(artifact)


def write_kfp_file(artifact: Any) -> None:
    """Write a metadata-only KFP artifact's (Metrics, ClassificationMetrics) metadata to its file."""
    path = Path(artifact.path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(artifact.metadata, sort_keys=True, default=str))
