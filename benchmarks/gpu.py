"""GPU throughput of the whole method on paper-shaped models: sampling, reference mode, training, evaluation.

Random-weight models shaped like the paper's pair (Expert: Qwen2.5-Math-1.5B, Amateur: Qwen2.5-0.5B, a
151,936-row head for 151,665 tokens), built from their configs in bf16: nothing is downloaded. Their final
norms are scaled so that the logits are about as sharp as a real model's (a handful of plausible tokens per
step), and a word-level stand-in tokenizer turns the synthetic problems into prompts of ~60 tokens. In one
process, after a warm-up that compiles every batch shape:

* sampling: the sampling stage on ``--problems`` problems x 128 tokens at the batch size it picks
  (``auto``), as seconds per 1,000 problems, and its peak GPU memory;
* overhead: sampling / the same engine's bare greedy generation of the same batches - 1;
* reference: the paper's per-prefix mode on 2 problems (seconds per problem, speedup of the fast mode)
  and fast-vs-reference agreement in bf16: same completions, max relative KL difference
  (|kl_fast - kl_ref| / max(kl_ref, 1e-3)), Jaccard of the kept steps at the fast run's beta;
* training: ``--train-steps`` LoRA updates (packed, batch 16) on the samples just made, extrapolated to
  the paper's schedule of 1,000 updates;
* evaluation: the evaluation stage's generation loop, 128 problems x 256 tokens, generated tokens/s.

Last line: ``sampling_s_per_1000=<x> overhead=<y> eval_tokens_per_s=<z> train_s=<w> peak_gib=<m>``.
Needs CUDA; ``--tiny`` runs the same code on tiny models and shapes on the CPU in seconds (a smoke test,
its numbers mean nothing).

    python benchmarks/gpu.py [--problems 512] [--train-steps 40] [--compile auto] [--batch auto]
    python benchmarks/gpu.py --tiny
"""

from __future__ import annotations

import argparse
import hashlib
import re
import resource
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import torch

from lightreasoner.config import load_config
from lightreasoner.data import Problem, synthetic_problems
from lightreasoner.evaluation import generate_completions
from lightreasoner.models import ModelPair, generate_greedy, prompt_token_ids, resolve_compile
from lightreasoner.sampling import SHARDS, _batch_size, plan_batches, sample

QWEN_TOKENS = 151665
EXPERT_15B = dict(vocab_size=151936, hidden_size=1536, intermediate_size=8960, num_hidden_layers=28,
                  num_attention_heads=12, num_key_value_heads=2, max_position_embeddings=4096,
                  rope_theta=10000.0, rms_norm_eps=1e-6, tie_word_embeddings=True)
AMATEUR_05B = dict(vocab_size=151936, hidden_size=896, intermediate_size=4864, num_hidden_layers=24,
                   num_attention_heads=14, num_key_value_heads=2, max_position_embeddings=4096,
                   rope_theta=1000000.0, rms_norm_eps=1e-6, tie_word_embeddings=True)
TINY = dict(vocab_size=528, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=2, max_position_embeddings=1024, tie_word_embeddings=True)
TINY_TOKENS = 512
LOGIT_STD = 2.0  # about 3 tokens within alpha=0.2 of the top one among 151K


