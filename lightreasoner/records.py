"""What MLflow records of a finished stage, read from its output folder: the config it ran with, its
metrics and loss series, the files to log as artifacts, its plots and the data sets it read (MLflow
dataset inputs). One reader per stage (:data:`READERS`); :func:`lightreasoner.tracking.log_stage` logs
what a reader returns."""

from __future__ import annotations

import functools
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import LightReasonerError
from .outputs import read_json
from .plots import plot_accuracy, plot_loss, sample_kl_plots


@dataclass(frozen=True)
class StageInput:
    """A data set a stage read, logged as an MLflow dataset input (the UI's Datasets column, lineage).

    ``source``: a file or folder (local path or s3:// URI), a Hugging Face hub name (``hub``), or
    ``synthetic`` (the built-in problems). ``digest``: of the content (a prefix of its sha256); None lets
    MLflow derive one from the name and source. ``context``: the input's ``mlflow.data.context`` tag."""

    name: str
    source: str
    context: str
    digest: str | None = None
    split: str | None = None
    hf_config: str | None = None
    hub: bool = False
    rows: int | None = None


@dataclass
class StageRecord:
    config: dict[str, Any] | None
    metrics: dict[str, float]
    steps: list[tuple[str, float, int]]  # (name, value, step) series
    files: list[tuple[Path, str | None]]  # (local file or folder, artifact path)
    json_files: list[tuple[Path, str | None]]  # logged as redacted copies
    plots: list[Path]
    inputs: list[StageInput] = field(default_factory=list)  # data sets the stage read (mlflow.log_input)
    tables: list[tuple[str, Any]] = field(default_factory=list)  # (artifact file, DataFrame): mlflow.log_table


def number(value: Any) -> float | None:
    """A value as a float metric, or None (missing, a flag, a list, text that is not a number)."""
    try:
        return None if value is None or isinstance(value, bool | list | dict) else float(value)
    except (TypeError, ValueError):
        return None


def _metrics(prefix: str, values: Mapping[str, Any]) -> dict[str, float]:
    return {f"{prefix}/{k}": v for k, v in ((k, number(v)) for k, v in values.items()) if v is not None}


def read_sample(folder: Path, tmp: Path) -> StageRecord:
    manifest = read_json(folder / "manifest.json", "samples")
    counts = manifest.get("counts", {})
    beta = float(manifest.get("effective_beta", 0.0))
    timing = manifest.get("timing", {})
    metrics = _metrics("sample", {
        "problems": counts.get("problems"), "steps": counts.get("steps"), "kept_steps": counts.get("selected"),
        "kept_fraction": counts.get("kept_fraction"), "mean_kl": counts.get("mean_kl"),
        "median_kl": counts.get("median_kl"), "effective_beta": beta,
        "problems_per_second": timing.get("problems_per_second"), "seconds": timing.get("sampling_seconds"),
    })
    files = [(folder / "samples.parquet", None)] if (folder / "samples.parquet").is_file() else []
    plots = sample_kl_plots(folder, manifest, tmp) if (folder / "trajectories.parquet").is_file() else []
    data = (manifest.get("config") or {}).get("data")
    inputs = [_problems_input(data, "training", _ids_digest(folder / "trajectories.parquet"),
                              _int(counts.get("problems")))] if data else []
    return StageRecord(manifest.get("config"), metrics, [], files, [(folder / "manifest.json", None)], plots,
                       inputs)


