"""Every figure the project draws (matplotlib, headless): the sampling KL plots, the evaluation accuracy
bars and the LightReasoner-vs-SFT report. Each writes a PNG and returns its path."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any


def pyplot():
    """matplotlib's pyplot on the headless Agg backend."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    return plt


def save(fig, path: Path, dpi: int = 110) -> Path:
    """Write a figure as PNG under a temporary name, then rename (a reader never sees half an image)."""
    plt = pyplot()
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp.png")
    from .outputs import writing

    try:
        with writing(path):
            fig.savefig(tmp, format="png", dpi=dpi)
            tmp.replace(path)
    finally:
        plt.close(fig)
        tmp.unlink(missing_ok=True)
    return path


def kl_plots(trajectories: Path, beta: float, out: Path, *, skip_first: int = 0,
             kept: int | None = None) -> list[Path]:
    """KL histogram of the candidate steps with the beta line; kept fraction per problem (steps with KL > beta).

    ``skip_first``: leading steps of each trajectory that are never candidates (``sampling.skip_first_steps``),
    left out so the legend counts what the metrics count; ``kept``: the number of steps selected (the
    manifest's ``counts.selected``), used for the legend when given."""
    import numpy as np
    import pyarrow.parquet as pq

    table = pq.read_table(trajectories, columns=["problem_id", "step_kl"])
    per_problem = [np.asarray(v or [], dtype=np.float64)[max(0, skip_first):]
                   for v in table.column("step_kl").to_pylist()]
    all_kl = np.concatenate(per_problem) if per_problem else np.zeros(0)
    plt = pyplot()
    paths = []

    fig, ax = plt.subplots(figsize=(7, 4))
    if all_kl.size:
        positive = all_kl[all_kl > 0]
        if positive.size and positive.max() / max(positive.min(), 1e-12) > 1e3:
            bins = np.logspace(np.log10(max(positive.min(), 1e-6)), np.log10(positive.max()), 60)
            ax.set_xscale("log")
            ax.hist(np.clip(all_kl, bins[0], None), bins=bins, color="tab:blue", alpha=0.8)
        else:
            ax.hist(all_kl, bins=60, color="tab:blue", alpha=0.8)
    n_kept = int((all_kl > beta).sum()) if kept is None else int(kept)
    share = n_kept / all_kl.size if all_kl.size else 0.0
    ax.axvline(max(beta, 1e-6) if ax.get_xscale() == "log" else beta, color="tab:red", linestyle="--",
               label=f"beta = {beta:.4g} (kept {n_kept} of {all_kl.size} candidate steps, {share:.1%})")
    ax.set_xlabel("KL(p_Expert || p_Amateur) per candidate step")
    ax.set_ylabel("steps")
    ax.set_title("Expert-Amateur divergence")
    ax.legend()
    fig.tight_layout()
    paths.append(save(fig, out / "kl_histogram.png"))

    fractions = np.sort(np.array([float((k > beta).mean()) if k.size else 0.0 for k in per_problem]))[::-1]
    fig, ax = plt.subplots(figsize=(7, 4))
    if fractions.size:
        ax.bar(np.arange(fractions.size), fractions, width=1.0, color="tab:green")
        ax.axhline(float(fractions.mean()), color="black", linestyle=":", label=f"mean {fractions.mean():.1%}")
        ax.legend()
    ax.set_xlabel("problem (sorted)")
    ax.set_ylabel("kept fraction of steps")
    ax.set_ylim(0, 1)
    ax.set_title(f"Kept steps per problem (KL > {beta:.4g})")
    fig.tight_layout()
    paths.append(save(fig, out / "kept_fraction_per_problem.png"))
    return paths


def sample_kl_plots(folder: Path, manifest: Mapping[str, Any], out: Path) -> list[Path]:
    """:func:`kl_plots` of a samples folder, counting what its manifest's metrics count: candidate steps
    only (t = 0 is not one with ``sampling.skip_first_step``), kept = the selected steps."""
    sampling = (manifest.get("config") or {}).get("sampling") or {}
    selected = (manifest.get("counts") or {}).get("selected")
    return kl_plots(Path(folder) / "trajectories.parquet", float(manifest.get("effective_beta") or 0.0), out,
                    skip_first=1 if sampling.get("skip_first_step") else 0,
                    kept=int(selected) if selected is not None else None)


def plot_loss(points: list[tuple[str, float, int]], path: Path, title: str = "") -> Path:
    """The training loss against the optimizer step (``points``: the stage's ``(name, value, step)`` series)."""
    plt = pyplot()
    points = sorted((step, value) for _, value, step in points)
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot([s for s, _ in points], [v for _, v in points], color="tab:orange", marker="." if len(points) < 50 else None)
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("loss")
    ax.set_title(title or "Training loss", fontsize=10)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return save(fig, path)


