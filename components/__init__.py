"""Kubeflow components, one per stage. Each is thin: it unpacks KFP artifacts, calls the library stage,
writes outputs and metrics (KFP Metrics and MLflow). No algorithm code lives here.

The functions below are plain Python; :func:`make_components` turns them into KFP components for one
image (the image name and tag live in :mod:`lightreasoner.images`, overridable at compile time). KFP
ships each function's source to the container, so every import is inside the function.
"""

from types import SimpleNamespace
from typing import NamedTuple

from kfp import dsl
from kfp.dsl import Dataset, Input, Metrics, Model, Output


def prepare_data(config_yaml: str, overrides: str, run_name: str, kfp_run_id: str,
                 problems: Output[Dataset], metrics: Output[Metrics]) -> NamedTuple(
                     "PrepareOutputs", [("parent_run_id", str)]):
    """Load and normalise the training problems; open the MLflow parent run of this pipeline run."""
    import os
    from collections import namedtuple

    from lightreasoner import tracking
    from lightreasoner.config import load_config_text
    from lightreasoner.data import prepare_data as stage

    cfg = load_config_text(config_yaml, overrides.splitlines(), "pipeline config")
    if kfp_run_id:
        os.environ.setdefault("KFP_RUN_ID", kfp_run_id)
    os.makedirs(problems.path, exist_ok=True)
    path = stage(cfg.data, problems.path)
    parent = tracking.start_pipeline(cfg, run_name or None, {"kfp.run_id": kfp_run_id} if kfp_run_id else None)
    tracking.log_stage(cfg, "prepare", problems.path, parent)
    import pyarrow.parquet as pq

    metrics.log_metric("problems", pq.read_metadata(path).num_rows)
    return namedtuple("PrepareOutputs", ["parent_run_id"])(parent or "")


def sample_contrastive(config_yaml: str, overrides: str, problems: Input[Dataset], shard_index: int,
                       shards: list, shard: Output[Dataset]):
    """Stage 1 on one shard of the batches (every shard on its own GPU node)."""
    from pathlib import Path

    from lightreasoner.config import load_config_text
    from lightreasoner.data import read_problem_file
    from lightreasoner.sampling import sample

    cfg = load_config_text(config_yaml, overrides.splitlines(), "pipeline config")
    probs = read_problem_file(Path(problems.path) / "problems.parquet")
    sample(cfg, shard.path, problems=probs, shard=(shards.index(shard_index), len(shards)))


def merge_samples(config_yaml: str, overrides: str, shards: Input[list[Dataset]], parent_run_id: str,
                  samples: Output[Dataset], metrics: Output[Metrics]):
    """Join the shards into one samples folder (equal to a single-shard run) and log stage 1."""
    from lightreasoner import tracking
    from lightreasoner.config import load_config_text
    from lightreasoner.sampling import merge_shards

    cfg = load_config_text(config_yaml, overrides.splitlines(), "pipeline config")
    result = merge_shards(cfg, [s.path for s in shards], samples.path)
    for key, value in result.manifest["counts"].items():
        metrics.log_metric(key, value)
    metrics.log_metric("effective_beta", result.manifest["effective_beta"])
    tracking.log_stage(cfg, "sample", samples.path, parent_run_id or None)


def finetune_lora(config_yaml: str, overrides: str, samples: Input[Dataset], parent_run_id: str,
                  adapter: Output[Model], metrics: Output[Metrics]):
    """Stage 2: LoRA on the contrastive soft labels (packed)."""
    from lightreasoner import tracking
    from lightreasoner.config import load_config_text
    from lightreasoner.training import train

    cfg = load_config_text(config_yaml, overrides.splitlines(), "pipeline config")
    result = train(cfg, samples.path, adapter.path, resume=True)
    for key in ("tuned_tokens", "steps", "final_loss", "wall_seconds"):
        if isinstance(result.manifest.get(key), int | float):
            metrics.log_metric(key, result.manifest[key])
    tracking.log_stage(cfg, "train", adapter.path, parent_run_id or None)


