"""Stage 2: LoRA fine-tuning of the Expert on the contrastive soft labels.

At every kept step t of a trajectory the target is the sparse soft label (target ids, weights) and the
loss is KL(soft label || p_model) = sum_i w_i (log w_i - log p(i)), averaged over the kept steps.

Packed layout (default): each trajectory is ONE sequence, ``prompt_token_ids + completion_token_ids`` (the
exact tokens the Expert produced, cut after the last kept step), and the loss is taken at all its kept
positions in one forward/backward pass. The logit that predicts completion token ``position`` sits at
sequence index ``len(prompt) + position - 1``. Per-step layout (the paper's script): one sequence per
kept step, ``prompt + completion[:position]``, loss at its last position. Both give the same loss and the
same gradients; packed costs one pass per trajectory instead of one per kept step.

Batches are padded on the RIGHT: real tokens keep their unpadded indices, position ids are 0..n-1 as in
an unpadded forward, and no query row is fully masked. Only the needed positions go through the LM head
(``logits_to_keep``).

Output (``keep these names``): ``adapter/`` (peft, safetensors), ``tokenizer/``, ``merged/`` (with
``merge=True``), ``checkpoints/``, and ``manifest.json`` written last.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from .config import Config
from .errors import LightReasonerError
from .loss import SoftLabelCollator, batch_loss
from .models import load_tokenizer, model_fingerprint, resolve_device, same_model, trainable_expert
from .outputs import (
    MANIFEST,
    claim_output,
    library_versions,
    prepare_output,
    write_json_atomic,
    writing,
)
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
from .storage import prune_progress, save_progress

log = logging.getLogger(__name__)

ADAPTER = "adapter"
TOKENIZER = "tokenizer"
MERGED = "merged"
CHECKPOINTS = "checkpoints"
STATE = "train-state.json"  # fingerprint of the job, so that --resume refuses a different one
COUNTERS = "lightreasoner-counters.json"  # written into every checkpoint


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


# --- LoRA and the trainer --------------------------------------------------------------------------


class TrainingDiverged(LightReasonerError):
    """A non-finite loss, gradient norm or weight: training stops, and its work in progress is discarded."""


def diverged(what: str, value: float, update: int, args) -> TrainingDiverged:
    """The one-line error of a diverged run, naming the update and the likely setting."""
    hint = f"lower training.learning_rate (now {args.learning_rate:g})"
    if not args.max_grad_norm:
        hint += " or clip gradients with training.max_grad_norm (now 0: off)"
    return TrainingDiverged(f"training diverged at update {update}: the {what} is {value} (not finite); {hint}; "
                            "nothing was kept")


def check_finite_weights(model, update: int, args) -> None:
    """Every trainable weight is finite (the update that produced them may have had a finite loss)."""
    for name, param in model.named_parameters():
        if param.requires_grad and not bool(torch.isfinite(param.detach()).all()):
            raise diverged(f"weight {name}", float("nan"), update, args)


def lora_model(model, tcfg, dropout: float | None = None):
    """Wrap ``model`` with LoRA adapters per the training config; base weights are frozen."""
    from peft import LoraConfig, get_peft_model

    names = {name.rsplit(".", 1)[-1] for name, _ in model.named_modules()}
    missing = [m for m in tcfg.target_modules if m not in names]
    if missing:
        raise LightReasonerError(f"training.target_modules: {', '.join(missing)} not found in the Expert")
    cfg = LoraConfig(
        r=tcfg.lora_r,
        lora_alpha=tcfg.lora_alpha,
        lora_dropout=tcfg.lora_dropout if dropout is None else dropout,
        target_modules=list(tcfg.target_modules),
        bias="none",
        task_type="CAUSAL_LM",
    )
    return get_peft_model(model, cfg)


def trainer_classes():
    """Trainer subclass and callbacks, built on first use so that importing this module stays light."""
    from transformers import Trainer, TrainerCallback

    class SoftLabelTrainer(Trainer):
        """transformers' Trainer with the soft-label KL loss and token counters."""

        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            self.loss_is_scaled_for_ga = False  # per-batch mean: the Trainer divides by the accumulation
            self.counters = {"tuned_tokens": 0, "input_tokens": 0, "padded_tokens": 0, "sequences": 0,
                             "updates": 0, "update_samples_min": None, "update_samples_max": 0,
                             "tuned_at_last_update": 0}

        def _save_checkpoint(self, model, trial):
            """A checkpoint is complete once its counters file (written atomically, last) exists; older
            checkpoints are rotated out only after that, so a kill inside a save never loses the last
            complete one."""
            limit = self.args.save_total_limit
            self.args.save_total_limit = None
            run_dir = Path(self._get_output_dir(trial=trial))
            checkpoint = run_dir / f"checkpoint-{self.state.global_step}"
            try:
                with writing(checkpoint):  # disk full (safetensors, torch.save, json): one line
                    super()._save_checkpoint(model, trial)
                    write_json_atomic(self.counters, checkpoint / COUNTERS)
            except LightReasonerError:
                shutil.rmtree(checkpoint, ignore_errors=True)  # its space back; the last complete one stays
                raise
            finally:
                self.args.save_total_limit = limit
            if limit:
                from transformers.trainer_utils import rotate_checkpoints

                rotate_checkpoints(output_dir=str(run_dir), save_total_limit=limit,
                                   best_model_checkpoint=self.state.best_model_checkpoint, use_mtime=False)
            # s3:// outputs: the complete checkpoint under the prefix (its counters file last), the rotated gone
            save_progress(run_dir / f"checkpoint-{self.state.global_step}", last=COUNTERS)
            prune_progress(run_dir)

        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            loss = batch_loss(model, inputs)
            if model.training:
                if not bool(torch.isfinite(loss.detach())):
                    raise diverged("loss", float(loss.detach()), self.state.global_step + 1, self.args)
                c = self.counters
                c["tuned_tokens"] += int(inputs["positions"].shape[0])
                c["input_tokens"] += int(inputs["attention_mask"].sum())
                c["padded_tokens"] += int(inputs["input_ids"].numel())
                c["sequences"] += int(inputs["input_ids"].shape[0])
            return (loss, None) if return_outputs else loss

    class LossHistoryCallback(TrainerCallback):
        """Records {step, loss} at every logging step; after a resume the restored log is included."""

        def __init__(self):
            self.history: list[dict[str, float]] = []

        def on_log(self, args, state, control, logs=None, **kwargs):
            if logs and "loss" in logs:
                self.history.append({"step": int(state.global_step), "loss": float(logs["loss"])})

        def on_train_end(self, args, state, control, **kwargs):
            self.history = [{"step": int(e["step"]), "loss": float(e["loss"])}
                            for e in state.log_history if "loss" in e and "step" in e]

    class UpdateStatsCallback(TrainerCallback):
        """Kept samples of every optimizer update (count, min, max), kept in the trainer's counters."""

        def __init__(self, trainer_ref: list):
            self.trainer_ref = trainer_ref

        def on_step_end(self, args, state, control, **kwargs):
            c = self.trainer_ref[0].counters
            n = c["tuned_tokens"] - c.get("tuned_at_last_update", 0)
            c["updates"] = c.get("updates", 0) + 1
            low = c.get("update_samples_min")
            c["update_samples_min"] = n if low is None else min(low, n)
            c["update_samples_max"] = max(c.get("update_samples_max", 0), n)
            c["tuned_at_last_update"] = c["tuned_tokens"]

    class FiniteGradientsCallback(TrainerCallback):
        """Before every optimizer step: the gradient norm (after clipping, which turns an infinite norm
        into nan gradients) must be finite, else the run stops (:func:`diverged`)."""

        def on_pre_optimizer_step(self, args, state, control, model=None, **kwargs):
            grads = [p.grad.detach() for p in model.parameters() if p.grad is not None] if model is not None else []
            if grads:
                norm = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g.float()) for g in grads]))
                if not bool(torch.isfinite(norm)):
                    raise diverged("gradient norm", float(norm), state.global_step + 1, args)

    SoftLabelTrainer.FiniteGradientsCallback = FiniteGradientsCallback

    class CountersCallback(TrainerCallback):
        """Saves the trainer's token counters into each checkpoint (restored on resume)."""

        def __init__(self, trainer_ref: list):
            self.trainer_ref = trainer_ref

        def on_save(self, args, state, control, **kwargs):
            folder = Path(args.output_dir) / f"checkpoint-{state.global_step}"
            if folder.is_dir() and not (folder / COUNTERS).is_file():
                write_json_atomic(self.trainer_ref[0].counters, folder / COUNTERS)

    SoftLabelTrainer.UpdateStatsCallback = UpdateStatsCallback
    return SoftLabelTrainer, LossHistoryCallback, CountersCallback


