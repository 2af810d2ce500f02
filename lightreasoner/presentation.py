"""How results are shown: one value formatter for tables and tags, the Markdown pages (run summary,
per-benchmark and paper tables, efficiency report) and the KFP ``Metrics`` helpers the components call.

Nothing here computes a result: each function formats what a stage or the report has already produced.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Any

from .records import paper_of
from .report import LABELS, REPORT_PLOT


def format_value(value: Any, *, spec: str = ".4g", none: str = "-", dicts_as_json: bool = False) -> str:
    """One value as table text: ``none`` for None, a float through the format ``spec`` (``.4g``, ``.4f``
    ...), a dict as sorted JSON when ``dicts_as_json``, anything else through ``str``."""
    if value is None:
        return none
    if isinstance(value, float):
        return format(value, spec)
    if dicts_as_json and isinstance(value, dict):
        return json.dumps(value, sort_keys=True)
    return str(value)


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
            ("95% interval", f"[{format_value(metrics.get('delta_ci_low'))}, {format_value(metrics.get('delta_ci_high'))}]"),
            ("McNemar p", metrics.get("mcnemar_p"))]
    if samples is not None:
        manifest = json.loads((Path(samples) / "manifest.json").read_text())
        counts = manifest.get("counts", {})
        rows = [("problems (train)", counts.get("problems")), ("kept steps", counts.get("selected")),
                ("effective beta", manifest.get("effective_beta")), *rows]
    lines += [f"| {name} | {format_value(value)} |" for name, value in rows]
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
        lines.append(f"| {key} | " + " | ".join(format_value(v[key]) for v in report["methods"].values()) + " |")
    lines += ["", "| ratio LightReasoner / SFT | value |", "| --- | --- |"]
    lines += [f"| {key} | {format_value(value)} |" for key, value in report["ratios"].items()]
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
