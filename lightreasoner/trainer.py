"""The LoRA trainer shared by stage 2 and the SFT baseline: LoRA set-up, a Trainer with the soft-label loss,
its callbacks, checkpoints that a kill never leaves half-written, and the adapter/tokenizer outputs.

The training counters (tokens tuned and processed, kept samples per update) are one :class:`TrainingCounters`
object, their one writer, kept in transformers' ``TrainerState``: every checkpoint's ``trainer_state.json``
holds them and a resumed run gets them back from it. A checkpoint is complete once its marker (``COMPLETE``,
written last, by :class:`SoftLabelTrainer` alone) and the Trainer's state both parse; ``--resume`` continues
from the last complete one. A non-finite loss, gradient norm or weight stops the run
(:class:`TrainingDiverged`) and discards its work in progress.
"""

from __future__ import annotations

import json
import logging
import math
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from transformers import Trainer, TrainerCallback
from transformers.trainer_callback import ExportableState

from .config import Config
from .errors import LightReasonerError
from .loss import SoftLabelCollator, batch_loss
from .outputs import write_json_atomic, writing
from .samples import ShuffledSteps
from .storage import prune_progress, save_progress

log = logging.getLogger(__name__)

ADAPTER = "adapter"
TOKENIZER = "tokenizer"
MERGED = "merged"
CHECKPOINTS = "checkpoints"
STATE = "train-state.json"  # fingerprint of the job, so that --resume refuses a different one
# written last into every checkpoint: it is complete (the name is from when it held the counters, which are
# in trainer_state.json now; kept so that checkpoints written before still count as complete)
COMPLETE = "lightreasoner-counters.json"


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


class TrainingCounters(TrainerCallback, ExportableState):
    """The training counters and their one writer: tokens tuned (kept samples), input and padded tokens and
    sequences of the training batches (:meth:`count_batch`, called by :meth:`SoftLabelTrainer.compute_loss`),
    and the kept samples of every optimizer update (count, min, max; :meth:`on_step_end`).

    As an ``ExportableState`` they are part of transformers' ``TrainerState``: the Trainer writes
    :meth:`state` into every checkpoint's ``trainer_state.json`` (``stateful_callbacks``) and, resuming from
    a checkpoint, puts a ``TrainingCounters`` rebuilt from it in this one's place."""

    FIELDS = ("tuned_tokens", "input_tokens", "padded_tokens", "sequences", "updates", "update_samples_min",
              "update_samples_max", "tuned_at_last_update")

    def __init__(self):
        self.tuned_tokens = self.input_tokens = self.padded_tokens = self.sequences = 0
        self.updates = self.update_samples_max = self.tuned_at_last_update = 0
        self.update_samples_min: int | None = None

    def count_batch(self, inputs: dict[str, Any]) -> None:
        """One training batch (a :class:`lightreasoner.loss.SoftLabelCollator` batch)."""
        self.tuned_tokens += int(inputs["positions"].shape[0])
        self.input_tokens += int(inputs["attention_mask"].sum())
        self.padded_tokens += int(inputs["input_ids"].numel())
        self.sequences += int(inputs["input_ids"].shape[0])

    def on_step_end(self, args, state, control, **kwargs):
        n = self.tuned_tokens - self.tuned_at_last_update
        self.updates += 1
        self.update_samples_min = n if self.update_samples_min is None else min(self.update_samples_min, n)
        self.update_samples_max = max(self.update_samples_max, n)
        self.tuned_at_last_update = self.tuned_tokens

    def as_dict(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in self.FIELDS}

    def state(self) -> dict:
        return {"args": {}, "attributes": self.as_dict()}


class FiniteGradientsCallback(TrainerCallback):
    """Before every optimizer step: the gradient norm (after clipping, which turns an infinite norm
    into nan gradients) must be finite, else the run stops (:func:`diverged`)."""

    def on_pre_optimizer_step(self, args, state, control, model=None, **kwargs):
        grads = [p.grad.detach() for p in model.parameters() if p.grad is not None] if model is not None else []
        if grads:
            norm = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g.float()) for g in grads]))
            if not bool(torch.isfinite(norm)):
                raise diverged("gradient norm", float(norm), state.global_step + 1, args)


class EpochOrderCallback(TrainerCallback):
    """Moves a :class:`lightreasoner.samples.ShuffledSteps` to the epoch the Trainer is starting (from its state:
    a resumed run starts inside the epoch it stopped in)."""

    def __init__(self, steps: ShuffledSteps):
        self.steps = steps

    def on_epoch_begin(self, args, state, control, **kwargs):
        self.steps.set_epoch(int(math.floor((state.epoch or 0.0) + 1e-6)))


