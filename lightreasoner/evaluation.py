"""Stage 3: evaluation of the base Expert and the Expert with its LoRA adapter on the same problems.

Answers are extracted and graded by :mod:`lightreasoner.answers`; the paired statistics live in
:mod:`lightreasoner.stats` (both re-exported here under their old names).

The run generates greedily in batches (left padding) under the evaluation protocol
(:mod:`lightreasoner.protocols`), scores pass@1 for the base Expert and for the Expert with the adapter on
every benchmark of ``evaluation.benchmarks`` (:mod:`lightreasoner.benchmarks`; else ``evaluation.data``), and
compares the two on the same problems: the paired delta with a bootstrap 95% confidence interval and the exact
McNemar p-value, per benchmark, pooled over all problems (the top-level fields) and averaged over the
benchmarks (``average``, the paper's column).

Output folder (keep these names): ``predictions_base.parquet``, ``predictions_tuned.parquet``,
``metrics.json``, ``accuracy.png``, with benchmarks ``benchmarks.csv`` and ``benchmark_deltas.png``, and
``manifest.json`` (written last).
"""

from __future__ import annotations

import hashlib
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa
from tqdm.auto import tqdm

from .adapters import attach_adapter, check_adapter_base, resolve_adapter
from .answers import GRADED_COLUMNS, answers_match, extract, extract_answer, grade  # noqa: F401 - re-exported
from .config import Config
from .data import Problem, load_problems
from .errors import LightReasonerError
from .models import (
    auto_batch_size,
    generate_greedy,
    load_model,
    load_tokenizer,
    model_fingerprint,
    prompt_token_ids,
    resolve_compile,
    resolve_device,
)
from .outputs import (
    MANIFEST,
    claim_output,
    folder_sha256,
    plan_batches,
    prepare_output,
    write_json_atomic,
    write_table_atomic,
    write_text_atomic,
)
from .plots import plot_accuracy, plot_benchmark_deltas
from .protocols import resolve_protocol, stop_token_ids
from .stats import bootstrap_delta_ci, mcnemar_exact, paired_metrics  # noqa: F401 - re-exported

log = logging.getLogger(__name__)

PREDICTIONS_BASE = "predictions_base.parquet"
PREDICTIONS_TUNED = "predictions_tuned.parquet"
METRICS = "metrics.json"
PLOT = "accuracy.png"
BENCHMARK_TABLE = "benchmarks.csv"
DELTA_PLOT = "benchmark_deltas.png"

PREDICTION_SCHEMA = pa.schema(
    [
        ("problem_id", pa.string()),
        ("output", pa.string()),
        *GRADED_COLUMNS,
        ("tokens_generated", pa.int32()),
        ("benchmark", pa.string()),
        ("answer_type", pa.string()),
    ]
)


# --- generation ----------------------------------------------------------------------------------


@dataclass
class Prediction:
    problem_id: str
    output: str
    extracted: str | None
    gold: str
    correct: bool
    tokens_generated: int
    benchmark: str = "data"
    answer_type: str = "number"


def answers_changed(base: list[Prediction], tuned: list[Prediction] | None) -> int | None:
    """Evaluation problems whose extracted answer differs between the base and the tuned Expert (right or
    wrong): a sign that training changed predictions even when accuracy does not move."""
    if tuned is None:
        return None
    return sum(b.extracted != t.extracted for b, t in zip(base, tuned, strict=True))


def generate_completions(model, tokenizer, prompts: list[list[int]], max_new_tokens: int, batch_size: int,
                         progress: bool = False, desc: str = "generate", compile: bool = False,
                         extra_stops: list[int] | None = None) -> list[list[int]]:
    """Greedy completions (ids up to and including the stop token) in the prompts' order, ``batch_size`` at a
    time (``compile``: static KV cache and torch.compile, see :func:`generate_greedy`; ``extra_stops``: end
    tokens besides the eos)."""
    completions: list[list[int] | None] = [None] * len(prompts)
    with tqdm(total=len(prompts), desc=desc, unit="problem", disable=not progress) as bar:
        for members in plan_batches([len(p) for p in prompts], batch_size):
            outs, _ = generate_greedy(model, tokenizer, [prompts[i] for i in members], max_new_tokens,
                                      compile=compile, extra_stops=extra_stops)
            for i, out in zip(members, outs, strict=True):
                completions[i] = out
            bar.update(len(members))
    return [c or [] for c in completions]