def _json_file(path: Path) -> dict | None:
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return None
    return data if isinstance(data, dict) else None


def checkpoint_complete(folder: Path) -> bool:
    """Written to the end: the counters file (the last one written) and the trainer state both parse."""
    return _json_file(folder / COUNTERS) is not None and _json_file(folder / "trainer_state.json") is not None


def last_checkpoint(folder: Path) -> Path | None:
    """The complete checkpoint with the highest step (one a kill interrupted is skipped)."""
    found = []
    for p in folder.glob("checkpoint-*") if folder.is_dir() else []:
        suffix = p.name.split("-", 1)[1]
        if suffix.isdigit() and checkpoint_complete(p):
            found.append((int(suffix), p))
    return max(found)[1] if found else None


def _drop_incomplete_checkpoints(folder: Path) -> None:
    for p in folder.glob("checkpoint-*") if folder.is_dir() else []:
        if p.is_dir() and not checkpoint_complete(p):
            log.warning("%s: incomplete checkpoint (interrupted save), removed", p)
            shutil.rmtree(p, ignore_errors=True)


def _restore_final(trainer, model, checkpoint: Path, history) -> bool:
    """Resuming from a checkpoint that already reached the planned number of steps: load its weights and
    state instead of training (the Trainer would take one more step). True when that was the case."""
    from transformers import TrainerState

    state = TrainerState.load_from_json(str(checkpoint / "trainer_state.json"))
    if not (state.max_steps and state.max_steps > 0 and state.global_step >= state.max_steps):
        return False
    from peft import set_peft_model_state_dict
    from safetensors.torch import load_file

    weights = checkpoint / "adapter_model.safetensors"
    if not weights.is_file():
        return False
    set_peft_model_state_dict(model, load_file(str(weights)))
    trainer.state = state
    history.history = [{"step": int(e["step"]), "loss": float(e["loss"])}
                       for e in state.log_history if "loss" in e and "step" in e]
    log.info("%s: training had already reached step %d, nothing left to train", checkpoint, state.global_step)
    return True


