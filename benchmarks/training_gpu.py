"""GPU check for stage 2: a random-weight model shaped like Qwen2.5-1.5B (built from its config, nothing
downloaded), 50 packed LoRA steps in bf16 on synthetic samples through the stage's Trainer.

Prints steps/s, tuned positions/s and peak GPU memory. Needs CUDA.

    python benchmarks/training_gpu.py [--steps 50] [--batch-size 4] [--length 640] [--kept 0.2]
"""

from __future__ import annotations

import argparse
import random
import tempfile
import time

import torch

from lightreasoner.config import load_config
from lightreasoner.loss import SoftLabelCollator
from lightreasoner.samples import Trajectory, build_examples
from lightreasoner.trainer import LossHistoryCallback, SoftLabelTrainer, lora_model, training_arguments

QWEN25_15B = dict(vocab_size=151936, hidden_size=1536, intermediate_size=8960, num_hidden_layers=28,
                  num_attention_heads=12, num_key_value_heads=2, max_position_embeddings=32768,
                  rope_theta=1000000.0, rms_norm_eps=1e-6, tie_word_embeddings=True)


def synthetic(n: int, prompt_len: int, completion_len: int, kept: float, vocab: int, seed: int = 0):
    rng = random.Random(seed)
    out = []
    for i in range(n):
        prompt = [rng.randrange(vocab) for _ in range(prompt_len)]
        completion = [rng.randrange(vocab) for _ in range(completion_len)]
        positions = sorted(rng.sample(range(completion_len), max(1, int(kept * completion_len))))
        ids, weights = [], []
        for _ in positions:
            k = rng.randint(1, 4)
            raw = [rng.random() + 0.1 for _ in range(k)]
            ids.append(rng.sample(range(vocab), k))
            weights.append([r / sum(raw) for r in raw])
        out.append(Trajectory(f"p{i}", prompt, completion, positions, ids, weights))
    return out


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--length", type=int, default=640, help="prompt (128) + completion tokens")
    parser.add_argument("--kept", type=float, default=0.2, help="fraction of completion steps kept")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("needs CUDA")
    from transformers import AutoModelForCausalLM, PrinterCallback, Qwen2Config

    torch.manual_seed(0)
    cfg = load_config(None, [f"training.max_steps={args.steps}", f"training.batch_size={args.batch_size}",
                             "training.save_steps=100000", "training.bf16=true"])
    model = AutoModelForCausalLM.from_config(Qwen2Config(**QWEN25_15B), dtype=torch.bfloat16).cuda()
    model = lora_model(model, cfg.training)
    n = args.steps * args.batch_size
    examples = build_examples(synthetic(n, 128, args.length - 128, args.kept, QWEN25_15B["vocab_size"]), "packed")
    history = LossHistoryCallback()
    with tempfile.TemporaryDirectory() as tmp:
        trainer = SoftLabelTrainer(model=model, args=training_arguments(cfg, tmp, torch.device("cuda"), False),
                                   train_dataset=examples, data_collator=SoftLabelCollator(0), callbacks=[history])
        trainer.remove_callback(PrinterCallback)
        torch.cuda.reset_peak_memory_stats()
        torch.cuda.synchronize()
        start = time.perf_counter()
        trainer.train()
        torch.cuda.synchronize()
        seconds = time.perf_counter() - start
    steps = trainer.state.global_step
    tuned = trainer.counters["tuned_tokens"]
    print(f"model=qwen2.5-1.5b-shaped(random) bf16 steps={steps} batch={args.batch_size} length={args.length} "
          f"tuned_positions={tuned} first_loss={history.history[0]['loss']:.4f} "
          f"final_loss={history.history[-1]['loss']:.4f}")
    print(f"steps_per_s={steps / seconds:.3f} tuned_positions_per_s={tuned / seconds:.1f} "
          f"peak_memory_gib={torch.cuda.max_memory_allocated() / 2**30:.2f}")


if __name__ == "__main__":
    main()
