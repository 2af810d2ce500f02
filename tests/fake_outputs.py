"""Hand-made stage output folders (the contracts of sampling, training and evaluation), no models needed."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from lightreasoner.config import load_config
from lightreasoner.outputs import folder_sha256
from lightreasoner.registry import mcnemar_exact


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def make_config(tracking_uri: str | None, experiment: str = "lightreasoner-test", model_name: str = "lr-test",
                extra: list[str] | None = None):
    sets = [f"tracking.experiment={experiment}", f"registry.model_name={model_name}", "data.limit=4"]
    if tracking_uri:
        sets.append(f"tracking.tracking_uri={tracking_uri}")
    return load_config(None, sets + (extra or []))


def make_samples(folder: Path, config, *, extra_manifest: dict | None = None) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    kls = [[0.01, 0.5, 0.9, 0.02], [0.3, 0.05, 1.2], [0.7, 0.8, 0.01, 0.02, 0.6]]
    beta = 0.4
    pq.write_table(pa.Table.from_pylist([
        {"problem_id": f"p{i}", "prompt_token_ids": [1, 2], "completion_token_ids": list(range(len(k))),
         "num_selected": sum(x > beta for x in k), "step_kl": k} for i, k in enumerate(kls)
    ]), folder / "trajectories.parquet")
    rows = [{"problem_id": f"p{i}", "position": j, "kl": x, "target_token_ids": [5, 6], "target_weights": [0.7, 0.3]}
            for i, k in enumerate(kls) for j, x in enumerate(k) if x > beta]
    pq.write_table(pa.Table.from_pylist(rows), folder / "samples.parquet")
    steps = sum(len(k) for k in kls)
    flat = sorted(x for k in kls for x in k)
    manifest = {
        "stage": "sample", "fingerprint": "f" * 64, "mode": "fast", "config": config.dump(), "effective_beta": beta,
        "models": {"expert": {"model": config.expert.model, "sha256": "e" * 64}, "amateur": {"model": "amateur"}},
        "counts": {"problems": len(kls), "steps": steps, "selected": len(rows), "kept_fraction": len(rows) / steps,
                   "mean_kl": sum(flat) / steps, "median_kl": flat[steps // 2]},
        "timing": {"sampling_seconds": 2.0, "problems_per_second": 1.5},
        "sha256": {"trajectories.parquet": sha256(folder / "trajectories.parquet"),
                   "samples.parquet": sha256(folder / "samples.parquet")},
        **(extra_manifest or {}),
    }
    (folder / "manifest.json").write_text(json.dumps(manifest))
    return folder


def write_lora_weights(path: Path, rank: int = 8, hidden: int = 64, layers: int = 2) -> Path:
    """A real (random) peft LoRA safetensors file for q_proj/v_proj of a tiny model."""
    import torch
    from safetensors.torch import save_file

    gen = torch.Generator().manual_seed(int.from_bytes(os.urandom(4), "little"))
    tensors = {}
    for layer in range(layers):
        for module in ("q_proj", "v_proj"):
            stem = f"base_model.model.model.layers.{layer}.self_attn.{module}"
            tensors[f"{stem}.lora_A.weight"] = torch.randn(rank, hidden, generator=gen)
            tensors[f"{stem}.lora_B.weight"] = torch.randn(hidden, rank, generator=gen)
    save_file(tensors, str(path))
    return path


def make_training(folder: Path, config, samples: Path | None = None, *, extra_manifest: dict | None = None) -> Path:
    (folder / "adapter").mkdir(parents=True, exist_ok=True)
    (folder / "tokenizer").mkdir(exist_ok=True)
    (folder / "adapter" / "adapter_config.json").write_text(json.dumps({
        "peft_type": "LORA", "r": 8, "lora_alpha": 16, "target_modules": ["q_proj", "v_proj"],
        "base_model_name_or_path": config.expert.model, "task_type": "CAUSAL_LM"}))
    write_lora_weights(folder / "adapter" / "adapter_model.safetensors", rank=8)
    (folder / "tokenizer" / "tokenizer.json").write_text("{}")
    samples_sha = sha256(samples / "samples.parquet") if samples else "s" * 64
    manifest = {
        "stage": "train", "config": config.dump(), "expert": {"model": config.expert.model, "sha256": "e" * 64},
        "samples_sha256": samples_sha, "tuned_tokens": 321, "steps": 3, "final_loss": 0.5,
        **({"samples": {"path": str(samples), "sha256": {"samples.parquet": samples_sha}}} if samples else {}),
        "loss_history": [{"step": 1, "loss": 1.5}, {"step": 2, "loss": 0.9}, {"step": 3, "loss": 0.5}],
        "wall_seconds": 12.5, **(extra_manifest or {}),
    }
    (folder / "manifest.json").write_text(json.dumps(manifest))
    return folder


def make_evaluation(folder: Path, config, base: list[bool], tuned: list[bool], *, with_png: bool = False,
                    training: Path | None = None, protocol: dict | None = None) -> Path:
    """``training``: the training folder whose adapter this evaluation scored (its sha256 is recorded);
    ``protocol``: the evaluation protocol recorded in metrics.json (none by default, as before protocols)."""
    folder.mkdir(parents=True, exist_ok=True)
    ids = [f"q{i:03d}" for i in range(len(base))]
    for name, correct in (("base", base), ("tuned", tuned)):
        pq.write_table(pa.Table.from_pylist([
            {"problem_id": i, "output": "x", "extracted": "1", "gold": "1", "correct": c, "tokens_generated": 3}
            for i, c in zip(ids, correct, strict=True)]), folder / f"predictions_{name}.parquet")
    pq.write_table(pa.Table.from_pylist([{"problem_id": i, "question": f"What is {n}?"} for n, i in enumerate(ids)]),
                   folder / "questions.parquet")
    n = len(base)
    b_only = sum(b and not t for b, t in zip(base, tuned, strict=True))
    t_only = sum(t and not b for b, t in zip(base, tuned, strict=True))
    delta = (sum(tuned) - sum(base)) / n
    metrics = {"n": n, "accuracy_base": sum(base) / n, "accuracy_tuned": sum(tuned) / n, "delta": delta,
               "delta_ci_low": delta - 0.05, "delta_ci_high": delta + 0.05, "mcnemar_p": mcnemar_exact(b_only, t_only),
               "correct_base": sum(base), "correct_tuned": sum(tuned),
               "data": {"path": "synthetic", "split": "test", "limit": n},
               "expert": {"model": config.expert.model}, "adapter": "train-out",
               "adapter_sha256": folder_sha256(training / "adapter") if training else None}
    if protocol is not None:
        metrics["protocol"] = protocol
    (folder / "metrics.json").write_text(json.dumps(metrics))
    (folder / "manifest.json").write_text(json.dumps({"stage": "evaluate", "config": config.dump()}))
    if with_png:
        (folder / "accuracy.png").write_bytes(b"\x89PNG fake")
    return folder