def predict(model, tokenizer, problems: list[Problem], config: Config, progress: bool = False,
            desc: str = "evaluate", *, answer_type: str = "number", benchmark: str = "data") -> list[Prediction]:
    """Generate (under the config's evaluation protocol), decode, extract and grade every problem."""
    protocol = resolve_protocol(config)
    prompts = [prompt_token_ids(tokenizer, p.question, protocol.system_prompt, protocol.chat_template)
               for p in problems]
    ecfg = config.evaluation
    batch_size = auto_batch_size(ecfg.batch_size, [model], max((len(p) for p in prompts), default=1)
                                 + protocol.max_new_tokens, fraction=config.performance.memory_fraction)
    completions = generate_completions(model, tokenizer, prompts, protocol.max_new_tokens, batch_size, progress,
                                       desc, compile=resolve_compile(config.performance.compile, model.device),
                                       extra_stops=stop_token_ids(tokenizer, protocol))
    predictions = []
    for prob, ids in zip(problems, completions, strict=True):
        text = tokenizer.decode(ids, skip_special_tokens=True)
        extracted = extract(text, answer_type, grader=protocol.grader, benchmark=benchmark)
        correct = grade(extracted, prob.answer, answer_type, grader=protocol.grader, benchmark=benchmark)
        predictions.append(Prediction(prob.problem_id, text, extracted, prob.answer, correct, len(ids), benchmark,
                                      answer_type))
    return predictions


# --- outputs ---------------------------------------------------------------------------------------


def write_predictions(predictions: list[Prediction], path: Path) -> None:
    table = pa.Table.from_pylist(
        [
            {"problem_id": p.problem_id, "output": p.output, "extracted": p.extracted, "gold": p.gold,
             "correct": p.correct, "tokens_generated": p.tokens_generated, "benchmark": p.benchmark,
             "answer_type": p.answer_type}
            for p in predictions
        ],
        schema=PREDICTION_SCHEMA,
    )
    write_table_atomic(table, path)


def problems_digest(problems: list[Problem]) -> str:
    """sha256 of the problem ids and gold answers: equal digests mean two evaluations scored the same set."""
    digest = hashlib.sha256()
    for prob in sorted(problems, key=lambda p: p.problem_id):
        digest.update(f"{prob.problem_id}\t{prob.answer}\n".encode())
    return digest.hexdigest()


@dataclass
class EvalSet:
    """One benchmark (or the problems of ``evaluation.data``) and how its answers are graded."""

    name: str
    problems: list[Problem]
    answer_type: str
    version: dict[str, Any]  # source, file_sha256, problems_sha256, n, answer_type


def evaluation_sets(config: Config, problems: list[Problem] | None = None) -> list[EvalSet]:
    """What to evaluate: ``problems`` when given, else the benchmarks of ``evaluation.benchmarks`` (problem
    ids prefixed ``<benchmark>/``), else ``evaluation.data``."""
    ecfg = config.evaluation
    if problems is None and ecfg.benchmarks:
        from .benchmarks import load_benchmark

        sets = []
        for name in ecfg.benchmarks:
            data = load_benchmark(name, ecfg.benchmark_dir, ecfg.data.limit)
            probs = [Problem(f"{name}/{p.problem_id}", p.question, p.answer) for p in data.problems]
            sets.append(EvalSet(name, probs, data.benchmark.answer_type, data.version()))
        return sets
    source = "given" if problems is not None else ecfg.data.path
    if problems is None:
        problems = load_problems(ecfg.data)
    if not problems:
        raise LightReasonerError(f"{ecfg.data.path}: no problems (empty data set)")
    version = {"source": source, "file_sha256": None, "problems_sha256": problems_digest(problems),
               "n": len(problems), "answer_type": "number"}
    return [EvalSet("data", problems, "number", version)]