def read_train(folder: Path, tmp: Path) -> StageRecord:
    manifest = read_json(folder / "manifest.json", "training")
    schedule = manifest.get("schedule") or {}
    per_update = schedule.get("kept_samples_per_update") or {}
    heldout = manifest.get("heldout") or {}
    metrics = _metrics("train", {
        **{k: manifest.get(k) for k in ("steps", "final_loss", "tuned_tokens", "wall_seconds", "train_seconds")},
        "updates": schedule.get("updates"), "kept_samples_seen": schedule.get("kept_samples_seen"),
        **{f"kept_samples_per_update_{k}": per_update.get(k) for k in ("mean", "min", "max")},
        **{f"heldout_{k}": heldout.get(k) for k in ("kl_before", "kl_after", "kl_drop")},
    })
    steps = []
    for point in manifest.get("loss_history") or []:
        loss, step = number(point.get("loss")), point.get("step")
        if loss is not None and step is not None:
            steps.append(("train/loss", loss, int(step)))
    files = [(folder / name, name) for name in ("adapter", "tokenizer") if (folder / name).is_dir()]
    samples = manifest.get("samples") or {}
    digest = manifest.get("samples_sha256") or (samples.get("sha256") or {}).get("samples.parquet")
    inputs = [StageInput("samples", str(samples["path"]), "training", digest=_digest(digest),
                         rows=_int((manifest.get("counts") or {}).get("kept_steps")))] if samples.get("path") else []
    plots = [plot_loss(steps, tmp / LOSS_PLOT, "LightReasoner training loss")] if steps else []
    return StageRecord(manifest.get("config"), metrics, steps, files, [(folder / "manifest.json", None)], plots,
                       inputs)


def read_sft(folder: Path, tmp: Path) -> StageRecord:
    """The SFT baseline (lightreasoner.sft): like a training folder, metrics named ``sft/...``."""
    manifest = read_json(folder / "manifest.json", "SFT")
    counts = manifest.get("counts") or {}
    metrics = _metrics("sft", {
        **{k: manifest.get(k) for k in ("steps", "final_loss", "tuned_tokens", "wall_seconds", "train_seconds",
                                        "generate_seconds")},
        **{k: counts.get(k) for k in ("problems", "samples", "kept_solutions", "kept_problems", "kept_fraction")},
    })
    steps = [("sft/loss", float(p["loss"]), int(p["step"])) for p in manifest.get("loss_history") or []
             if number(p.get("loss")) is not None and p.get("step") is not None]
    files = [(folder / name, name) for name in ("adapter", "tokenizer") if (folder / name).is_dir()]
    files += [(folder / "solutions.parquet", None)] if (folder / "solutions.parquet").is_file() else []
    plots = [plot_loss(steps, tmp / LOSS_PLOT, "SFT training loss")] if steps else []
    return StageRecord(manifest.get("config"), metrics, steps, files, [(folder / "manifest.json", None)], plots)


def read_evaluate(folder: Path, tmp: Path, prefix: str = "evaluate") -> StageRecord:
    values = read_json(folder / "metrics.json", "evaluation")
    manifest = folder / "manifest.json"
    config = json.loads(manifest.read_text()).get("config") if manifest.is_file() else None
    keys = ("n", "accuracy_base", "accuracy_tuned", "delta", "delta_ci_low", "delta_ci_high", "mcnemar_p",
            "answers_changed")
    metrics = _metrics(prefix, {k: values.get(k) for k in keys})
    metrics.update(_metrics(prefix, benchmark_metrics(values)))  # evaluate/<benchmark>/accuracy_base ...
    files = [(folder / n, None) for n in ("predictions_base.parquet", "predictions_tuned.parquet", "benchmarks.csv")
             if (folder / n).is_file()]
    jsons = [(folder / "metrics.json", None)] + ([(manifest, None)] if manifest.is_file() else [])
    if (folder / "accuracy.png").is_file():
        plots = [folder / "accuracy.png"]
    elif values.get("accuracy_base") is not None and values.get("accuracy_tuned") is not None:
        plots = [plot_accuracy(values, tmp / "accuracy.png")]
    else:
        plots = []
    if (folder / "benchmark_deltas.png").is_file():
        plots.append(folder / "benchmark_deltas.png")
    inputs = []
    data = ((config or {}).get("evaluation") or {}).get("data")
    benchmarks = {k: v for k, v in (values.get("benchmarks") or {}).items() if k != "data"}
    for name, bench in benchmarks.items():  # each benchmark, digested by its version (ids and gold answers)
        version = bench.get("version") or {}
        inputs.append(StageInput(name, str(version.get("source") or name), "evaluation",
                                 digest=_digest(version.get("problems_sha256")), rows=_int(version.get("n"))))
    if data and not benchmarks:  # the evaluation problems: their source, digested by the problem ids really scored
        inputs.append(_problems_input(data, "evaluation", _ids_digest(folder / "predictions_base.parquet"),
                                      _int(values.get("n"))))
    return StageRecord(config, metrics, [], files, jsons, plots, inputs, evaluation_tables(folder, values))


