"""Kubeflow components, one per stage. Each is thin: it unpacks KFP artifacts, calls the library stage,
writes outputs and metrics. No algorithm code lives here.

A stage's component has the stage's name (``prepare``, ``sample``: one shard, ``train``, ``sft``,
``register``, ``report``); ``evaluate_shard`` is a pod of either evaluation, ``merge_sample`` and
``merge_evaluate`` join a stage's shards into its output, and ``configure_run``, ``log_stage``,
``evaluation_shards`` and ``finish_run`` are the pipeline's bookkeeping steps.

Pure stages (prepare, sample shard, merge, train, evaluation shard and merge, SFT) take only the config sections they read
(``config``: YAML text from :func:`lightreasoner.parameters.stage_yaml`) and their input artifacts, and
touch no MLflow run, so Kubeflow may cache them. Everything with a side effect in MLflow is its own
uncached step: ``configure_run`` opens the parent run, ``log_stage`` records a finished stage under it,
``register`` registers (idempotently), and ``finish_run`` -- the pipeline's exit handler -- ends the
parent run FINISHED or FAILED.

The functions below are plain Python; :func:`make_components` turns them into KFP components for one
image (compiled without ``pip install kfp``: the image has it). KFP ships each function's source to the
container, so every import is inside the function.
"""

from types import SimpleNamespace
from typing import NamedTuple

from kfp import dsl
from kfp.dsl import Artifact, ClassificationMetrics, Dataset, Input, Markdown, Metrics, Model, Output


def configure_run(config_yaml: str, settings: str, run_name: str, kfp_run_id: str,
                  method: str = "lightreasoner") -> NamedTuple(
        "Configured", [("parent_run_id", str), ("full", str), ("prepare", str), ("sample", str),
                       ("train", str), ("evaluate", str), ("sft", str)]):
    """Validate the run's settings once (a bad parameter fails here, in one line), split them per stage
    (one output per :data:`lightreasoner.stages.SLICES`, in its order: KFP needs the outputs written out in
    the signature, and a test checks them against the registry), and open the MLflow parent run, named
    ``run_name`` or ``<method>-<date>`` (found again, not doubled, when Kubeflow retries this step). With
    tracking on and no tracking URI (neither the parameter nor MLFLOW_TRACKING_URI), it refuses to start: a
    pod's own sqlite store would lose the run."""
    from collections import namedtuple

    from lightreasoner import parameters, tracking
    from lightreasoner.stages import SLICES

    tracking.configure_process()
    cfg = parameters.config_from_settings(config_yaml, settings)
    # the URI resolved here stays out of the outputs: a Secret's URI may hold a password
    parent = tracking.start_pipeline(tracking.require_uri(cfg), run_name or tracking.default_run_name(method),
                                     kfp_run_id=kfp_run_id or None)
    stages = {name: parameters.stage_yaml(cfg, name) for name in SLICES}
    out = namedtuple("Configured", ["parent_run_id", "full", *stages])
    return out(parent or "", parameters.full_yaml(cfg), **stages)


def prepare(config: str, problems: Output[Dataset], metrics: Output[Metrics]):
    """Load and normalise the training problems."""
    import os

    import pyarrow.parquet as pq

    from lightreasoner.config import load_config_text
    from lightreasoner.data import prepare_data as stage
    from lightreasoner.presentation import log_kfp_metrics

    cfg = load_config_text(config, None, "prepare config")
    os.makedirs(problems.path, exist_ok=True)
    path = stage(cfg.data, problems.path)
    log_kfp_metrics(metrics, {"problems": pq.read_metadata(path).num_rows})


def sample(config: str, problems: Input[Dataset], shard_index: int, shards: list,
                       shard: Output[Dataset]):
    """Stage 1 on one shard of the batches (every shard on its own GPU node)."""
    from pathlib import Path

    from lightreasoner.config import load_config_text
    from lightreasoner.data import read_problem_file
    from lightreasoner.sampling import sample

    cfg = load_config_text(config, None, "sample config")
    probs = read_problem_file(Path(problems.path) / "problems.parquet")
    sample(cfg, shard.path, problems=probs, shard=(shards.index(shard_index), len(shards)))