@dataclass
class EvalResult:
    output: Path
    metrics: dict[str, Any]
    manifest: dict[str, Any]
    predictions_base: list[Prediction]
    predictions_tuned: list[Prediction] | None


def _prediction_rows(predictions: list[Prediction]) -> list[dict[str, Any]]:
    return [{"problem_id": p.problem_id, "output": p.output, "extracted": p.extracted, "gold": p.gold,
             "correct": p.correct, "tokens_generated": p.tokens_generated, "benchmark": p.benchmark,
             "answer_type": p.answer_type} for p in predictions]


def _cached_base(rows: list[dict[str, Any]] | None, eval_set: EvalSet) -> list[Prediction] | None:
    if rows is None or [r["problem_id"] for r in rows] != [p.problem_id for p in eval_set.problems]:
        return None
    return [Prediction(r["problem_id"], r["output"], r["extracted"], r["gold"], bool(r["correct"]),
                       int(r["tokens_generated"]), r.get("benchmark") or eval_set.name,
                       r.get("answer_type") or eval_set.answer_type) for r in rows]


def benchmark_rows(metrics: dict[str, Any]) -> list[dict[str, Any]]:
    """The per-benchmark table (the paper's): one row per benchmark, then the average, as plain values."""
    rows = []
    for name, m in (metrics.get("benchmarks") or {}).items():
        rows.append({"benchmark": name, **{k: m.get(k) for k in BENCHMARK_COLUMNS[1:]}})
    average = metrics.get("average")
    if average and len(rows) > 1:
        rows.append({"benchmark": "average", **{k: average.get(k) for k in BENCHMARK_COLUMNS[1:]}})
    return rows


BENCHMARK_COLUMNS = ("benchmark", "n", "accuracy_base", "accuracy_tuned", "delta", "delta_ci_low", "delta_ci_high",
                     "mcnemar_p")


def write_benchmark_table(metrics: dict[str, Any], path: Path) -> None:
    """``benchmarks.csv``: the per-benchmark table (accuracies, delta, its 95% interval, McNemar p)."""
    import csv
    import io

    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(BENCHMARK_COLUMNS), lineterminator="\n")
    writer.writeheader()
    for row in benchmark_rows(metrics):
        writer.writerow({k: "" if v is None else v for k, v in row.items()})
    write_text_atomic(buf.getvalue(), path)