class SoftLabelTrainer(Trainer):
    """transformers' Trainer with the soft-label KL loss and the training counters.

    The counters are a :class:`TrainingCounters` among the callbacks (one is added unless given), so that
    they live in the Trainer's state: saved with every checkpoint, restored on resume. :attr:`counters` reads
    them; :meth:`_save_checkpoint` writes ``COMPLETE`` last into every checkpoint (it marks it complete).
    """

    FiniteGradientsCallback = FiniteGradientsCallback
    TrainingCounters = TrainingCounters

    def __init__(self, *args, callbacks: list | None = None, **kwargs):
        callbacks = list(callbacks or [])
        if not any(isinstance(cb, TrainingCounters) for cb in callbacks):
            callbacks.append(TrainingCounters())
        super().__init__(*args, callbacks=callbacks, **kwargs)
        self.loss_is_scaled_for_ga = False  # per-batch mean: the Trainer divides by the accumulation
        self.args.restore_callback_states_from_checkpoint = True  # the counters come back with a checkpoint

    @property
    def counting(self) -> TrainingCounters:
        """The counters' one writer (looked up: resuming, the Trainer replaces it by the checkpoint's)."""
        return next(cb for cb in self.callback_handler.callbacks if isinstance(cb, TrainingCounters))

    @property
    def counters(self) -> dict[str, Any]:
        """The training counters now (a copy: :class:`TrainingCounters` alone writes them)."""
        return self.counting.as_dict()

    def _save_checkpoint(self, model, trial):
        """A checkpoint is complete once its marker (written atomically, after the Trainer's state, which
        holds the counters) exists; older checkpoints are rotated out only after that, so a kill inside a
        save never loses the last complete one."""
        limit = self.args.save_total_limit
        self.args.save_total_limit = None
        run_dir = Path(self._get_output_dir(trial=trial))
        checkpoint = run_dir / f"checkpoint-{self.state.global_step}"
        try:
            with writing(checkpoint):  # disk full (safetensors, torch.save, json): one line
                super()._save_checkpoint(model, trial)
                write_json_atomic({"step": int(self.state.global_step)}, checkpoint / COMPLETE)
        except LightReasonerError:
            shutil.rmtree(checkpoint, ignore_errors=True)  # its space back; the last complete one stays
            raise
        finally:
            self.args.save_total_limit = limit
        if limit:
            from transformers.trainer_utils import rotate_checkpoints

            rotate_checkpoints(output_dir=str(run_dir), save_total_limit=limit,
                               best_model_checkpoint=self.state.best_model_checkpoint, use_mtime=False)
        # s3:// outputs: the complete checkpoint under the prefix (its marker last), the rotated gone
        save_progress(run_dir / f"checkpoint-{self.state.global_step}", last=COMPLETE)
        prune_progress(run_dir)

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        loss = batch_loss(model, inputs)
        if model.training:
            if not bool(torch.isfinite(loss.detach())):
                raise diverged("loss", float(loss.detach()), self.state.global_step + 1, self.args)
            self.counting.count_batch(inputs)
        return (loss, None) if return_outputs else loss


def trainer_classes():
    """(:class:`SoftLabelTrainer`, :class:`LossHistoryCallback`, :class:`TrainingCounters`), for callers of
    the time when they were built on first use."""
    return SoftLabelTrainer, LossHistoryCallback, TrainingCounters


def _json_file(path: Path) -> dict | None:
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return None
    return data if isinstance(data, dict) else None


def checkpoint_complete(folder: Path) -> bool:
    """Written to the end: the marker (the last file written) and the trainer state both parse."""
    return _json_file(folder / COMPLETE) is not None and _json_file(folder / "trainer_state.json") is not None


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


def _adopt_legacy_counters(checkpoint: Path) -> None:
    """A checkpoint written before the counters were in the Trainer's state holds them in its marker: they
    move into its ``trainer_state.json``, from where the Trainer restores them."""
    state, legacy = _json_file(checkpoint / "trainer_state.json"), _json_file(checkpoint / COMPLETE) or {}
    callbacks = (state or {}).get("stateful_callbacks") or {}
    if state is None or TrainingCounters.__name__ in callbacks or "tuned_tokens" not in legacy:
        return
    counters = TrainingCounters.from_state({"args": {}, "attributes": {
        k: legacy[k] for k in TrainingCounters.FIELDS if k in legacy}})
    state["stateful_callbacks"] = {**callbacks, TrainingCounters.__name__: counters.state()}
    write_json_atomic(state, checkpoint / "trainer_state.json")
    log.info("%s: counters moved from %s into trainer_state.json", checkpoint, COMPLETE)


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
    counters = state.stateful_callbacks.get(TrainingCounters.__name__)
    if counters:  # as the Trainer does when it resumes: a TrainingCounters rebuilt from the state
        trainer.remove_callback(TrainingCounters)
        trainer.add_callback(TrainingCounters.from_state(counters))
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


def _replace_dir(tmp: Path, final: Path) -> None:
    if final.exists():
        shutil.rmtree(final)
    tmp.replace(final)


@dataclass
class TrainResult:
    """A finished training output (stage 2 or the SFT baseline): its folder and its manifest."""

    output: Path
    manifest: dict[str, Any]

    @property
    def adapter(self) -> Path:
        return self.output / ADAPTER


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
    """Train a LoRA-wrapped ``model`` on collated examples (see :func:`lightreasoner.samples.build_examples`) with the soft-label
    trainer; checkpoints go to ``out/checkpoints``. Shared by stage 2 and the SFT baseline. ``grouped``: the
    examples are :func:`lightreasoner.samples.build_step_examples` items (one per forward pass)."""
    from transformers import PrinterCallback

    checkpoints = out / CHECKPOINTS
    history = LossHistoryCallback()
    trainer = SoftLabelTrainer(
        model=model,
        args=training_arguments(config, checkpoints, device, progress, grouped=grouped),
        train_dataset=examples,
        data_collator=SoftLabelCollator(pad),
        callbacks=[history, TrainingCounters(), FiniteGradientsCallback(), *(callbacks or [])],
    )
    if not progress:
        trainer.remove_callback(PrinterCallback)
    if resume:
        _drop_incomplete_checkpoints(checkpoints)
    resume_from = last_checkpoint(checkpoints) if resume else None
    if resume and resume_from is None:
        log.info("%s: no checkpoint to resume from, starting from the beginning", checkpoints)
    if resume_from is not None:
        _adopt_legacy_counters(resume_from)
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