def training_arguments(config: Config, output_dir: Path, device: torch.device, progress: bool,
                       grouped: bool = False):
    """``grouped``: the dataset items are the kept-samples schedule's groups (one per forward pass)."""
    from transformers import TrainingArguments

    t = config.training
    bf16 = (device.type == "cuda" and torch.cuda.is_bf16_supported()) if t.bf16 == "auto" else bool(t.bf16)
    return TrainingArguments(
        output_dir=str(output_dir),
        per_device_train_batch_size=1 if grouped else t.batch_size,
        gradient_accumulation_steps=t.gradient_accumulation_steps,
        learning_rate=t.learning_rate,
        num_train_epochs=t.epochs,
        max_steps=t.max_steps if t.max_steps > 0 else -1,
        warmup_steps=t.warmup_ratio,  # a float in [0, 1): fraction of the total steps
        weight_decay=t.weight_decay,
        max_grad_norm=t.max_grad_norm,
        lr_scheduler_type=t.lr_scheduler,
        seed=t.seed,
        data_seed=t.seed,
        bf16=bf16,
        logging_strategy="steps",
        logging_steps=t.logging_steps,
        save_strategy="steps",
        save_steps=t.save_steps,
        save_total_limit=t.save_total_limit,
        report_to="none",
        remove_unused_columns=False,
        label_names=[],
        disable_tqdm=not progress,
        dataloader_num_workers=0,
        dataloader_pin_memory=device.type == "cuda",
        use_cpu=device.type == "cpu",
    )


# --- the stage -------------------------------------------------------------------------------------


@dataclass
class TrainResult:
    output: Path
    manifest: dict[str, Any]

    @property
    def adapter(self) -> Path:
        return self.output / ADAPTER


def training_fingerprint(config: Config, samples_sha: dict[str, str]) -> str:
    digest = config.fingerprint("expert", "training")
    return hashlib.sha256(f"{digest}:{json.dumps(samples_sha, sort_keys=True)}".encode()).hexdigest()


def _prepare_output(out: Path, fingerprint: str, resume: bool):
    """The output-folder rule (:func:`lightreasoner.outputs.prepare_output`) for training: ``--resume``
    continues this job's checkpoints; a finished run of the same job is returned as it is."""
    return prepare_output(out, stage="train", what="training", fingerprint=fingerprint, state=STATE, resume=resume,
                          has_work=lambda o: last_checkpoint(o / CHECKPOINTS) is not None, work_dirs=(CHECKPOINTS,),
                          overwrite_flag=None)


def _claim_output(claim, fingerprint: str) -> None:
    """Create the output folder once every input check passed (a refused run leaves nothing behind)."""
    claim_output(claim, fingerprint=fingerprint, state=STATE)
    save_progress(claim.out / STATE)  # s3:// outputs: kept under the prefix with the checkpoints


def _replace_dir(tmp: Path, final: Path) -> None:
    if final.exists():
        shutil.rmtree(final)
    tmp.replace(final)


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


@dataclass
class Fit:
    trainer: Any
    history: Any
    resumed_from: Path | None
    train_seconds: float