def evaluate(config: Config, model: str | None, adapter: str | Path | None, output: str | Path, *,
             problems: list[Problem] | None = None, limit: int | None = None,
             progress: bool = True, base_predictions: list[Prediction] | None = None) -> EvalResult:
    """Stage 3: score the base Expert and (with ``adapter``) the Expert + adapter on the same problems.

    ``model`` overrides ``expert.model``; ``limit`` overrides ``evaluation.data.limit`` (per benchmark);
    ``base_predictions`` (of the same Expert on the same problems, from an earlier evaluation) are reused
    instead of generating the base again (how ``run --method both`` scores both adapters against one base).
    With ``evaluation.benchmarks`` every benchmark is evaluated with one model load; the base predictions are
    read from ``evaluation.prediction_cache`` when an earlier evaluation made them. Writes the predictions,
    ``metrics.json``, ``accuracy.png`` (and ``benchmarks.csv``, ``benchmark_deltas.png``) and finally
    ``manifest.json`` to ``output``.
    """
    from . import prediction_cache
    from .outputs import library_versions

    started = time.perf_counter()
    config = config.model_copy(deep=True)
    if model is not None:
        if not str(model).strip():
            raise LightReasonerError("--model: empty model name")
        config.expert.model = str(model)
    if limit is not None:
        if limit < 1:
            raise LightReasonerError(f"--limit {limit}: must be at least 1")
        config.evaluation.data.limit = limit
    out = Path(output)
    protocol = resolve_protocol(config)

    # Everything that can be refused is checked before any output is written.
    claim = prepare_output(out, stage="evaluate", what="evaluation", rerun=True)  # evaluations are redone
    source = resolve_adapter(adapter) if adapter is not None else None
    if problems is not None and limit is not None:
        problems = problems[:limit]
    if problems is not None and not problems:
        raise LightReasonerError(f"{config.evaluation.data.path}: no problems (empty data set)")
    sets = evaluation_sets(config, problems)
    all_problems = [p for s in sets for p in s.problems]
    device = resolve_device(config.expert.device)
    tokenizer = load_tokenizer(config.expert, "expert")
    expert = load_model(config.expert, "expert", device)
    expert_info = model_fingerprint(config.expert, expert)
    tuned_model = None
    if source is not None:
        check_adapter_base(source, config, expert_info, expert)
        tuned_model = attach_adapter(expert, source)
    adapter_sha256 = folder_sha256(source.folder) if source is not None else None
    if base_predictions is not None and [p.problem_id for p in base_predictions] != [p.problem_id for p in all_problems]:
        raise LightReasonerError("base predictions: made for other evaluation problems")
    claim_output(claim, retire=(PREDICTIONS_TUNED, BENCHMARK_TABLE, DELTA_PLOT))
    load_seconds = time.perf_counter() - started

    ecfg = config.evaluation
    protocol_info = protocol.as_dict()
    protocol_info["stop_token_ids"] = stop_token_ids(tokenizer, protocol)
    base_preds: list[Prediction] = []
    tuned_preds: list[Prediction] | None = [] if tuned_model is not None else None
    base_seconds, tuned_seconds = 0.0, (0.0 if tuned_model is not None else None)
    per_set: dict[str, Any] = {}
    cache_hits: dict[str, bool] = {}
    offset = 0
    for eval_set in sets:
        n = len(eval_set.problems)
        kw = {"answer_type": eval_set.answer_type, "benchmark": eval_set.name}
        label = "" if eval_set.name == "data" else f" {eval_set.name}"
        t0 = time.perf_counter()
        key = prediction_cache.cache_key(expert_info, config.expert.dtype, protocol_info, eval_set.version)
        if base_predictions is not None:
            preds = [Prediction(p.problem_id, p.output, p.extracted, p.gold, p.correct, p.tokens_generated,
                                eval_set.name, eval_set.answer_type) for p in base_predictions[offset:offset + n]]
            cache_hits[eval_set.name] = False
        else:
            preds = _cached_base(prediction_cache.load(ecfg.prediction_cache, key), eval_set)
            cache_hits[eval_set.name] = preds is not None
            if preds is None:
                if tuned_model is not None:
                    with tuned_model.disable_adapter():
                        preds = predict(tuned_model, tokenizer, eval_set.problems, config, progress,
                                        f"evaluate base{label}", **kw)
                else:
                    preds = predict(expert, tokenizer, eval_set.problems, config, progress, f"evaluate base{label}",
                                    **kw)
                prediction_cache.store(ecfg.prediction_cache, key, _prediction_rows(preds), PREDICTION_SCHEMA)
        base_seconds += time.perf_counter() - t0
        base_preds += preds
        tuned_set = None
        if tuned_model is not None:
            t0 = time.perf_counter()
            tuned_set = predict(tuned_model, tokenizer, eval_set.problems, config, progress,
                                f"evaluate tuned{label}", **kw)
            tuned_seconds += time.perf_counter() - t0
            tuned_preds += tuned_set
        m = paired_metrics([p.correct for p in preds], None if tuned_set is None else [p.correct for p in tuned_set],
                           bootstrap_samples=ecfg.bootstrap_samples, seed=ecfg.seed)
        m["version"] = eval_set.version
        m["base_cache_key"] = key
        m["base_from_cache"] = cache_hits[eval_set.name]
        per_set[eval_set.name] = m
        offset += n

    metrics = paired_metrics(
        [p.correct for p in base_preds],
        None if tuned_preds is None else [p.correct for p in tuned_preds],
        bootstrap_samples=ecfg.bootstrap_samples,
        seed=ecfg.seed,
    )
    metrics["answers_changed"] = answers_changed(base_preds, tuned_preds)
    metrics["outputs_changed"] = (None if tuned_preds is None else
                                  sum(b.output != t.output for b, t in zip(base_preds, tuned_preds, strict=True)))
    metrics["data"] = ecfg.data.model_dump(mode="json")
    metrics["problems_sha256"] = problems_digest(all_problems)
    metrics["expert"] = expert_info
    metrics["adapter"] = str(source.given) if source is not None else None
    # The identity of the adapter scored here: `register` refuses to pair these metrics with another one.
    metrics["adapter_sha256"] = adapter_sha256
    # The protocol and the benchmark versions: two evaluations are comparable only when these match.
    metrics["protocol"] = protocol_info
    metrics["benchmarks"] = per_set
    names = list(per_set)
    average = {"n_benchmarks": len(names), "n": sum(per_set[k]["n"] for k in names)}
    for key in ("accuracy_base", "accuracy_tuned", "delta"):
        values = [per_set[k][key] for k in names]
        average[key] = None if any(v is None for v in values) else sum(values) / len(values)
    for key in ("delta_ci_low", "delta_ci_high", "mcnemar_p"):
        average[key] = None
    metrics["average"] = average  # the paper's "Avg." column: the mean over the benchmarks run

    write_predictions(base_preds, out / PREDICTIONS_BASE)
    if tuned_preds is not None:
        write_predictions(tuned_preds, out / PREDICTIONS_TUNED)
    write_json_atomic(metrics, out / METRICS)
    what = ", ".join(names) if ecfg.benchmarks and problems is None else Path(ecfg.data.path).name
    plot_accuracy(metrics, out / PLOT, title=f"{Path(config.expert.model).name} on {what}")
    if ecfg.benchmarks and problems is None:
        write_benchmark_table(metrics, out / BENCHMARK_TABLE)
        if tuned_preds is not None:
            plot_benchmark_deltas(benchmark_rows(metrics), out / DELTA_PLOT, title=f"{Path(config.expert.model).name}: delta per benchmark")

    def _tokens(preds):
        return sum(p.tokens_generated for p in preds) if preds else 0

    manifest = {
        "stage": "evaluate",
        "config": config.dump(),
        "expert": expert_info,
        "adapter": {
            "path": str(source.given),
            "adapter_folder": str(source.folder),
            "training_manifest": source.training_manifest is not None,
            "sha256": adapter_sha256,
        } if source is not None else None,
        "protocol": protocol_info,
        "benchmarks": {name: m["version"] for name, m in per_set.items()},
        "base_from_cache": cache_hits,
        "metrics": metrics,
        "versions": library_versions(),
        "timing": {
            "load_seconds": load_seconds,
            "base_seconds": base_seconds,
            "tuned_seconds": tuned_seconds,
            "total_seconds": time.perf_counter() - started,
            "base_tokens": _tokens(base_preds),
            "tuned_tokens": _tokens(tuned_preds) if tuned_preds is not None else None,
            "base_tokens_per_second": _tokens(base_preds) / base_seconds if base_seconds else None,
        },
        "files": sorted(p.name for p in out.iterdir() if p.is_file() and not p.name.endswith(".tmp")),
    }
    write_json_atomic(manifest, out / MANIFEST)
    return EvalResult(out, metrics, manifest, base_preds, tuned_preds)
