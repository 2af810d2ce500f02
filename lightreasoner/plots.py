"""Every figure the project draws (matplotlib, headless): the sampling KL plots, the evaluation accuracy
bars and the LightReasoner-vs-SFT report. Each writes a PNG and returns its path."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any


def pyplot():
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    return plt


def kl_plots(trajectories: Path, beta: float, out: Path) -> list[Path]:
    """KL histogram of every step with the beta line; kept fraction per problem (steps with KL > beta)."""
    import numpy as np
    import pyarrow.parquet as pq

    table = pq.read_table(trajectories, columns=["problem_id", "step_kl"])
    per_problem = [np.asarray(v or [], dtype=np.float64) for v in table.column("step_kl").to_pylist()]
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
    kept = float((all_kl > beta).mean()) if all_kl.size else 0.0
    ax.axvline(max(beta, 1e-6) if ax.get_xscale() == "log" else beta, color="tab:red", linestyle="--",
               label=f"beta = {beta:.4g} (kept {kept:.1%} of {all_kl.size} steps)")
    ax.set_xlabel("KL(p_Expert || p_Amateur) per step")
    ax.set_ylabel("steps")
    ax.set_title("Expert-Amateur divergence")
    ax.legend()
    fig.tight_layout()
    paths.append(out / "kl_histogram.png")
    fig.savefig(paths[-1], dpi=110)
    plt.close(fig)

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
    paths.append(out / "kept_fraction_per_problem.png")
    fig.savefig(paths[-1], dpi=110)
    plt.close(fig)
    return paths


def accuracy_plot(metrics: Mapping[str, Any], out: Path) -> Path:
    plt = pyplot()
    base, tuned = float(metrics["accuracy_base"]), float(metrics["accuracy_tuned"])
    fig, ax = plt.subplots(figsize=(5, 4))
    bars = ax.bar(["Expert (base)", "Expert + LightReasoner"], [base, tuned], color=["tab:gray", "tab:orange"])
    for bar, value in zip(bars, (base, tuned), strict=True):
        ax.text(bar.get_x() + bar.get_width() / 2, value, f"{value:.1%}", ha="center", va="bottom")
    title = f"delta {tuned - base:+.1%}"
    if metrics.get("delta_ci_low") is not None and metrics.get("delta_ci_high") is not None:
        title += f" [{float(metrics['delta_ci_low']):+.1%}, {float(metrics['delta_ci_high']):+.1%}]"
    if metrics.get("mcnemar_p") is not None:
        title += f", McNemar p = {float(metrics['mcnemar_p']):.3g}"
    ax.set_title(title)
    ax.set_ylabel(f"accuracy (n = {metrics.get('n', '?')})")
    ax.set_ylim(0, min(1.0, max(base, tuned) * 1.2 + 0.05))
    fig.tight_layout()
    path = out / "accuracy.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


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
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
