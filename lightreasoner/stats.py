"""Paired statistics of two scorings of the same problems: the bootstrap interval of the accuracy delta and
the exact McNemar test (used by evaluation and by the registry's promotion)."""

from __future__ import annotations

import math
from fractions import Fraction
from typing import Any

import numpy as np

from .errors import LightReasonerError

# --- paired metrics --------------------------------------------------------------------------------


def mcnemar_exact(base_only: int, tuned_only: int) -> float:
    """Two-sided exact McNemar p-value: a binomial test of the discordant pairs against p = 1/2."""
    n = base_only + tuned_only
    if n == 0:
        return 1.0
    k = min(base_only, tuned_only)
    tail = Fraction(sum(math.comb(n, i) for i in range(k + 1)), 2**n)
    return float(min(Fraction(1), 2 * tail))


def bootstrap_delta_ci(correct_base: np.ndarray, correct_tuned: np.ndarray, samples: int, seed: int,
                       level: float = 0.95) -> tuple[float, float]:
    """Percentile bootstrap interval of the paired accuracy delta (problems resampled with replacement)."""
    diff = np.asarray(correct_tuned, dtype=np.int8) - np.asarray(correct_base, dtype=np.int8)
    n = len(diff)
    if n == 0:
        raise LightReasonerError("bootstrap: no problems to resample")
    rng = np.random.default_rng(seed)
    deltas = np.empty(samples, dtype=np.float64)
    chunk = max(1, min(samples, 2_000_000 // n))
    for start in range(0, samples, chunk):
        stop = min(samples, start + chunk)
        idx = rng.integers(0, n, size=(stop - start, n))
        deltas[start:stop] = diff[idx].mean(axis=1)
    tail = (1.0 - level) / 2.0 * 100.0
    low, high = np.percentile(deltas, [tail, 100.0 - tail])
    return float(low), float(high)


def paired_metrics(correct_base, correct_tuned=None, *, bootstrap_samples: int = 10000,
                   seed: int = 0) -> dict[str, Any]:
    """Accuracy of each, delta = tuned - base, its bootstrap 95% CI and the exact McNemar p-value.
    Without ``correct_tuned`` the tuned fields are None."""
    base = np.asarray(correct_base, dtype=bool)
    n = int(base.size)
    metrics: dict[str, Any] = {
        "n": n,
        "correct_base": int(base.sum()),
        "accuracy_base": float(base.mean()) if n else 0.0,
        "correct_tuned": None,
        "accuracy_tuned": None,
        "delta": None,
        "delta_ci_low": None,
        "delta_ci_high": None,
        "mcnemar_p": None,
        "base_only_correct": None,
        "tuned_only_correct": None,
    }
    if correct_tuned is None:
        return metrics
    tuned = np.asarray(correct_tuned, dtype=bool)
    if tuned.shape != base.shape:
        raise LightReasonerError(f"paired metrics: {base.size} base vs {tuned.size} tuned predictions")
    base_only = int((base & ~tuned).sum())
    tuned_only = int((tuned & ~base).sum())
    low, high = bootstrap_delta_ci(base, tuned, bootstrap_samples, seed)
    metrics.update(
        correct_tuned=int(tuned.sum()),
        accuracy_tuned=float(tuned.mean()),
        delta=float(tuned.mean() - base.mean()),
        delta_ci_low=low,
        delta_ci_high=high,
        mcnemar_p=mcnemar_exact(base_only, tuned_only),
        base_only_correct=base_only,
        tuned_only_correct=tuned_only,
    )
    return metrics
