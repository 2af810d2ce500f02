"""The stage graph, described once: which stages a method runs, in which order, what each reads, where its
output goes and what it needs to run. ``lightreasoner run`` (:mod:`lightreasoner.runner`) walks it in one
process; the Kubeflow pipeline (``pipelines/lightreasoner_pipeline.py``) builds its DAG from it, and a test
checks that the compiled DAG runs exactly :func:`plan` for each method.

    method lightreasoner: prepare -> sample -> train -> evaluate -> register
    method sft:           prepare -> sft -> evaluate_sft
    method both:          the two above from the same prepared problems, then report

Each stage names the library function that runs it (``function``, "module:name" in this package: the
runner calls it, a test checks) and its output artifact in Kubeflow (``output``); the pipeline names its
tasks after the stages.

In Kubeflow, sample and the two evaluations run across pods: a stage's ``title`` and ``gpu_memory`` name its
shard pods for sample (then a merge step) and its merge step and shard pods for evaluate / evaluate_sft (base
and tuned shard pods, then the merge step that writes the evaluation folder).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from .errors import LightReasonerError

METHODS = ("lightreasoner", "sft", "both")
LIGHTREASONER = ("lightreasoner", "both")
SFT = ("sft", "both")


@dataclass(frozen=True)
class Stage:
    name: str  # the stage's name in MLflow (its nested run) and in manifests
    title: str  # what the pipeline UI shows
    folder: str | None  # the output folder under a local run's directory (None: writes no folder)
    inputs: tuple[str, ...]  # the stages whose outputs it reads
    methods: tuple[str, ...]  # the methods that run it
    function: str  # the library function that runs it, "module:name" (the runner and its component call it)
    output: str | None = None  # its output artifact in Kubeflow (what downstream steps and its log step read)
    sections: tuple[str, ...] | None = None  # the config sections it reads: its settings slice in Kubeflow
    # (its only settings in a cache key) and its output's fingerprint; None: the whole config (register, report)
    gpu_memory: str | None = None  # a GPU stage's memory request; None: a small CPU step
    timeout: int = 60 * 60  # seconds one attempt of its Kubeflow step may run (the pod's activeDeadlineSeconds)
    cached: bool = True  # pure (same inputs, same output): Kubeflow may reuse an earlier result
    logged: bool = True  # recorded as its own nested MLflow run from its output folder (register and
    # report record themselves)


_HOUR = 60 * 60
_EVALUATION = ("expert", "prompt", "evaluation")  # both evaluations read the same sections

# Timeouts bound one attempt of a step in Kubeflow (a GPU step retries twice, each attempt bounded), so a
# hung step fails and the next scheduled run (max_concurrency=1) is not blocked. Generous for the paper's
# setting on one A100; `pipeline compile/submit/schedule --step-timeout NAME=DURATION` overrides them.
GRAPH: tuple[Stage, ...] = (
    Stage("prepare", "prepare data", "problems", (), METHODS, "data:prepare_data", "problems", sections=("data",),
          timeout=_HOUR),
    Stage("sample", "contrastive sampling shard", "samples", ("prepare",), LIGHTREASONER, "sampling:sample",
          "samples", gpu_memory="48Gi", sections=("expert", "amateur", "data", "prompt", "sampling"),
          timeout=6 * _HOUR),
    Stage("train", "LoRA fine-tuning", "train", ("sample",), LIGHTREASONER, "training:train", "adapter",
          gpu_memory="64Gi", sections=("expert", "training"), timeout=8 * _HOUR),
    Stage("evaluate", "evaluate base and tuned", "evaluate", ("train", "sample"), LIGHTREASONER,
          "evaluation:evaluate", "evaluation", gpu_memory="48Gi", sections=_EVALUATION, timeout=8 * _HOUR),
    Stage("register", "register and promote", None, ("train", "evaluate", "sample"), LIGHTREASONER,
          "registry:register", cached=False, logged=False, timeout=_HOUR // 2),
    Stage("sft", "SFT baseline (rejection sampling + LoRA)", "sft", ("prepare",), SFT, "sft:sft", "adapter",
          gpu_memory="64Gi", sections=("expert", "data", "prompt", "sft", "training"), timeout=12 * _HOUR),
    Stage("evaluate_sft", "evaluate base and SFT", "evaluate-sft", ("sft",), SFT, "evaluation:evaluate",
          "evaluation", gpu_memory="48Gi", sections=_EVALUATION, timeout=8 * _HOUR),
    Stage("report", "efficiency report: LightReasoner vs SFT", "report",
          ("sample", "train", "evaluate", "sft", "evaluate_sft"), ("both",), "report:efficiency_report", "report",
          cached=False, logged=False, timeout=_HOUR // 2),
)
STAGES = {stage.name: stage for stage in GRAPH}


def slice_of(name: str) -> str:
    """The stage whose settings slice ``name`` receives in Kubeflow: the first stage of the graph that
    reads the same sections (evaluate_sft gets evaluate's)."""
    sections = STAGES[name].sections
    return next(stage.name for stage in GRAPH if stage.sections == sections)


# The stages with a settings slice of their own (configure_run's per-stage outputs), in graph order.
SLICES: tuple[str, ...] = tuple(s.name for s in GRAPH if s.sections is not None and slice_of(s.name) == s.name)
# The pipeline's small bookkeeping steps, which are not stages (open and end the MLflow run, log a stage,
# merge shards): one timeout for all, overridden as `step=DURATION`.
STEP = "step"
STEP_TIMEOUT = _HOUR // 2


def timeouts(overrides: dict[str, int] | None = None) -> dict[str, int]:
    """Seconds per Kubeflow step: each stage's timeout and :data:`STEP` (the bookkeeping steps), with
    ``overrides`` (refused in one line when a name is unknown or a value is not a positive number)."""
    table = {stage.name: stage.timeout for stage in GRAPH} | {STEP: STEP_TIMEOUT}
    for name, seconds in (overrides or {}).items():
        if name not in table:
            raise LightReasonerError(f"--step-timeout {name}: unknown step; expected one of {', '.join(table)}")
        if not isinstance(seconds, int) or isinstance(seconds, bool) or seconds < 1:
            raise LightReasonerError(f"--step-timeout {name}={seconds!r}: expected a positive number of seconds")
        table[name] = seconds
    return table


def parse_timeout(item: str) -> tuple[str, int]:
    """``NAME=DURATION`` (``train=12h``, ``step=20m``, ``sample=5400``) -> (name, seconds)."""
    name, sep, raw = item.partition("=")
    match = re.fullmatch(r"\s*(\d+)\s*([smh]?)\s*", raw)
    if not sep or not match or int(match.group(1)) < 1:
        raise LightReasonerError(f"--step-timeout {item!r}: expected NAME=DURATION, e.g. train=12h, step=20m or "
                                 "sample=5400 (seconds)")
    return name.strip(), int(match.group(1)) * {"": 1, "s": 1, "m": 60, "h": _HOUR}[match.group(2)]


def check_method(method: str) -> str:
    if method not in METHODS:
        raise LightReasonerError(f"--method {method!r}: expected one of {', '.join(METHODS)}")
    return method


def plan(method: str) -> list[Stage]:
    """The stages ``method`` runs, in order (every stage after the stages it reads)."""
    check_method(method)
    return [stage for stage in GRAPH if method in stage.methods]


def runs(stage: str, method: str) -> bool:
    return method in STAGES[stage].methods