def fit_summary(fit: Fit) -> dict[str, Any]:
    """What a training manifest records about the fit itself (stage 2 and the SFT baseline alike): tokens
    tuned and processed, optimizer steps, epochs, the loss history, the checkpoint resumed from, seconds."""
    trainer, losses = fit.trainer, fit.history.history
    return {
        "tuned_tokens": trainer.counters["tuned_tokens"],
        "tokens_processed": {k: trainer.counters[k] for k in ("input_tokens", "padded_tokens", "sequences")},
        "steps": int(trainer.state.global_step),
        "epochs": float(trainer.state.epoch or 0.0),
        "final_loss": losses[-1]["loss"] if losses else None,
        "loss_history": losses,
        "resumed_from": fit.resumed_from.name if fit.resumed_from else None,
        "train_seconds": fit.train_seconds,
    }


def fit_lora(config: Config, model, examples: list[dict[str, Any]], out: Path, device: torch.device, pad: int, *,
             resume: bool = False, progress: bool = True, callbacks: list | None = None, grouped: bool = False) -> Fit:
    """Train a LoRA-wrapped ``model`` on collated examples (see :func:`build_examples`) with the soft-label
    trainer; checkpoints go to ``out/checkpoints``. Shared by stage 2 and the SFT baseline. ``grouped``: the
    examples are :func:`build_step_examples` items (one per forward pass)."""
    from transformers import PrinterCallback

    SoftLabelTrainer, LossHistoryCallback, CountersCallback = trainer_classes()
    checkpoints = out / CHECKPOINTS
    history = LossHistoryCallback()
    ref: list = []
    trainer = SoftLabelTrainer(
        model=model,
        args=training_arguments(config, checkpoints, device, progress, grouped=grouped),
        train_dataset=examples,
        data_collator=SoftLabelCollator(pad),
        callbacks=[history, SoftLabelTrainer.UpdateStatsCallback(ref), CountersCallback(ref),
                   SoftLabelTrainer.FiniteGradientsCallback(), *(callbacks or [])],
    )
    ref.append(trainer)
    if not progress:
        trainer.remove_callback(PrinterCallback)
    if resume:
        _drop_incomplete_checkpoints(checkpoints)
    resume_from = last_checkpoint(checkpoints) if resume else None
    if resume and resume_from is None:
        log.info("%s: no checkpoint to resume from, starting from the beginning", checkpoints)
    if resume_from is not None:
        trainer.counters.update(_json_file(resume_from / COUNTERS) or {})
    t0 = time.perf_counter()
    try:
        if resume_from is None or not _restore_final(trainer, model, resume_from, history):
            trainer.train(resume_from_checkpoint=str(resume_from) if resume_from else None)
        check_finite_weights(model, int(trainer.state.global_step), trainer.args)
    except TrainingDiverged:
        discard_work(out)  # checkpoints of a diverged run: nothing to resume, nothing to register
        raise
    return Fit(trainer, history, resume_from, time.perf_counter() - t0)


def discard_work(out: Path) -> None:
    """Remove a training's work in progress (its state file, checkpoints, half-saved folders), here and,
    for an s3:// output, under ``_work/``: a corrected rerun finds nothing in its way."""
    for name in (CHECKPOINTS, STATE, *(d + ".tmp" for d in (ADAPTER, TOKENIZER, MERGED))):
        path = out / name
        if path.is_dir():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)
    prune_progress(out)


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


def save_outputs(model, tokenizer, out: Path, merge: bool = False) -> None:
    """``adapter/``, ``tokenizer/`` (and ``merged/``), each written to a temporary folder and renamed."""
    with writing(out):
        _save_outputs(model, tokenizer, out, merge)


def _save_outputs(model, tokenizer, out: Path, merge: bool) -> None:
    tmp = out / (ADAPTER + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp, safe_serialization=True)
    _replace_dir(tmp, out / ADAPTER)
    tmp = out / (TOKENIZER + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tokenizer.save_pretrained(tmp)
    _replace_dir(tmp, out / TOKENIZER)
    if merge:
        tmp = out / (MERGED + ".tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        merged = model.merge_and_unload()
        merged.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        _replace_dir(tmp, out / MERGED)


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
    claim = _prepare_output(out, fingerprint, resume)
    if claim.finished is not None:
        log.info("%s: this training run is already complete", out)
        return TrainResult(out, claim.finished)

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
        callbacks = [*(callbacks or []), examples.callback()]
    elif grouped:
        examples = build_step_examples(train_set, tcfg.layout, tcfg.samples_per_step, tcfg.gradient_accumulation_steps)
    else:
        examples = build_examples(train_set, tcfg.layout)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    _claim_output(claim, fingerprint)

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
    write_json_atomic(manifest, out / MANIFEST)
    return TrainResult(out, manifest)
