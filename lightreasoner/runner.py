"""``lightreasoner run``: the whole method locally, stage after stage, in this process.

prepare data -> contrastive sampling -> LoRA fine-tuning -> evaluation of base and tuned Expert ->
registration and the promotion check, each stage logged as a nested MLflow run under one parent run.

It calls the same library stage functions the Kubeflow components call (``components/`` only unpacks
artifacts around them). It runs them in-process rather than through ``kfp.local``: one Python start and
one model cache instead of a fresh interpreter per component saves about a minute of the demo's budget
on 2 CPU cores. ``lightreasoner pipeline run-local`` runs the real components through ``kfp.local``.

A run that failed or was killed is resumed by the next ``run`` with the same workdir and config: it
continues in the same ``runs/<stamp>`` folder (its ``run.json`` records the config), finished stages are
read back from their outputs instead of being computed again (sampling and training also resume their
batches and checkpoints), and the earlier MLflow parent run, if still RUNNING, is ended FAILED.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .config import Config, load_config
from .errors import LightReasonerError
from .outputs import folder_sha256, write_json_atomic
from .presentation import format_value
from .stages import STAGES, check_method, plan

log = logging.getLogger(__name__)

DEMO_CONFIG = Path(__file__).resolve().parent / "demo.yaml"

QUICK = [
    "data.limit=8",
    "sampling.max_new_tokens=32",
    "sampling.batch_size=8",
    "training.batch_size=4",
    "evaluation.data.limit=8",
    "evaluation.max_new_tokens=32",
    "evaluation.batch_size=8",
    "evaluation.bootstrap_samples=1000",
    "sft.max_new_tokens=32",
    "sft.batch_size=8",
]


@dataclass
class RunSummary:
    workdir: Path
    parent_run_id: str | None
    seconds: dict[str, float] = field(default_factory=dict)
    sampling: dict[str, Any] = field(default_factory=dict)
    training: dict[str, Any] = field(default_factory=dict)
    evaluation: dict[str, Any] = field(default_factory=dict)
    registered: Any = None
    decision: Any = None
    ui_command: str | None = None
    method: str = "lightreasoner"
    sft: dict[str, Any] = field(default_factory=dict)
    sft_evaluation: dict[str, Any] = field(default_factory=dict)
    report: dict[str, Any] | None = None


def demo_config(path: str | None, overrides: list[str], quick: bool) -> Config:
    """No config file: the demo (configs/demo.yaml, shipped in the package). ``quick`` shrinks it."""
    return load_config(path or DEMO_CONFIG, (QUICK if quick else []) + list(overrides))


RUN_STATE = "run.json"


def run_key(config: Config, method: str) -> str:
    """What makes two ``run`` calls the same job: every config section but ``tracking`` (fixing the
    tracking server does not change any stage output), and the method."""
    sections = [name for name in config.dump() if name != "tracking"]
    return hashlib.sha256(f"{config.fingerprint(*sections)}:{method}".encode()).hexdigest()


def _read_state(folder: Path) -> dict[str, Any] | None:
    try:
        data = json.loads((folder / RUN_STATE).read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def _write_state(folder: Path, state: dict[str, Any]) -> None:
    write_json_atomic(state, folder / RUN_STATE)


def unfinished_run(workdir: Path, key: str) -> Path | None:
    """The run folder to resume: the newest one of this job (``key``) when it did not finish."""
    runs = workdir / "runs"
    if not runs.is_dir():
        return None
    for folder in sorted((p for p in runs.iterdir() if p.is_dir()), key=lambda p: p.name, reverse=True):
        state = _read_state(folder)
        if state is not None and state.get("key") == key:
            return folder if state.get("status") != "finished" else None
    return None


def _new_run_folder(workdir: Path, stamp: str) -> Path:
    out, n = workdir / "runs" / stamp, 1
    while out.exists():
        n += 1
        out = workdir / "runs" / f"{stamp}-{n}"
    out.mkdir(parents=True)
    return out


def _end_interrupted(config: Config, run_id: str | None, by: str | None) -> None:
    """End the parent run of an interrupted run (and its stage runs) FAILED when they are still RUNNING;
    a tracking server that does not answer only gets a warning (the new run reports its own errors)."""
    if not config.tracking.enabled or not run_id:
        return
    from . import tracking

    try:
        client = tracking.client_for(config)
        with tracking.mlflow_errors(client.tracking_uri, f"ending the interrupted run {run_id}"):
            parent = client.get_run(run_id)
            children = client.search_runs([parent.info.experiment_id],
                                          f"tags.`mlflow.parentRunId` = '{run_id}' and attributes.status = 'RUNNING'")
            note = f"interrupted; resumed by run {by}" if by else "interrupted"
            for run in [*children, parent]:
                if run.info.status == "RUNNING":
                    client.set_tag(run.info.run_id, "lightreasoner.error", note)
                    client.set_terminated(run.info.run_id, "FAILED")
    except Exception as exc:  # noqa: BLE001 - bookkeeping of an older run never stops this one
        log.warning("could not end the interrupted MLflow run %s: %s", run_id, str(exc).splitlines()[0])


def _finished(folder: Path, stage: str) -> dict[str, Any] | None:
    """The manifest of a complete stage output (the manifest is written last), else None."""
    try:
        manifest = json.loads((folder / "manifest.json").read_text())
    except (OSError, ValueError):
        return None
    return manifest if isinstance(manifest, dict) and manifest.get("stage") == stage else None


def _read_predictions(path: Path):
    import pyarrow.parquet as pq

    from .evaluation import Prediction

    return [Prediction(**row) for row in pq.read_table(path).to_pylist()]


def _evaluated(folder: Path, adapter: Path):
    """A complete evaluation in ``folder`` of exactly this adapter (by digest), as an EvalResult; else None."""
    from .evaluation import METRICS, PREDICTIONS_BASE, PREDICTIONS_TUNED, EvalResult

    manifest = _finished(folder, "evaluate")
    if manifest is None or (manifest.get("adapter") or {}).get("sha256") != folder_sha256(adapter):
        return None
    try:
        metrics = json.loads((folder / METRICS).read_text())
        base = _read_predictions(folder / PREDICTIONS_BASE)
        tuned = _read_predictions(folder / PREDICTIONS_TUNED)
    except Exception:  # noqa: BLE001 - unreadable: evaluate again
        return None
    return EvalResult(folder, metrics, manifest, base, tuned)


def run_all(config: Config, workdir: str | Path, *, progress: bool = True, promote: bool = True,
            run_name: str | None = None, method: str = "lightreasoner") -> RunSummary:
    """``method``: lightreasoner (the default), sft (the baseline alone) or both, from the same prepared
    problems, each evaluated against the same base predictions, then the efficiency report."""
    check_method(method)
    workdir = Path(workdir).resolve()
    key = run_key(config, method)
    out = unfinished_run(workdir, key)
    previous = _read_state(out) if out is not None else None
    if out is None:
        out = _new_run_folder(workdir, time.strftime("%Y%m%d-%H%M%S"))
    else:
        log.warning("resuming the unfinished run in %s (finished stages are not computed again)", out)
    stamp = out.name
    from .storage import output_lock

    with output_lock(out):
        return _run_in(config, workdir, out, stamp, key, previous, progress=progress, promote=promote,
                       run_name=run_name, method=method)


def _run_in(config: Config, workdir: Path, out: Path, stamp: str, key: str, previous: dict[str, Any] | None, *,
            progress: bool, promote: bool, run_name: str | None, method: str) -> RunSummary:
    from . import tracking

    previous = previous or {}
    # first_run_id: the first attempt's parent run, the identity of this job's registration across attempts
    state = {"key": key, "method": method, "status": "running", "parent_run_id": None,
             "first_run_id": previous.get("first_run_id") or previous.get("parent_run_id"),
             "attempts": int(previous.get("attempts", 0)) + 1}
    _write_state(out, state)
    if config.tracking.enabled and config.tracking.tracking_uri is None:
        config = config.model_copy(deep=True)
        config.tracking.workdir = str(workdir)
    summary = RunSummary(workdir=out, parent_run_id=None, method=method)

    def timed(stage: str, fn):
        start = time.perf_counter()
        result = fn()
        summary.seconds[stage] = time.perf_counter() - start
        return result

    try:
        with tracking.pipeline_run(config, run_name or f"{method}-{stamp}") as parent:
            summary.parent_run_id = parent
            state["parent_run_id"] = parent
            state["first_run_id"] = state["first_run_id"] or parent
            _write_state(out, state)
            _end_interrupted(config, previous.get("parent_run_id"), parent)
            _stages(config, out, summary, parent, timed, progress=progress, promote=promote, method=method,
                    first_run_id=state["first_run_id"])
    except BaseException:
        state["status"] = "failed"
        _write_state(out, state)
        raise
    state["status"] = "finished"
    _write_state(out, state)
    if config.tracking.enabled:
        summary.ui_command = tracking.ui_command(config)
    return summary


@dataclass
class _Run:
    """What the stages of one ``run`` share: the config, the run folder, the parent MLflow run, the
    prepared problems and the base predictions (scored once, reused by the SFT evaluation)."""

    config: Config
    out: Path
    summary: RunSummary
    parent: str | None
    timed: Any
    progress: bool
    promote: bool
    first_run_id: str | None
    problems: list = field(default_factory=list)
    base: list | None = None
    stage_run: str | None = None  # the MLflow run of the stage running now (None: not logged, or no tracking)

    def folder(self, stage: str) -> Path:
        return self.out / STAGES[stage].folder


def _prepare(r: _Run) -> None:
    from .data import PROBLEMS, prepare_data, read_problem_file

    problems_path = r.folder("prepare") / PROBLEMS
    # complete only with its manifest (written last); a folder of an older version without one is prepared again
    if _finished(r.folder("prepare"), "prepare") is not None and problems_path.is_file():
        log.info("%s: prepared in an earlier attempt, reused", problems_path)
    else:
        problems_path = r.timed("prepare", lambda: prepare_data(r.config.data, r.folder("prepare")))
    r.problems = read_problem_file(problems_path)


def _sample(r: _Run) -> None:
    from .sampling import sample

    # sample and train recognise their own finished (or partly done) outputs and resume them
    sampled = r.timed("sample", lambda: sample(r.config, r.folder("sample"), problems=r.problems,
                                               progress=r.progress))
    r.summary.sampling = sampled.manifest
    if sampled.manifest["counts"]["selected"] == 0:
        raise LightReasonerError(
            f"{r.folder('sample')}: no step passed beta {sampled.manifest['effective_beta']:.4g}; "
            "lower sampling.beta or use auto:<fraction>"
        )


def _train(r: _Run) -> None:
    from . import tracking
    from .training import train

    live = tracking.live_training_callbacks(r.config, r.stage_run)  # the loss, while it trains
    trained = r.timed("train", lambda: train(r.config, r.folder("sample"), r.folder("train"), resume=True,
                                             progress=r.progress, callbacks=live))
    r.summary.training = trained.manifest


def _evaluate_stage(r: _Run, stage: str, tuned: str) -> None:
    from .evaluation import evaluate

    evaluated = _evaluated(r.folder(stage), r.folder(tuned) / "adapter")
    if evaluated is None:
        evaluated = r.timed(stage, lambda: evaluate(r.config, None, r.folder(tuned), r.folder(stage),
                                                    progress=r.progress, base_predictions=r.base))
    else:
        log.info("%s: evaluated in an earlier attempt, reused", r.folder(stage))
    if stage == "evaluate":
        r.summary.evaluation = evaluated.metrics
        r.base = evaluated.predictions_base
    else:
        r.summary.sft_evaluation = evaluated.metrics


def _evaluate(r: _Run) -> None:
    _evaluate_stage(r, "evaluate", "train")


def _evaluate_sft(r: _Run) -> None:
    _evaluate_stage(r, "evaluate_sft", "sft")


def _register(r: _Run) -> None:
    from . import registry

    if not r.config.tracking.enabled:
        return
    start = time.perf_counter()  # idempotent: a retry completes the same version
    r.summary.registered = registry.register(r.config, r.folder("train"), r.folder("evaluate"), r.folder("sample"),
                                             parent_run_id=r.parent, key_run_id=r.first_run_id)
    if r.promote:
        r.summary.decision = registry.promote(r.config, echo=False, parent_run_id=r.parent)
    r.summary.seconds["register"] = time.perf_counter() - start


def _sft(r: _Run) -> None:
    from .sft import SFTResult, sft

    finished = _finished(r.folder("sft"), "sft")
    if finished is not None:
        log.info("%s: trained in an earlier attempt, reused", r.folder("sft"))
        tuned = SFTResult(r.folder("sft"), finished)
    else:
        shutil.rmtree(r.folder("sft"), ignore_errors=True)  # an interrupted attempt: start it again
        tuned = r.timed("sft", lambda: sft(r.config, r.folder("sft"), problems=r.problems, progress=r.progress))
    r.summary.sft = tuned.manifest


def _report(r: _Run) -> None:
    from .report import efficiency_report

    folders = {name: r.folder(name) for name in STAGES["report"].inputs}
    r.summary.report = efficiency_report(r.config, r.folder("report"), parent_run_id=r.parent, folders=folders)


# One function per stage of the graph (lightreasoner.stages), which says which run, in which order.
RUNNERS = {
    "prepare": _prepare,
    "sample": _sample,
    "train": _train,
    "evaluate": _evaluate,
    "register": _register,
    "sft": _sft,
    "evaluate_sft": _evaluate_sft,
    "report": _report,
}


def _stages(config: Config, out: Path, summary: RunSummary, parent: str | None, timed, *, progress: bool,
            promote: bool, method: str, first_run_id: str | None = None) -> None:
    """The stages of ``method``, in the graph's order, each skipped when its output in ``out`` is already
    complete (a resumed run). A logged stage runs inside its MLflow run (tracking.tracked_stage): a failing
    stage leaves it FAILED; register and report record themselves."""
    from . import tracking

    r = _Run(config, out, summary, parent, timed, progress, promote, first_run_id)
    for stage in plan(method):
        r.stage_run = None
        if stage.logged:
            with tracking.tracked_stage(config, stage.name, r.folder(stage.name), parent) as r.stage_run:
                RUNNERS[stage.name](r)
        else:
            RUNNERS[stage.name](r)


def _fmt(value: Any, digits: int = 4) -> str:
    return format_value(value, spec=f".{digits}f")


def _per_update(training: dict[str, Any]) -> str:
    per = (training.get("schedule") or {}).get("kept_samples_per_update") or {}
    return f"{_fmt(per.get('mean'), 1)} / {_fmt(per.get('min'))} / {_fmt(per.get('max'))}" if per else "-"


def _heldout(training: dict[str, Any]) -> str:
    h = training.get("heldout") or {}
    if h.get("kl_before") is None:
        return "- (training.holdout_fraction 0)"
    drop = h.get("kl_drop")
    return (f"{_fmt(h['kl_before'])} -> {_fmt(h.get('kl_after'))} "
            f"({'-' if drop is None else f'{100 * drop:.0f}%'}, {h.get('problems')} problems)")


def summary_table(s: RunSummary):
    """The end-of-run table (rich): what was measured, stage by stage."""
    from rich.table import Table

    counts = s.sampling.get("counts", {})
    ev = s.evaluation
    table = Table(title="lightreasoner run", show_header=True)
    table.add_column("what")
    table.add_column("value", justify="right")
    rows = [
        ("problems (train)", counts.get("problems")),
        ("steps", counts.get("steps")),
        ("kept steps", counts.get("selected")),
        ("kept fraction", counts.get("kept_fraction")),
        ("effective beta", s.sampling.get("effective_beta")),
        ("tuned tokens", s.training.get("tuned_tokens")),
        ("training steps / final loss", f"{s.training.get('steps')} / {_fmt(s.training.get('final_loss'))}"),
        ("kept samples per update (mean / min / max)", _per_update(s.training)),
        ("held-out KL before -> after (drop)", _heldout(s.training)),
        ("problems (eval)", ev.get("n")),
        ("accuracy base", ev.get("accuracy_base")),
        ("accuracy tuned", ev.get("accuracy_tuned")),
        ("delta [95% CI]", f"{_fmt(ev.get('delta'))} [{_fmt(ev.get('delta_ci_low'))}, {_fmt(ev.get('delta_ci_high'))}]"),
        ("McNemar p", ev.get("mcnemar_p")),
        ("eval answers changed by training", ev.get("answers_changed")),
    ]
    if s.method == "sft":
        rows = [("problems (eval)", ev.get("n"))] if ev else []
    if s.sft:
        sev = s.sft_evaluation
        c = s.sft.get("counts", {})
        rows += [
            ("SFT problems sampled / kept", f"{c.get('problems')} / {c.get('kept_problems')}"),
            ("SFT sampled / kept solutions", f"{c.get('samples')} / {c.get('kept_solutions')}"),
            ("SFT tuned tokens", s.sft.get("tuned_tokens")),
            ("SFT training steps / final loss", f"{s.sft.get('steps')} / {_fmt(s.sft.get('final_loss'))}"),
            ("SFT problems (eval)", sev.get("n")),
            ("SFT accuracy base", sev.get("accuracy_base")),
            ("SFT accuracy tuned", sev.get("accuracy_tuned")),
            ("SFT delta [95% CI]",
             f"{_fmt(sev.get('delta'))} [{_fmt(sev.get('delta_ci_low'))}, {_fmt(sev.get('delta_ci_high'))}]"),
            ("SFT McNemar p", sev.get("mcnemar_p")),
        ]
    for stage, seconds in s.seconds.items():
        rows.append((f"time {stage} (s)", f"{seconds:.1f}"))
    rows.append(("time total (s)", f"{sum(s.seconds.values()):.1f}"))
    if s.registered is not None:
        rows.append(("registered", f"{s.registered.name} v{s.registered.version} @{s.registered.alias}"))
    if s.decision is not None:
        rows.append(("promotion", str(s.decision)))
    for name, value in rows:
        table.add_row(name, _fmt(value))
    return table