def evaluate(config_yaml: str, overrides: str, adapter: Input[Model], parent_run_id: str,
             evaluation: Output[Dataset], metrics: Output[Metrics], stage_name: str = "evaluate",
             close_parent: bool = False):
    """Stage 3: base Expert and Expert + adapter on the same held-out problems (``stage_name`` evaluate_sft for
    the SFT baseline's adapter; ``close_parent`` ends the MLflow parent run where no register follows)."""
    import json
    from pathlib import Path

    from lightreasoner import tracking
    from lightreasoner.config import load_config_text
    from lightreasoner.evaluation import evaluate as stage

    cfg = load_config_text(config_yaml, overrides.splitlines(), "pipeline config")
    stage(cfg, None, adapter.path, evaluation.path)
    values = json.loads((Path(evaluation.path) / "metrics.json").read_text())
    for key in ("accuracy_base", "accuracy_tuned", "delta", "delta_ci_low", "delta_ci_high", "mcnemar_p"):
        if isinstance(values.get(key), int | float):
            metrics.log_metric(key, values[key])
    tracking.log_stage(cfg, stage_name, evaluation.path, parent_run_id or None)
    if close_parent:
        tracking.end_pipeline(cfg, parent_run_id or None)


def sft_baseline(config_yaml: str, overrides: str, problems: Input[Dataset], parent_run_id: str,
                 adapter: Output[Model], metrics: Output[Metrics]):
    """The SFT baseline: rejection sampling by the Expert, LoRA on the correct solutions."""
    from pathlib import Path

    from lightreasoner import tracking
    from lightreasoner.config import load_config_text
    from lightreasoner.data import read_problem_file
    from lightreasoner.sft import sft

    cfg = load_config_text(config_yaml, overrides.splitlines(), "pipeline config")
    result = sft(cfg, adapter.path, problems=read_problem_file(Path(problems.path) / "problems.parquet"))
    for key in ("tuned_tokens", "steps", "final_loss", "generate_seconds", "train_seconds", "wall_seconds"):
        if isinstance(result.manifest.get(key), int | float):
            metrics.log_metric(key, result.manifest[key])
    metrics.log_metric("kept_solutions", result.manifest["counts"]["kept_solutions"])
    tracking.log_stage(cfg, "sft", adapter.path, parent_run_id or None)


def efficiency_report(config_yaml: str, overrides: str, samples: Input[Dataset], lr_adapter: Input[Model],
                      lr_evaluation: Input[Dataset], sft_adapter: Input[Model], sft_evaluation: Input[Dataset],
                      parent_run_id: str, report: Output[Dataset], metrics: Output[Metrics]):
    """LightReasoner vs SFT: time, problems, tuned tokens, accuracy and the ratios; closes the parent run."""
    from lightreasoner import tracking
    from lightreasoner.config import load_config_text
    from lightreasoner.report import efficiency_report as stage
    from lightreasoner.report import report_metrics

    cfg = load_config_text(config_yaml, overrides.splitlines(), "pipeline config")
    folders = {"sample": samples.path, "train": lr_adapter.path, "evaluate": lr_evaluation.path,
               "sft": sft_adapter.path, "evaluate_sft": sft_evaluation.path}
    result = stage(cfg, report.path, parent_run_id=parent_run_id or None, folders=folders)
    for key, value in report_metrics(result).items():
        metrics.log_metric(key.split("/", 1)[1], value)
    tracking.end_pipeline(cfg, parent_run_id or None)


def register_model(config_yaml: str, overrides: str, samples: Input[Dataset], adapter: Input[Model],
                   evaluation: Input[Dataset], parent_run_id: str, promote: bool) -> NamedTuple(
                       "RegisterOutputs", [("version", str), ("promoted", bool)]):
    """Register the adapter (alias challenger), then try to promote it to champion; close the parent run."""
    from collections import namedtuple

    from lightreasoner import registry, tracking
    from lightreasoner.config import load_config_text

    cfg = load_config_text(config_yaml, overrides.splitlines(), "pipeline config")
    registered = registry.register(cfg, adapter.path, evaluation.path, samples.path,
                                   parent_run_id=parent_run_id or None)
    promoted = False
    if promote:
        promoted = bool(registry.promote(cfg).promoted)
    tracking.end_pipeline(cfg, parent_run_id or None)
    return namedtuple("RegisterOutputs", ["version", "promoted"])(str(registered.version), promoted)


STAGES = {
    "prepare_data": prepare_data,
    "sample_contrastive": sample_contrastive,
    "merge_samples": merge_samples,
    "finetune_lora": finetune_lora,
    "evaluate": evaluate,
    "register_model": register_model,
    "sft_baseline": sft_baseline,
    "efficiency_report": efficiency_report,
}


def make_components(image: str) -> SimpleNamespace:
    """The stage functions as KFP components that run in ``image``."""
    return SimpleNamespace(**{name: dsl.component(fn, base_image=image) for name, fn in STAGES.items()})
