"""Stage 2: LoRA fine-tuning of the Expert on the contrastive soft labels.

At every kept step t of a trajectory the target is the sparse soft label (target ids, weights) and the
loss is KL(soft label || p_model) = sum_i w_i (log w_i - log p(i)), averaged over the kept steps
(:mod:`lightreasoner.loss`). The samples are read and laid out by :mod:`lightreasoner.samples` (packed, the
default: one sequence per trajectory; per-step, the paper's script: one per kept step; both give the same loss
and gradients) and trained by :mod:`lightreasoner.trainer`. This module is the stage: input checks, the output
folder, the held-out KL before and after, and the manifest.

Output (``keep these names``): ``adapter/`` (peft, safetensors), ``tokenizer/``, ``merged/`` (with
``merge=True``), ``checkpoints/``, and ``manifest.json`` written last.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from pathlib import Path
from typing import Any

import torch

from .config import Config
from .errors import LightReasonerError
from .loss import SoftLabelCollator, batch_loss
from .models import load_tokenizer, model_fingerprint, resolve_device, same_model, trainable_expert
from .outputs import MANIFEST, StageOutput, library_versions
from .samples import (
    SAMPLES,
    Samples,
    ShuffledSteps,
    Trajectory,
    build_examples,
    build_step_examples,
    check_vocabulary,
    load_samples,
    split_holdout,
)
from .stages import STAGES
from .storage import save_progress
from .trainer import (
    ADAPTER,
    CHECKPOINTS,
    MERGED,
    STATE,
    TOKENIZER,
    EpochOrderCallback,
    TrainResult,
    fit_lora,
    fit_summary,
    last_checkpoint,
    lora_model,
    save_outputs,
)

log = logging.getLogger(__name__)


# --- the held-out learning signal ------------------------------------------------------------------


@torch.no_grad()
def soft_label_kl(model, trajectories: list[Trajectory], pad: int, batch_size: int = 4) -> float | None:
    """Mean soft-label KL (the training loss, no dropout) over every kept step of ``trajectories``."""
    if not trajectories:
        return None
    was_training = model.training
    model.eval()
    collate = SoftLabelCollator(pad)
    examples = build_examples(trajectories, "packed")
    device = next(model.parameters()).device
    total, count = 0.0, 0
    try:
        for i in range(0, len(examples), batch_size):
            batch = {k: v.to(device) for k, v in collate(examples[i : i + batch_size]).items()}
            n = int(batch["positions"].shape[0])
            total += float(batch_loss(model, batch)) * n
            count += n
    finally:
        model.train(was_training)
    return total / count if count else None


# --- the stage -------------------------------------------------------------------------------------


def training_fingerprint(config: Config, samples_sha: dict[str, str]) -> str:
    digest = config.fingerprint(*STAGES["train"].sections)
    return hashlib.sha256(f"{digest}:{json.dumps(samples_sha, sort_keys=True)}".encode()).hexdigest()


def _prepare_output(out: Path, fingerprint: str, resume: bool) -> StageOutput:
    """The training folder (:class:`lightreasoner.outputs.StageOutput`): ``--resume`` continues this job's
    checkpoints; a finished run of the same job is returned as it is."""
    return StageOutput(out, stage="train", what="training", fingerprint=fingerprint, state=STATE, resume=resume,
                       has_work=lambda o: last_checkpoint(o / CHECKPOINTS) is not None, work_dirs=(CHECKPOINTS,),
                       overwrite_flag=None)


def _claim(output: StageOutput) -> None:
    """Create the output folder once every input check passed (a refused run leaves nothing behind)."""
    output.claim()
    save_progress(output.out / STATE)  # s3:// outputs: kept under the prefix with the checkpoints


def check_expert(config: Config, samples: Samples, model=None) -> dict[str, Any]:
    """The Expert must be the model the samples were drawn with; returns its fingerprint.

    Local weights compare by sha256 at once. A hub model's recorded revision is the commit it was loaded
    at, known only once it is loaded: before (``model`` None) only the id is compared, after, the id and
    the commit.
    """
    recorded = (samples.manifest.get("models") or {}).get("expert")
    if not isinstance(recorded, dict):
        raise LightReasonerError(f"{samples.folder / MANIFEST}: no models.expert fingerprint")
    current = model_fingerprint(config.expert, model)
    if model is None and not current.get("sha256") and not recorded.get("sha256"):
        same = recorded.get("model") == current.get("model")
    else:
        same = same_model(recorded, current)
    if not same:
        raise LightReasonerError(
            f"expert.model {config.expert.model}: not the Expert the samples in {samples.folder} were drawn with "
            f"({recorded.get('model')}, revision {recorded.get('revision')})"
        )
    return current


def update_stats(counters: dict[str, Any], samples_per_step: int | None) -> dict[str, Any]:
    """What the optimizer updates saw: their number, kept samples per update (mean, min, max), total."""
    updates = int(counters.get("updates") or 0)
    seen = int(counters.get("tuned_tokens") or 0)
    return {"samples_per_step": samples_per_step, "updates": updates, "kept_samples_seen": seen,
            "kept_samples_per_update": {"mean": seen / updates if updates else 0.0,
                                        "min": int(counters.get("update_samples_min") or 0),
                                        "max": int(counters.get("update_samples_max") or 0)}}


def heldout_summary(heldout: list[Trajectory], before: float | None, after: float | None) -> dict[str, Any]:
    drop = (before - after) / before if before and after is not None else None
    return {"problems": len(heldout), "kept_steps": sum(len(t.positions) for t in heldout),
            "problem_ids": sorted(t.problem_id for t in heldout), "kl_before": before, "kl_after": after,
            "kl_drop": drop}


def train(config: Config, samples_dir: str | Path, output_dir: str | Path, *, resume: bool = False,
          merge: bool = False, progress: bool = True, callbacks: list | None = None) -> TrainResult:
    """Stage 2. Trains LoRA adapters on the samples; writes adapter, tokenizer, (merged) and the manifest last.

    ``resume`` continues from the last checkpoint in ``output_dir/checkpoints`` (or starts when there is
    none); ``callbacks`` are extra ``TrainerCallback`` objects.
    """
    started = time.perf_counter()
    out = Path(output_dir)
    tcfg = config.training
    samples = load_samples(samples_dir)
    expert_info = check_expert(config, samples)
    fingerprint = training_fingerprint(config, samples.sha256)
    output = _prepare_output(out, fingerprint, resume)
    if output.finished is not None:
        log.info("%s: this training run is already complete", out)
        return TrainResult(out, output.finished)

    from transformers import set_seed

    device = resolve_device(config.expert.device)
    tokenizer = load_tokenizer(config.expert, "expert")
    model = trainable_expert(config, device)
    if not expert_info.get("sha256"):  # hub model: its commit is known now
        expert_info = check_expert(config, samples, model)
    rows = min(model.get_input_embeddings().weight.shape[0], model.get_output_embeddings().weight.shape[0])
    check_vocabulary(samples, rows)
    set_seed(tcfg.seed)
    model = lora_model(model, tcfg)
    train_set, heldout = split_holdout(samples.trajectories, tcfg.holdout_fraction, tcfg.seed)
    grouped = tcfg.samples_per_step is not None
    if grouped and tcfg.sample_order == "shuffled":
        examples = ShuffledSteps(train_set, tcfg.layout, tcfg.samples_per_step, tcfg.gradient_accumulation_steps,
                                 tcfg.seed)
        callbacks = [*(callbacks or []), EpochOrderCallback(examples)]
    elif grouped:
        examples = build_step_examples(train_set, tcfg.layout, tcfg.samples_per_step, tcfg.gradient_accumulation_steps)
    else:
        examples = build_examples(train_set, tcfg.layout)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    _claim(output)

    train_steps = sum(len(t.positions) for t in train_set)
    log.info("training on %d kept steps in %d trajectories (%s layout, %d %s; %d held-out problems)", train_steps,
             len(train_set), tcfg.layout, len(examples), "forward passes per epoch" if grouped else "sequences",
             len(heldout))
    kl_before = soft_label_kl(model, heldout, pad, tcfg.batch_size)
    fit = fit_lora(config, model, examples, out, device, pad, resume=resume, progress=progress, callbacks=callbacks,
                   grouped=grouped)
    trainer = fit.trainer
    kl_after = soft_label_kl(model, heldout, pad, tcfg.batch_size)
    save_outputs(model, tokenizer, out, merge)

    manifest = {
        "stage": "train",
        "fingerprint": fingerprint,
        "config": config.dump(),
        "layout": tcfg.layout,
        "sample_order": tcfg.sample_order if grouped else None,
        "expert": expert_info,
        "samples": {"path": str(samples.folder), "sha256": samples.sha256,
                    "fingerprint": samples.manifest.get("fingerprint")},
        "samples_sha256": samples.sha256[SAMPLES],
        "counts": {"trajectories": len(train_set), "kept_steps": train_steps,
                   "sequences_per_epoch": sum(len(e.get("group", [e])) for e in examples),
                   "heldout_problems": len(heldout), "heldout_kept_steps": sum(len(t.positions) for t in heldout)},
        "schedule": update_stats(trainer.counters, tcfg.samples_per_step),
        "heldout": heldout_summary(heldout, kl_before, kl_after),
        **fit_summary(fit),
        "wall_seconds": time.perf_counter() - started,
        "outputs": {"adapter": ADAPTER, "tokenizer": TOKENIZER, "merged": MERGED if merge else None,
                    "checkpoints": CHECKPOINTS},
        "versions": library_versions("peft"),
    }
    output.finish(manifest)
    return TrainResult(out, manifest)