LOSS_PLOT = "loss_curve.png"
PROBLEM_TABLE = "tables/problems.json"
BENCHMARK_TABLE = "tables/benchmarks.json"
BENCHMARK_TABLE_COLUMNS = ("benchmark", "n", "accuracy_base", "accuracy_tuned", "delta", "delta_ci_low",
                           "delta_ci_high", "mcnemar_p")


def evaluation_tables(folder: Path, values: Mapping[str, Any]) -> list[tuple[str, Any]]:
    """The evaluation as MLflow tables (the UI's table view, ``mlflow.load_table``): one row per problem
    (benchmark, question, gold, base and tuned extracted answer, both correct flags; the full outputs stay in
    the predictions Parquet files, which would make the table too large to browse) and one row per
    benchmark (accuracies, delta and its interval, McNemar p; with an ``average`` row over benchmarks)."""
    import pandas as pd
    import pyarrow.parquet as pq

    tables = []
    base_path, tuned_path = folder / "predictions_base.parquet", folder / "predictions_tuned.parquet"
    if base_path.is_file():
        base = pq.read_table(base_path).to_pandas()
        table = pd.DataFrame({"benchmark": base["benchmark"] if "benchmark" in base else "data",
                              "problem_id": base["problem_id"]})
        questions = folder / "questions.parquet"  # written by evaluations since the tables exist
        if questions.is_file():
            q = pq.read_table(questions).to_pandas()
            table["question"] = table["problem_id"].map(dict(zip(q["problem_id"], q["question"], strict=True)))
        table["gold"] = base["gold"]
        table["base_answer"] = base["extracted"]
        table["base_correct"] = base["correct"].astype(bool)
        if tuned_path.is_file():
            tuned = pq.read_table(tuned_path).to_pandas().set_index("problem_id").reindex(base["problem_id"])
            table["tuned_answer"] = tuned["extracted"].to_numpy()
            table["tuned_correct"] = tuned["correct"].fillna(False).astype(bool).to_numpy()
        tables.append((PROBLEM_TABLE, table))
    if (folder / "benchmarks.csv").is_file():  # the evaluation's own per-benchmark table (and its average)
        tables.append((BENCHMARK_TABLE, pd.read_csv(folder / "benchmarks.csv")))
    elif values.get("accuracy_base") is not None:  # one data set: its pooled numbers
        row = {"benchmark": "data", **{k: values.get(k) for k in BENCHMARK_TABLE_COLUMNS[1:]}}
        tables.append((BENCHMARK_TABLE, pd.DataFrame([row], columns=list(BENCHMARK_TABLE_COLUMNS))))
    return tables


def read_prepare(folder: Path, tmp: Path) -> StageRecord:
    import pyarrow.parquet as pq

    path = folder if folder.is_file() else folder / "problems.parquet"
    if not path.is_file():
        raise LightReasonerError(f"{folder}: missing problems.parquet (not a prepared data folder)")
    rows = pq.ParquetFile(path).metadata.num_rows
    metrics = {"prepare/problems": float(rows)}
    manifest = path.parent / "manifest.json"
    config = json.loads(manifest.read_text()).get("config") if manifest.is_file() else None
    record = StageRecord(config, metrics, [], [], [(manifest, None)] if manifest.is_file() else [], [])
    # Digested by the problem ids (like the sample and evaluate inputs), so one data set links the runs.
    record.inputs.append(StageInput("problems", str(path), "training", digest=_ids_digest(path), rows=rows))
    return record


