"""The stage graph, described once: which stages a method runs, in which order, what each reads, where its
output goes and what it needs to run. ``lightreasoner run`` (:mod:`lightreasoner.runner`) walks it in one
process; the Kubeflow pipeline (``pipelines/lightreasoner_pipeline.py``) builds its DAG from it, and a test
checks that the compiled DAG runs exactly :func:`plan` for each method.

    method lightreasoner: prepare -> sample -> train -> evaluate -> register
    method sft:           prepare -> sft -> evaluate_sft
    method both:          the two above from the same prepared problems, then report

In Kubeflow, sample and the two evaluations run across pods: a stage's ``title`` and ``gpu_memory`` name its
shard pods for sample (then a merge step) and its merge step and shard pods for evaluate / evaluate_sft (base
and tuned shard pods, then the merge step that writes the evaluation folder).
"""

from __future__ import annotations

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
    gpu_memory: str | None = None  # a GPU stage's memory request; None: a small CPU step
    cached: bool = True  # pure (same inputs, same output): Kubeflow may reuse an earlier result
    logged: bool = True  # recorded as its own nested MLflow run from its output folder (register and
    # report record themselves)


GRAPH: tuple[Stage, ...] = (
    Stage("prepare", "prepare data", "problems", (), METHODS),
    Stage("sample", "contrastive sampling shard", "samples", ("prepare",), LIGHTREASONER, gpu_memory="48Gi"),
    Stage("train", "LoRA fine-tuning", "train", ("sample",), LIGHTREASONER, gpu_memory="64Gi"),
    Stage("evaluate", "evaluate base and tuned", "evaluate", ("train", "sample"), LIGHTREASONER,
          gpu_memory="48Gi"),
    Stage("register", "register and promote", None, ("train", "evaluate", "sample"), LIGHTREASONER, cached=False,
          logged=False),
    Stage("sft", "SFT baseline (rejection sampling + LoRA)", "sft", ("prepare",), SFT, gpu_memory="64Gi"),
    Stage("evaluate_sft", "evaluate base and SFT", "evaluate-sft", ("sft",), SFT, gpu_memory="48Gi"),
    Stage("report", "efficiency report: LightReasoner vs SFT", "report",
          ("sample", "train", "evaluate", "sft", "evaluate_sft"), ("both",), cached=False, logged=False),
)
STAGES = {stage.name: stage for stage in GRAPH}


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