class WordTokenizer:
    """Stands in for the Qwen tokenizer (nothing downloaded): each word or sign of a prompt is one id."""

    chat_template = None

    def __init__(self, tokens: int):
        self.tokens = tokens
        self.eos_token_id = self.pad_token_id = tokens - 1
        self.offset = min(1000, tokens // 4)

    def __len__(self) -> int:
        return self.tokens

    def _id(self, word: str) -> int:
        digest = int(hashlib.sha256(word.encode()).hexdigest()[:12], 16)
        return self.offset + digest % (self.tokens - 2 * self.offset)

    def __call__(self, text: str, add_special_tokens: bool = True) -> dict[str, list[int]]:
        return {"input_ids": [self._id(w) for w in re.findall(r"\w+|[^\w\s]", text)]}

    def decode(self, ids, skip_special_tokens: bool = True) -> str:
        return " ".join(str(i) for i in ids)


def build(shape: dict, eos: int, seed: int, device: torch.device, dtype: torch.dtype, probe: torch.Tensor):
    """A random Qwen2 model of ``shape`` whose logits have about LOGIT_STD standard deviation."""
    from transformers import AutoModelForCausalLM, Qwen2Config

    torch.manual_seed(seed)
    cfg = Qwen2Config(**shape, bos_token_id=eos, eos_token_id=eos, pad_token_id=eos)
    with device:  # initialise the random weights where they will live (much faster than on the CPU)
        model = AutoModelForCausalLM.from_config(cfg, dtype=dtype)
    model = model.to(device).eval()
    model.generation_config.eos_token_id = model.generation_config.pad_token_id = eos
    with torch.inference_mode():
        std = model(input_ids=probe.to(device)).logits.float().std().item()
        model.model.norm.weight.mul_(LOGIT_STD / std)
    return model


def seconds(fn, cuda: bool):
    if cuda:
        torch.cuda.synchronize()
    start = time.perf_counter()
    result = fn()
    if cuda:
        torch.cuda.synchronize()
    return time.perf_counter() - start, result


def agreement(fast_dir: Path, ref_dir: Path, beta: float) -> tuple[int, int, float, float]:
    """(same completions, problems compared, max relative KL difference, Jaccard of kept steps)."""
    fast = {r["problem_id"]: r for r in pq.read_table(fast_dir / "trajectories.parquet").to_pylist()}
    ref = pq.read_table(ref_dir / "trajectories.parquet").to_pylist()
    same, rel, kept_f, kept_r = 0, 0.0, set(), set()
    for r in ref:
        f = fast[r["problem_id"]]
        kept_r |= {(r["problem_id"], t) for t, k in enumerate(r["step_kl"]) if k > beta}
        kept_f |= {(f["problem_id"], t) for t, k in enumerate(f["step_kl"]) if k > beta}
        if f["completion_token_ids"] == r["completion_token_ids"]:
            same += 1
            kf, kr = np.asarray(f["step_kl"]), np.asarray(r["step_kl"])
            rel = max(rel, float(np.max(np.abs(kf - kr) / np.maximum(kr, 1e-3))))
    union = kept_f | kept_r
    return same, len(ref), rel, (len(kept_f & kept_r) / len(union)) if union else 1.0


def train_seconds(cfg, pair: ModelPair, samples_dir: Path, steps: int, work: Path, device: torch.device) -> float:
    """Seconds per LoRA update of the training stage's trainer on ``samples_dir``, times 1,000."""
    from lightreasoner.samples import build_examples, load_samples
    from lightreasoner.trainer import fit_lora, lora_model

    samples = load_samples(samples_dir)
    examples = build_examples(samples.trajectories, "packed")
    tcfg = cfg.model_copy(deep=True)
    tcfg.training.max_steps = steps + 2
    tcfg.training.save_steps = steps + 10
    tcfg.training.batch_size = min(16, len(examples))
    tcfg.training.bf16 = device.type == "cuda"
    model = lora_model(pair.expert, tcfg.training)
    times: list[float] = []
    from transformers import TrainerCallback

    class StepClock(TrainerCallback):
        def on_step_begin(self, args, state, control, **kwargs):
            if device.type == "cuda":
                torch.cuda.synchronize()
            times.append(time.perf_counter())

    fit_lora(tcfg, model, examples, work, device, pair.tokenizer.pad_token_id, progress=False,
             callbacks=[StepClock()])
    if device.type == "cuda":
        torch.cuda.synchronize()
    times.append(time.perf_counter())
    timed = times[2:]  # the first two updates warm up
    return (timed[-1] - timed[0]) / max(len(timed) - 1, 1) * 1000


def peak_gib(cuda: bool) -> float:
    if cuda:
        return torch.cuda.max_memory_allocated() / 2**30
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # CPU: the process's peak RSS


def main(argv: list[str] | None = None) -> dict[str, float]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--problems", type=int, default=512, help="sampled problems (timings scaled to 1,000)")
    parser.add_argument("--tokens", type=int, default=128)
    parser.add_argument("--batch", default="auto", help="sampling and evaluation batch size, or auto")
    parser.add_argument("--compile", default="auto", choices=["auto", "true", "false"])
    parser.add_argument("--score-chunk", type=int, default=None, help="performance.score_chunk_tokens")
    parser.add_argument("--train-steps", type=int, default=40)
    parser.add_argument("--eval-problems", type=int, default=128)
    parser.add_argument("--eval-tokens", type=int, default=256)
    parser.add_argument("--tiny", action="store_true", help="tiny models and shapes on the CPU (smoke run)")
    args = parser.parse_args(argv)
    if args.tiny:
        device, dtype = torch.device("cpu"), torch.float32
        tokens, e_shape, a_shape = TINY_TOKENS, TINY, {**TINY, "num_hidden_layers": 1}
        args.problems, args.tokens, args.train_steps = min(args.problems, 6), min(args.tokens, 8), 2
        args.eval_problems, args.eval_tokens = min(args.eval_problems, 4), min(args.eval_tokens, 8)
    else:
        if not torch.cuda.is_available():
            raise SystemExit("benchmarks/gpu.py needs CUDA (--tiny runs a CPU smoke test)")
        device, dtype = torch.device("cuda"), torch.bfloat16
        tokens, e_shape, a_shape = QWEN_TOKENS, EXPERT_15B, AMATEUR_05B
    cuda = device.type == "cuda"
    sets = [f"sampling.max_new_tokens={args.tokens}", f"sampling.batch_size={args.batch}", "sampling.beta=auto:0.2",
            f"evaluation.batch_size={args.batch}", f"performance.compile={args.compile}", "training.layout=packed",
            "tracking.enabled=false"]
    if args.score_chunk:
        sets.append(f"performance.score_chunk_tokens={args.score_chunk}")
    cfg = load_config(None, sets)
    tok = WordTokenizer(tokens)
    probe = torch.randint(0, tokens, (4, 32), generator=torch.Generator().manual_seed(0))
    started = time.perf_counter()
    expert = build(e_shape, tok.eos_token_id, 0, device, dtype, probe)
    amateur = build(a_shape, tok.eos_token_id, 1, device, dtype, probe)
    pair = ModelPair(expert, amateur, tok, tokens, {"model": "random-qwen2.5-math-1.5b-shape"},
                     {"model": "random-qwen2.5-0.5b-shape"})
    problems = [Problem(p.problem_id, p.question, p.answer)
                for p in synthetic_problems("train", max(args.problems, 2), seed=0)][: args.problems]
    prompts = [prompt_token_ids(tok, p.question, cfg.prompt.system_prompt, False) for p in problems]
    compiled = resolve_compile(cfg.performance.compile, device)
    print(f"device={torch.cuda.get_device_name(0) if cuda else 'cpu'} dtype={str(dtype).split('.')[-1]} "
          f"compile={compiled} problems={len(problems)} max_new_tokens={args.tokens} "
          f"mean_prompt_tokens={np.mean([len(p) for p in prompts]):.0f} built_in={time.perf_counter() - started:.1f}s")

    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        # the batch size the stage picks (auto: from free memory), then a warm-up on the longest prompts that
        # meets every batch shape of the run: a full batch and the last, partial one (the static cache keeps
        # the longest length it has seen, so shorter prompts reuse it)
        (work / "plan" / SHARDS).mkdir(parents=True)
        batch = _batch_size(cfg, work / "plan", pair, prompts)
        fixed = cfg.model_copy(deep=True)
        fixed.sampling.batch_size = batch
        longest = sorted(range(len(problems)), key=lambda i: len(prompts[i]))[-(batch + len(problems) % batch):]
        t_warm, _ = seconds(lambda: sample(fixed, work / "warm", problems=[problems[i] for i in sorted(longest)],
                                           pair=pair, progress=False), cuda)
        if cuda:
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()
        t_sample, fast = seconds(lambda: sample(fixed, work / "fast", problems=problems, pair=pair, progress=False),
                                 cuda)
        peak = peak_gib(cuda)

        def bare() -> None:
            for members in plan_batches([len(p) for p in prompts], batch, True):
                generate_greedy(expert, tok, [prompts[i] for i in members], args.tokens, compile=compiled)

        t_bare, _ = seconds(bare, cuda)
        overhead = t_sample / t_bare - 1
        steps = fast.manifest["counts"]["steps"]
        print(f"sampling: {t_sample:.1f} s for {len(problems)} problems at batch {batch} "
              f"({t_sample / len(problems) * 1000:.1f} s per 1,000; warm-up and compiling {t_warm:.1f} s), "
              f"{steps} steps, kept {fast.manifest['counts']['selected']}, "
              f"argmax mismatches {fast.manifest['counts']['argmax_mismatch_steps']}, peak {peak:.2f} GiB")
        print(f"bare generation of the same batches: {t_bare:.1f} s; overhead {overhead:.3f}")

        ref_problems = problems[:2]
        t_ref, _ = seconds(lambda: sample(cfg, work / "ref", reference=True, problems=ref_problems, pair=pair,
                                          progress=False), cuda)
        ref_per_problem = t_ref / len(ref_problems)
        fast_per_problem = t_sample / len(problems)
        same, compared, rel, jaccard = agreement(work / "fast", work / "ref", fast.manifest["effective_beta"])
        print(f"reference: {ref_per_problem:.2f} s per problem; fast {fast_per_problem:.4f} s per problem; "
              f"speedup {ref_per_problem / fast_per_problem:.1f}x")
        print(f"fast vs reference ({str(dtype).split('.')[-1]}): same completions {same}/{compared}, "
              f"max relative KL difference {rel:.4f}, Jaccard of kept steps {jaccard:.3f}")

        eval_problems = [Problem(p.problem_id, p.question, p.answer)
                         for p in synthetic_problems("test", max(args.eval_problems, 2), seed=0)][: args.eval_problems]
        eval_prompts = [prompt_token_ids(tok, p.question, cfg.prompt.system_prompt, False) for p in eval_problems]
        from lightreasoner.models import auto_batch_size

        eval_batch = auto_batch_size(cfg.evaluation.batch_size, [expert],
                                     max(len(p) for p in eval_prompts) + args.eval_tokens,
                                     fraction=cfg.performance.memory_fraction)
        generate_completions(expert, tok, eval_prompts[:eval_batch], args.eval_tokens, eval_batch, compile=compiled)
        t_eval, outs = seconds(lambda: generate_completions(expert, tok, eval_prompts, args.eval_tokens, eval_batch,
                                                            compile=compiled), cuda)
        eval_rate = sum(len(o) for o in outs) / t_eval
        print(f"evaluation: {sum(len(o) for o in outs)} tokens in {t_eval:.1f} s at batch {eval_batch} "
              f"= {eval_rate:.0f} tokens/s")

        t_train = train_seconds(cfg, pair, work / "fast", args.train_steps, work / "train", device)
        print(f"training: {t_train / 1000:.3f} s per update over {args.train_steps} updates "
              f"(packed, batch {min(16, fast.manifest['counts']['problems'])}); 1,000 updates {t_train:.0f} s")
    result = {"sampling_s_per_1000": t_sample / len(problems) * 1000, "overhead": overhead,
              "eval_tokens_per_s": eval_rate, "train_s": t_train, "peak_gib": peak}
    print(" ".join(f"{k}={v:.3f}" if k == "overhead" else f"{k}={v:.1f}" if k != "peak_gib" else f"{k}={v:.2f}"
                   for k, v in result.items()))
    return result


if __name__ == "__main__":
    main()