def plot_accuracy(metrics: Mapping[str, Any], path: Path, title: str = "") -> Path:
    """Bars of base and tuned accuracy; the tuned bar carries the paired delta's 95% interval
    (base accuracy + [ci_low, ci_high])."""
    plt = pyplot()
    labels, values = ["base"], [metrics["accuracy_base"]]
    tuned = metrics.get("accuracy_tuned")
    if tuned is not None:
        labels.append("tuned")
        values.append(tuned)
    fig, ax = plt.subplots(figsize=(4.5, 4.0), dpi=100)
    bars = ax.bar(labels, values, color=["#8c8c8c", "#2a7ab9"][: len(values)], width=0.55)
    if tuned is not None and metrics.get("delta_ci_low") is not None:
        low = metrics["accuracy_base"] + metrics["delta_ci_low"]
        high = metrics["accuracy_base"] + metrics["delta_ci_high"]
        ax.errorbar([1], [tuned], yerr=[[max(0.0, tuned - low)], [max(0.0, high - tuned)]], fmt="none",
                    ecolor="black", capsize=6, linewidth=1.5, label="base + 95% CI of paired delta")
        ax.legend(loc="lower right", fontsize=7)
        ax.set_xlabel(
            f"delta {metrics['delta']:+.3f} [{metrics['delta_ci_low']:+.3f}, {metrics['delta_ci_high']:+.3f}], "
            f"McNemar p={metrics['mcnemar_p']:.3g}",
            fontsize=8,
        )
    for bar, value in zip(bars, values, strict=True):
        inside = value >= 0.12
        ax.text(bar.get_x() + bar.get_width() * 0.3, value / 2 if inside else value + 0.01, f"{value:.3f}",
                ha="center", va="center" if inside else "bottom", fontsize=9, color="white" if inside else "black")
    ax.set_ylim(0, 1.05)
    ax.set_ylabel(f"pass@1 accuracy (n={metrics['n']})")
    ax.set_title(title or "LightReasoner evaluation", fontsize=10)
    fig.tight_layout()
    return save(fig, path, dpi=100)


def plot_benchmark_deltas(rows: list[Mapping[str, Any]], path: Path, title: str = "") -> Path:
    """Per-benchmark paired delta (tuned - base) with its bootstrap 95% interval (``rows``: the evaluation's
    per-benchmark table, :func:`lightreasoner.evaluation.benchmark_rows`)."""
    plt = pyplot()
    rows = [r for r in rows if r["delta"] is not None]
    fig, ax = plt.subplots(figsize=(max(4.5, 1.1 * len(rows) + 1.5), 4.0), dpi=100)
    names = [r["benchmark"] for r in rows]
    deltas = [r["delta"] * 100 for r in rows]
    colors = ["#2a7ab9" if d >= 0 else "#c0504d" for d in deltas]
    ax.bar(names, deltas, color=colors, width=0.6)
    low = [max(0.0, (r["delta"] - r["delta_ci_low"]) * 100) if r["delta_ci_low"] is not None else 0 for r in rows]
    high = [max(0.0, (r["delta_ci_high"] - r["delta"]) * 100) if r["delta_ci_high"] is not None else 0 for r in rows]
    ax.errorbar(names, deltas, yerr=[low, high], fmt="none", ecolor="black", capsize=5, linewidth=1.2)
    ax.axhline(0, color="black", linewidth=0.8)
    ax.set_ylabel("delta accuracy, points (tuned - base, 95% CI)")
    ax.set_title(title or "LightReasoner: per-benchmark delta", fontsize=10)
    plt.setp(ax.get_xticklabels(), rotation=30, ha="right", fontsize=8)
    fig.tight_layout()
    return save(fig, path, dpi=100)


def plot_report(report: Mapping[str, Any], path: Path, labels: Mapping[str, str]) -> Path:
    """Accuracy against tuned tokens (log scale) for both methods, the base Expert as a line."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6, 4))
    colors = {"lightreasoner": "tab:orange", "sft": "tab:blue"}
    for method, values in report["methods"].items():
        x = max(values["tuned_tokens"], 1.0)
        ax.scatter([x], [values["accuracy"]], s=80, color=colors[method], label=labels[method], zorder=3)
        ax.annotate(f"{values['accuracy']:.1%}", (x, values["accuracy"]), textcoords="offset points",
                    xytext=(6, 6), fontsize=8)
    base = report["methods"]["lightreasoner"]["accuracy_base"]
    ax.axhline(base, color="tab:gray", linestyle="--", label=f"base Expert {base:.1%}")
    ax.set_xscale("log")
    ax.set_xlabel("tuned tokens (log scale)")
    ax.set_ylabel("accuracy")
    ratio = report["ratios"]["tuned_tokens"]
    ax.set_title("LightReasoner vs SFT" + (f": {ratio:.3g}x the tuned tokens" if ratio is not None else ""))
    ax.legend(fontsize=8)
    fig.tight_layout()
    return save(fig, path)