def merge_sample(config: str, shards: Input[list[Dataset]], samples: Output[Dataset], metrics: Output[Metrics]):
    """Join the shards into one samples folder (equal to a single-shard run)."""
    from lightreasoner.config import load_config_text
    from lightreasoner.presentation import log_kfp_metrics
    from lightreasoner.sampling import merge_shards

    cfg = load_config_text(config, None, "sample config")
    result = merge_shards(cfg, [s.path for s in shards], samples.path)
    log_kfp_metrics(metrics, {**result.manifest["counts"], "effective_beta": result.manifest["effective_beta"]})


def train(config: str, samples: Input[Dataset], adapter: Output[Model], metrics: Output[Metrics]):
    """Stage 2: LoRA on the contrastive soft labels (packed); resumes from its checkpoints on a retry."""
    from lightreasoner.config import load_config_text
    from lightreasoner.presentation import log_kfp_metrics
    from lightreasoner.training import train

    cfg = load_config_text(config, None, "train config")
    result = train(cfg, samples.path, adapter.path, resume=True)
    log_kfp_metrics(metrics, {k: result.manifest.get(k) for k in ("tuned_tokens", "steps", "final_loss", "wall_seconds")})


def evaluation_shards(config: str) -> list:
    """The evaluation pods' shard indices, 0..evaluation.shards-1 (what the evaluation loop runs over)."""
    from lightreasoner.config import load_config_text

    return list(range(load_config_text(config, None, "evaluate config").evaluation.shards))


def evaluate_shard(config: str, shard_index: int, shards: list, side: str, shard: Output[Dataset],
                   adapter: Input[Model] = None):
    """Stage 3 in one pod: one model side (base: the Expert; tuned: with ``adapter``) on one shard of every
    benchmark's batches (``merge_evaluate`` joins the shards)."""
    from lightreasoner.config import load_config_text
    from lightreasoner.evaluation import evaluate_shard as stage

    cfg = load_config_text(config, None, "evaluate config")
    stage(cfg, None, adapter.path if adapter is not None else None, shard.path,
          (shards.index(shard_index), len(shards)), sides=(side,))


def merge_evaluate(config: str, base: Input[list[Dataset]], tuned: Input[list[Dataset]],
                     evaluation: Output[Dataset], metrics: Output[Metrics], confusion: Output[ClassificationMetrics],
                     summary: Output[Markdown], samples: Input[Dataset] = None):
    """Stage 3's result: the shards joined into one evaluation folder (equal to a single pod's): per-benchmark
    and averaged metrics, paired intervals and McNemar, the McNemar table as a confusion matrix (base
    right/wrong x tuned right/wrong) and a summary page with the accuracy plot and, given ``samples``, the KL
    histogram (KFP UI)."""
    from lightreasoner.config import load_config_text
    from lightreasoner.evaluation import merge_evaluation as stage
    from lightreasoner.presentation import log_kfp_metrics, mcnemar_table, summary_markdown, write_kfp_file
    from lightreasoner.records import benchmark_metrics

    cfg = load_config_text(config, None, "evaluate config")
    result = stage([s.path for s in [*base, *tuned]], evaluation.path, config=cfg)
    keys = ("accuracy_base", "accuracy_tuned", "delta", "delta_ci_low", "delta_ci_high", "mcnemar_p")
    log_kfp_metrics(metrics, {**{k: result.metrics.get(k) for k in keys}, **benchmark_metrics(result.metrics)})
    table = mcnemar_table(result.metrics)
    if table is not None:
        confusion.log_confusion_matrix(["right", "wrong"], table)
    write_kfp_file(confusion)
    with open(summary.path, "w") as fh:
        fh.write(summary_markdown(evaluation.path, samples.path if samples is not None else None))


def sft(config: str, problems: Input[Dataset], adapter: Output[Model], metrics: Output[Metrics]):
    """The SFT baseline: rejection sampling by the Expert, LoRA on the correct solutions."""
    from pathlib import Path

    from lightreasoner.config import load_config_text
    from lightreasoner.data import read_problem_file
    from lightreasoner.presentation import log_kfp_metrics
    from lightreasoner.sft import sft

    cfg = load_config_text(config, None, "sft config")
    result = sft(cfg, adapter.path, problems=read_problem_file(Path(problems.path) / "problems.parquet"))
    keys = ("tuned_tokens", "steps", "final_loss", "generate_seconds", "train_seconds", "wall_seconds")
    log_kfp_metrics(metrics, {**{k: result.manifest.get(k) for k in keys},
                              "kept_solutions": result.manifest["counts"]["kept_solutions"]})