def _problems_input(data: Mapping[str, Any], context: str, digest: str | None, rows: int | None) -> StageInput:
    """The problems a data config names (``data`` / ``evaluation.data`` section) as a stage input."""
    source = str(data.get("path") or "synthetic")
    split = data.get("split")
    hub = source != "synthetic" and not source.startswith("s3://") and not (
        Path(source).exists() or source.endswith((".jsonl", ".json", ".parquet")))
    name = f"{source}:{split}" if split and (hub or source == "synthetic") else source
    if data.get("limit"):
        name += f"[:{data['limit']}]"
    return StageInput(name, source, context, digest=digest, split=split,
                      hf_config=data.get("hf_config") if hub else None, hub=hub, rows=rows)


def _int(value: Any) -> int | None:
    value = number(value)
    return int(value) if value is not None else None


def _digest(sha256: str | None) -> str | None:
    """MLflow keeps at most 36 characters of a digest: the first 16 hex digits of the sha256."""
    return str(sha256)[:16] if sha256 else None


def _ids_digest(predictions: Path) -> str | None:
    """Digest of the problem ids in a Parquet file (problems, trajectories, predictions): which problems,
    in which order; a problem id is itself a digest of the question."""
    import hashlib

    import pyarrow.parquet as pq

    if not predictions.is_file():
        return None
    try:
        ids = pq.read_table(predictions, columns=["problem_id"]).column("problem_id").to_pylist()
    except (KeyError, ValueError, OSError):
        return None
    return _digest(hashlib.sha256("\n".join(map(str, ids)).encode()).hexdigest())


def prepare_inputs(record: StageRecord, config: Mapping[str, Any]) -> list[StageInput]:
    """prepare reads the configured problems (file, hub name or synthetic): its input is that source,
    digested by the problems.parquet it wrote (the reader only knows that file)."""
    data = config.get("data") or {}
    if not record.inputs or not data:
        return record.inputs
    written = record.inputs[0]
    return [_problems_input(data, written.context, written.digest, written.rows)]


READERS = {"prepare": read_prepare, "sample": read_sample, "train": read_train, "evaluate": read_evaluate,
           "sft": read_sft, "evaluate_sft": functools.partial(read_evaluate, prefix="evaluate_sft")}


def paper_of(metrics: dict[str, Any]) -> dict[str, Any] | None:
    """The paper comparison of evaluation metrics: the one they carry, else computed from them."""
    from .benchmarks import paper_comparison

    return metrics["paper"] if "paper" in metrics else paper_comparison(metrics)


def benchmark_metrics(metrics: dict[str, Any]) -> dict[str, float]:
    """Per-benchmark metrics as flat names (``<benchmark>/accuracy_base`` ...), for KFP and MLflow."""
    out: dict[str, float] = {}
    per = metrics.get("benchmarks") or {}
    if not per or list(per) == ["data"]:
        return out
    for name, m in [*per.items(), ("average", metrics.get("average") or {})]:
        for key in ("accuracy_base", "accuracy_tuned", "delta", "mcnemar_p"):
            value = m.get(key)
            if isinstance(value, int | float) and not isinstance(value, bool):
                out[f"{name}/{key}"] = float(value)
    # The paper's published accuracies (fractions, as ours) beside them, for a paper Expert.
    for row in (paper_of(metrics) or {}).get("rows") or []:
        for key in ("paper_base", "paper_sft", "paper_lightreasoner"):
            if row.get(key) is not None:
                out[f"{row['benchmark']}/{key}"] = float(row[key]) / 100
    return out