def log_stage(config: str, stage: str, output: Input[Artifact], parent_run_id: str):
    """Record a finished stage's output (metrics, plots, manifest) as a child of the parent MLflow run."""
    from lightreasoner import tracking
    from lightreasoner.config import load_config_text

    tracking.configure_process()
    cfg = tracking.require_uri(load_config_text(config, None, "run config"))
    tracking.log_stage(cfg, stage, output.path, parent_run_id or None)


def register(config: str, samples: Input[Dataset], adapter: Input[Model], evaluation: Input[Dataset],
                   parent_run_id: str, promote: bool) -> NamedTuple(
                       "RegisterOutputs", [("version", str), ("promoted", bool)]):
    """Register the adapter (alias challenger), then try to promote it to champion."""
    from collections import namedtuple

    from lightreasoner import registry, tracking
    from lightreasoner.config import load_config_text

    tracking.configure_process()
    cfg = tracking.require_uri(load_config_text(config, None, "run config"))
    registered = registry.register(cfg, adapter.path, evaluation.path, samples.path,
                                   parent_run_id=parent_run_id or None)
    promoted = bool(registry.promote(cfg).promoted) if promote else False
    return namedtuple("RegisterOutputs", ["version", "promoted"])(str(registered.version), promoted)


def report(config: str, samples: Input[Dataset], lr_adapter: Input[Model],
                      lr_evaluation: Input[Dataset], sft_adapter: Input[Model], sft_evaluation: Input[Dataset],
                      parent_run_id: str, report: Output[Dataset], metrics: Output[Metrics],
                      page: Output[Markdown]):
    """LightReasoner vs SFT: time, problems, tuned tokens, accuracy and the ratios (MLflow and KFP UI)."""
    from lightreasoner import tracking
    from lightreasoner.config import load_config_text
    from lightreasoner.presentation import efficiency_markdown, log_kfp_metrics
    from lightreasoner.report import efficiency_report as stage
    from lightreasoner.report import report_metrics

    tracking.configure_process()
    cfg = tracking.require_uri(load_config_text(config, None, "run config"))
    folders = {"sample": samples.path, "train": lr_adapter.path, "evaluate": lr_evaluation.path,
               "sft": sft_adapter.path, "evaluate_sft": sft_evaluation.path}
    result = stage(cfg, report.path, parent_run_id=parent_run_id or None, folders=folders)
    log_kfp_metrics(metrics, {key.split("/", 1)[1]: value for key, value in report_metrics(result).items()})
    with open(page.path, "w") as fh:
        fh.write(efficiency_markdown(result, report.path))


def finish_run(config_yaml: str, settings: str, kfp_run_id: str, status: dsl.PipelineTaskFinalStatus):
    """Exit handler: end the MLflow parent run of this KFP run, FINISHED when every step succeeded,
    FAILED otherwise. Runs whatever happened before it, so no parent run stays RUNNING."""
    from lightreasoner import parameters, tracking

    tracking.configure_process()
    cfg = tracking.require_uri(parameters.config_from_settings(config_yaml, settings))
    state = "FINISHED" if status.state == "SUCCEEDED" else "FAILED"
    ended = tracking.end_pipeline_for(cfg, kfp_run_id, state)
    print(f"pipeline state {status.state}: MLflow parent run {ended or '(none found)'} -> {state}")


COMPONENTS = {fn.__name__: fn for fn in (configure_run, prepare, sample, merge_sample, train, evaluation_shards,
                                          evaluate_shard, merge_evaluate, sft, log_stage, register, report,
                                          finish_run)}

def make_components(image: str) -> SimpleNamespace:
    """The stage functions as KFP components that run in ``image`` (which has kfp: nothing is installed
    at pod start)."""
    return SimpleNamespace(**{name: dsl.component(fn, base_image=image, install_kfp_package=False)
                              for name, fn in COMPONENTS.items()})
