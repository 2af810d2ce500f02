"""Stage 3: evaluation of the base Expert and the Expert with its LoRA adapter on the same problems.

Answers are extracted and graded by :mod:`lightreasoner.answers`; the paired statistics live in
:mod:`lightreasoner.stats` (both re-exported here under their old names).

The run generates greedily in batches (left padding) under the evaluation protocol
(:mod:`lightreasoner.protocols`), scores pass@1 for the base Expert and for the Expert with the adapter on
every benchmark of ``evaluation.benchmarks`` (:mod:`lightreasoner.benchmarks`; else ``evaluation.data``), and
compares the two on the same problems: the paired delta with a bootstrap 95% confidence interval and the exact
McNemar p-value, per benchmark, pooled over all problems (the top-level fields) and averaged over the
benchmarks (``average``, the paper's column).

Output folder (keep these names): ``predictions_base.parquet``, ``predictions_tuned.parquet``, ``questions.parquet``,
``metrics.json``, ``accuracy.png``, with benchmarks ``benchmarks.csv`` and ``benchmark_deltas.png``, and
``manifest.json`` (written last).

One evaluation is four steps: load (:func:`load_scorer`), score one model side on one benchmark or one
(benchmark, shard) slice (:func:`score`), aggregate the predictions into the metrics (:func:`aggregate`) and
write the folder (:func:`write_evaluation`). :func:`evaluate` runs them in one process; across pods,
:func:`evaluate_shard` scores one shard (every n-th batch of each benchmark, :func:`shard_set`) for one or
both sides into a shard folder (the predictions with each problem's ``index``, a manifest of stage
``evaluate-shard``) and :func:`merge_evaluation` joins the shards into the same folder as :func:`evaluate`.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
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
    resolve_compile,
    resolve_device,
)
from .outputs import (
    MANIFEST,
    StageOutput,
    folder_sha256,
    plan_batches,
    write_json_atomic,
    write_table_atomic,
    write_text_atomic,
)
from .plots import plot_accuracy, plot_benchmark_deltas
from .protocols import cut_output, prompt_ids, resolve_protocol, stop_token_ids, text_stops
from .stats import bootstrap_delta_ci, mcnemar_exact, paired_metrics  # noqa: F401 - re-exported

log = logging.getLogger(__name__)

PREDICTIONS_BASE = "predictions_base.parquet"
PREDICTIONS_TUNED = "predictions_tuned.parquet"
METRICS = "metrics.json"
PLOT = "accuracy.png"
BENCHMARK_TABLE = "benchmarks.csv"
DELTA_PLOT = "benchmark_deltas.png"
QUESTIONS = "questions.parquet"  # problem_id -> question: the per-problem table MLflow shows (records.evaluation_tables)

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
                         extra_stops: list[int] | None = None, stop_strings: tuple[str, ...] = ()) -> list[list[int]]:
    """Greedy completions (ids up to and including the stop token) in the prompts' order, ``batch_size`` at a
    time (``compile``: static KV cache and torch.compile, see :func:`generate_greedy`; ``extra_stops``: end
    tokens besides the eos; ``stop_strings``: texts that end a completion)."""
    completions: list[list[int] | None] = [None] * len(prompts)
    with tqdm(total=len(prompts), desc=desc, unit="problem", disable=not progress) as bar:
        for members in plan_batches([len(p) for p in prompts], batch_size):
            outs, _ = generate_greedy(model, tokenizer, [prompts[i] for i in members], max_new_tokens,
                                      compile=compile, extra_stops=extra_stops, stop_strings=stop_strings)
            for i, out in zip(members, outs, strict=True):
                completions[i] = out
            bar.update(len(members))
    return [c or [] for c in completions]


def predict(model, tokenizer, problems: list[Problem], config: Config, progress: bool = False,
            desc: str = "evaluate", *, answer_type: str = "number", benchmark: str = "data") -> list[Prediction]:
    """Generate (under the config's evaluation protocol), decode, extract and grade every problem."""
    protocol = resolve_protocol(config)
    prompts = [prompt_ids(tokenizer, p.question, protocol) for p in problems]
    ecfg = config.evaluation
    batch_size = auto_batch_size(ecfg.batch_size, [model], max((len(p) for p in prompts), default=1)
                                 + protocol.max_new_tokens, fraction=config.performance.memory_fraction)
    completions = generate_completions(model, tokenizer, prompts, protocol.max_new_tokens, batch_size, progress,
                                       desc, compile=resolve_compile(config.performance.compile, model.device),
                                       extra_stops=stop_token_ids(tokenizer, protocol),
                                       stop_strings=text_stops(tokenizer, protocol))
    predictions = []
    for prob, ids in zip(problems, completions, strict=True):
        text = cut_output(tokenizer.decode(ids, skip_special_tokens=True), protocol)
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
    indices: list[int] | None = None  # a slice (shard_set): its problems' positions in the benchmark


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
    if rows is not None and eval_set.indices is not None and len(rows) == eval_set.version.get("n"):
        rows = [rows[i] for i in eval_set.indices]  # the whole benchmark's entry: this slice's rows
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


# --- one evaluation: load, score, aggregate, write (in one pod, or sharded across pods and merged) -------

SIDES = ("base", "tuned")
SHARD_STAGE = "evaluate-shard"
# A shard's predictions: the evaluation's columns and each problem's position in its benchmark.
SHARD_SCHEMA = PREDICTION_SCHEMA.append(pa.field("index", pa.int32())).append(pa.field("question", pa.string()))


def configured(config: Config, model: str | None = None, limit: int | None = None) -> Config:
    """A copy of ``config`` with ``model`` (``expert.model``) and ``limit`` (``evaluation.data.limit``) set."""
    config = config.model_copy(deep=True)
    if model is not None:
        if not str(model).strip():
            raise LightReasonerError("--model: empty model name")
        config.expert.model = str(model)
    if limit is not None:
        if limit < 1:
            raise LightReasonerError(f"--limit {limit}: must be at least 1")
        config.evaluation.data.limit = limit
    return config


def _given_problems(config: Config, problems: list[Problem] | None, limit: int | None) -> list[Problem] | None:
    if problems is not None and limit is not None:
        problems = problems[:limit]
    if problems is not None and not problems:
        raise LightReasonerError(f"{config.evaluation.data.path}: no problems (empty data set)")
    return problems


@dataclass
class Scorer:
    """The models of one evaluation pod: the tokenizer, the base Expert and, given an adapter, the Expert with
    the adapter (whose base outputs come from the same weights with the adapter disabled)."""

    config: Config
    tokenizer: Any
    expert: Any
    expert_info: dict[str, Any]
    protocol_info: dict[str, Any]
    source: Any = None  # the AdapterSource, or None
    tuned_model: Any = None
    adapter_sha256: str | None = None

    def adapter_info(self) -> dict[str, Any] | None:
        if self.source is None:
            return None
        return {"path": str(self.source.given), "adapter_folder": str(self.source.folder),
                "training_manifest": self.source.training_manifest is not None, "sha256": self.adapter_sha256}


def load_scorer(config: Config, source) -> Scorer:
    """Load the Expert (and attach the adapter ``source``, checked against it) on the configured device."""
    device = resolve_device(config.expert.device)
    tokenizer = load_tokenizer(config.expert, "expert")
    expert = load_model(config.expert, "expert", device)
    expert_info = model_fingerprint(config.expert, expert)
    tuned_model = None
    if source is not None:
        check_adapter_base(source, config, expert_info, expert)
        tuned_model = attach_adapter(expert, source)
    protocol = resolve_protocol(config)
    protocol_info = protocol.as_dict()
    protocol_info["stop_token_ids"] = stop_token_ids(tokenizer, protocol)
    return Scorer(config, tokenizer, expert, expert_info, protocol_info, source, tuned_model,
                  folder_sha256(source.folder) if source is not None else None)


def shard_set(eval_set: EvalSet, tokenizer, config: Config, shard: tuple[int, int]) -> EvalSet:
    """Slice ``shard = (i, n)`` of one benchmark: the problems of every n-th batch of the batch plan a single
    pod makes for the whole benchmark, from batch i, in their order. With a numeric ``evaluation.batch_size``
    every problem is generated in the same batch as in a single-pod run, so the merged shards equal it; with
    ``auto`` the slices are cut at batches of AUTO_BATCH_CPU and each pod sizes its own batches (equal up to
    float rounding)."""
    from .config import AUTO_BATCH_CPU

    index, count = shard
    protocol = resolve_protocol(config)
    lengths = [len(prompt_ids(tokenizer, p.question, protocol))
               for p in eval_set.problems]
    size = config.evaluation.batch_size
    batches = plan_batches(lengths, AUTO_BATCH_CPU if size == "auto" else int(size))
    members = sorted(m for b, batch in enumerate(batches) if b % count == index for m in batch)
    return EvalSet(eval_set.name, [eval_set.problems[m] for m in members], eval_set.answer_type, eval_set.version,
                   indices=members)


@dataclass
class Scored:
    predictions: list[Prediction]
    seconds: float
    from_cache: bool = False  # base predictions read from evaluation.prediction_cache


def base_cache_key(expert_info: dict[str, Any], config: Config, protocol_info: dict[str, Any],
                   version: dict[str, Any]) -> str:
    """The prediction cache's key of the base Expert's predictions on one benchmark (``version``)."""
    from . import prediction_cache

    return prediction_cache.cache_key(expert_info, config.expert.dtype, protocol_info, version)


def score(scorer: Scorer, eval_set: EvalSet, side: str, *, progress: bool = True,
          reuse: list[Prediction] | None = None) -> Scored:
    """One model side (``base`` or ``tuned``) on one benchmark or one (benchmark, shard) slice of it: the
    graded predictions, in the problems' order. The base side reuses ``reuse`` (the base predictions of an
    earlier evaluation) or the prediction cache (the whole benchmark's entry, else the slice's), and stores
    what it generates there."""
    from . import prediction_cache

    config = scorer.config
    kw = {"answer_type": eval_set.answer_type, "benchmark": eval_set.name}
    label = "" if eval_set.name == "data" else f" {eval_set.name}"
    t0 = time.perf_counter()
    if side == "tuned":
        if scorer.tuned_model is None:
            raise LightReasonerError("tuned predictions: no adapter given")
        preds = predict(scorer.tuned_model, scorer.tokenizer, eval_set.problems, config, progress,
                        f"evaluate tuned{label}", **kw)
        return Scored(preds, time.perf_counter() - t0)
    if side != "base":
        raise LightReasonerError(f"side {side!r}: expected one of {', '.join(SIDES)}")
    if reuse is not None:
        preds = [Prediction(p.problem_id, p.output, p.extracted, p.gold, p.correct, p.tokens_generated,
                            eval_set.name, eval_set.answer_type) for p in reuse]
        return Scored(preds, time.perf_counter() - t0)
    cache = config.evaluation.prediction_cache
    key = base_cache_key(scorer.expert_info, config, scorer.protocol_info, eval_set.version)
    preds = _cached_base(prediction_cache.load(cache, key), eval_set)
    if preds is None and eval_set.indices is not None:  # a slice: its own entry (a rerun of the same shard)
        key = base_cache_key(scorer.expert_info, config, scorer.protocol_info,
                             {"problems_sha256": problems_digest(eval_set.problems),
                              "answer_type": eval_set.answer_type})
        preds = _cached_base(prediction_cache.load(cache, key), eval_set)
    hit = preds is not None
    if preds is None:
        model = scorer.tuned_model if scorer.tuned_model is not None else scorer.expert
        with model.disable_adapter() if scorer.tuned_model is not None else contextlib.nullcontext():
            preds = predict(model, scorer.tokenizer, eval_set.problems, config, progress, f"evaluate base{label}",
                            **kw)
        prediction_cache.store(cache, key, _prediction_rows(preds), PREDICTION_SCHEMA)
    return Scored(preds, time.perf_counter() - t0, hit)


@dataclass
class SetResult:
    """One benchmark's predictions, base and (given an adapter) tuned, in its problems' order."""

    eval_set: EvalSet
    base: list[Prediction]
    tuned: list[Prediction] | None
    base_cache_key: str
    base_from_cache: bool


def aggregate(config: Config, results: list[SetResult], *, expert_info: dict[str, Any],
              protocol_info: dict[str, Any], adapter: str | None, adapter_sha256: str | None) -> dict[str, Any]:
    """``metrics.json``: per benchmark, pooled over every problem and averaged over the benchmarks (the
    paired delta, its bootstrap interval and McNemar), with what was scored (Expert, adapter, protocol,
    benchmark versions)."""
    ecfg = config.evaluation
    base_preds = [p for r in results for p in r.base]
    tuned_preds = None if any(r.tuned is None for r in results) else [p for r in results for p in r.tuned]
    per_set: dict[str, Any] = {}
    for r in results:
        m = paired_metrics([p.correct for p in r.base], None if r.tuned is None else [p.correct for p in r.tuned],
                           bootstrap_samples=ecfg.bootstrap_samples, seed=ecfg.seed)
        m["version"] = r.eval_set.version
        m["base_cache_key"] = r.base_cache_key
        m["base_from_cache"] = r.base_from_cache
        per_set[r.eval_set.name] = m
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
    metrics["problems_sha256"] = problems_digest([Problem(p.problem_id, "", p.gold) for p in base_preds])
    metrics["expert"] = expert_info
    metrics["adapter"] = adapter
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
    from .benchmarks import paper_comparison, row_count_notes

    metrics["paper"] = paper_comparison(metrics)  # the published numbers beside ours (a paper Expert), else None
    metrics["row_count_notes"] = row_count_notes(metrics)  # benchmarks scored on another count than the paper's
    return metrics


def _tokens(preds: list[Prediction] | None) -> int:
    return sum(p.tokens_generated for p in preds) if preds else 0


def write_evaluation(output: StageOutput, config: Config, metrics: dict[str, Any], results: list[SetResult], *,
                     benchmarks: bool, expert_info: dict[str, Any], adapter_info: dict[str, Any] | None,
                     timing: dict[str, Any], extra: dict[str, Any] | None = None) -> EvalResult:
    """The evaluation folder (claimed): predictions, ``metrics.json``, the plots (and with ``benchmarks`` the
    per-benchmark table), then ``manifest.json`` last."""
    from .outputs import library_versions

    out = output.out
    ecfg = config.evaluation
    base_preds = [p for r in results for p in r.base]
    tuned_preds = None if any(r.tuned is None for r in results) else [p for r in results for p in r.tuned]
    write_predictions(base_preds, out / PREDICTIONS_BASE)
    all_problems = [p for r in results for p in r.eval_set.problems]
    write_table_atomic(pa.Table.from_pylist([{"problem_id": p.problem_id, "question": p.question} for p in all_problems],
                                            schema=pa.schema([("problem_id", pa.string()), ("question", pa.string())])),
                       out / QUESTIONS)
    if tuned_preds is not None:
        write_predictions(tuned_preds, out / PREDICTIONS_TUNED)
    write_json_atomic(metrics, out / METRICS)
    per_set = metrics["benchmarks"]
    what = ", ".join(per_set) if benchmarks else Path(ecfg.data.path).name
    plot_accuracy(metrics, out / PLOT, title=f"{Path(config.expert.model).name} on {what}")
    if benchmarks:
        write_benchmark_table(metrics, out / BENCHMARK_TABLE)
        if tuned_preds is not None:
            plot_benchmark_deltas(benchmark_rows(metrics), out / DELTA_PLOT,
                                  title=f"{Path(config.expert.model).name}: delta per benchmark")
    base_seconds = timing.get("base_seconds")
    timing = {**timing, "base_tokens": _tokens(base_preds),
              "tuned_tokens": _tokens(tuned_preds) if tuned_preds is not None else None,
              "base_tokens_per_second": _tokens(base_preds) / base_seconds if base_seconds else None}
    manifest = {
        "stage": "evaluate",
        "config": config.dump(),
        "expert": expert_info,
        "adapter": adapter_info,
        "protocol": metrics["protocol"],
        "benchmarks": {name: m["version"] for name, m in per_set.items()},
        "base_from_cache": {name: m["base_from_cache"] for name, m in per_set.items()},
        "metrics": metrics,
        "versions": library_versions(),
        "timing": timing,
        **(extra or {}),
        "files": sorted(p.name for p in out.iterdir() if p.is_file() and not p.name.endswith(".tmp")),
    }
    output.finish(manifest)
    return EvalResult(out, metrics, manifest, base_preds, tuned_preds)


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
    ``manifest.json`` to ``output``. The same steps as a sharded evaluation (:func:`evaluate_shard`, then
    :func:`merge_evaluation`), in one process.
    """
    started = time.perf_counter()
    config = configured(config, model, limit)
    out = Path(output)

    # Everything that can be refused is checked before any output is written.
    output = StageOutput(out, stage="evaluate", what="evaluation", rerun=True,  # evaluations are redone
                         retire=(PREDICTIONS_TUNED, BENCHMARK_TABLE, DELTA_PLOT))
    source = resolve_adapter(adapter) if adapter is not None else None
    problems = _given_problems(config, problems, limit)
    sets = evaluation_sets(config, problems)
    all_problems = [p for s in sets for p in s.problems]
    scorer = load_scorer(config, source)
    if base_predictions is not None and [p.problem_id for p in base_predictions] != [p.problem_id for p in all_problems]:
        raise LightReasonerError("base predictions: made for other evaluation problems")
    output.claim()
    load_seconds = time.perf_counter() - started

    results: list[SetResult] = []
    base_seconds, tuned_seconds = 0.0, (0.0 if scorer.tuned_model is not None else None)
    offset = 0
    for eval_set in sets:
        n = len(eval_set.problems)
        reuse = base_predictions[offset:offset + n] if base_predictions is not None else None
        base = score(scorer, eval_set, "base", progress=progress, reuse=reuse)
        base_seconds += base.seconds
        tuned = None
        if scorer.tuned_model is not None:
            tuned = score(scorer, eval_set, "tuned", progress=progress)
            tuned_seconds += tuned.seconds
        key = base_cache_key(scorer.expert_info, config, scorer.protocol_info, eval_set.version)
        results.append(SetResult(eval_set, base.predictions, None if tuned is None else tuned.predictions, key,
                                 base.from_cache))
        offset += n

    metrics = aggregate(config, results, expert_info=scorer.expert_info, protocol_info=scorer.protocol_info,
                        adapter=str(source.given) if source is not None else None,
                        adapter_sha256=scorer.adapter_sha256)
    timing = {"load_seconds": load_seconds, "base_seconds": base_seconds, "tuned_seconds": tuned_seconds,
              "total_seconds": time.perf_counter() - started}
    return write_evaluation(output, config, metrics, results, benchmarks=bool(config.evaluation.benchmarks) and
                            problems is None, expert_info=scorer.expert_info, adapter_info=scorer.adapter_info(),
                            timing=timing)


# --- sharded evaluation: one pod per shard and side, then one merge ----------------------------------------


def shard_predictions(side: str) -> str:
    return PREDICTIONS_BASE if side == "base" else PREDICTIONS_TUNED


def evaluate_shard(config: Config, model: str | None, adapter: str | Path | None, output: str | Path,
                   shard: tuple[int, int], *, sides: tuple[str, ...] | None = None,
                   problems: list[Problem] | None = None, limit: int | None = None,
                   progress: bool = True) -> dict[str, Any]:
    """One pod of a sharded evaluation: slice ``shard = (i, n)`` of every benchmark (:func:`shard_set`)
    scored on each of ``sides`` (default: base, and tuned given an adapter; the pipeline runs the two in
    separate pods, the base one without waiting for training). Writes ``predictions_<side>.parquet`` (the
    evaluation's columns and each problem's ``index`` in its benchmark), then ``manifest.json`` (stage
    ``evaluate-shard``); :func:`merge_evaluation` joins the n shards into the evaluation folder."""
    from .outputs import library_versions

    started = time.perf_counter()
    index, count = shard
    if count < 1 or not 0 <= index < count:
        raise LightReasonerError(f"--shard {index}/{count}: expected I/N with 0 <= I < N")
    sides = tuple(sides) if sides else (("base", "tuned") if adapter is not None else ("base",))
    unknown = [s for s in sides if s not in SIDES]
    if unknown or len(set(sides)) != len(sides):
        raise LightReasonerError(f"--side {','.join(sides)}: expected base, tuned or both, each once")
    if "tuned" in sides and adapter is None:
        raise LightReasonerError("--side tuned: needs --adapter")
    config = configured(config, model, limit)
    out = Path(output)
    output = StageOutput(out, stage=SHARD_STAGE, what="evaluation shard", rerun=True,
                         retire=(PREDICTIONS_BASE, PREDICTIONS_TUNED))
    source = resolve_adapter(adapter) if adapter is not None else None
    problems = _given_problems(config, problems, limit)
    sets = evaluation_sets(config, problems)
    scorer = load_scorer(config, source)
    slices = [shard_set(s, scorer.tokenizer, config, shard) for s in sets]
    output.claim()
    load_seconds = time.perf_counter() - started

    rows: dict[str, list[dict[str, Any]]] = {side: [] for side in sides}
    seconds = {side: 0.0 for side in sides}
    from_cache: dict[str, bool] = {}
    for part in slices:
        for side in sides:
            scored = score(scorer, part, side, progress=progress)
            seconds[side] += scored.seconds
            if side == "base":
                from_cache[part.name] = scored.from_cache
            rows[side] += [{**row, "index": i, "question": p.question}
                           for row, i, p in zip(_prediction_rows(scored.predictions), part.indices or [],
                                                part.problems, strict=True)]
    for side in sides:
        write_table_atomic(pa.Table.from_pylist(rows[side], schema=SHARD_SCHEMA), out / shard_predictions(side))
    manifest = {
        "stage": SHARD_STAGE,
        "shard": [index, count],
        "sides": list(sides),
        "config": config.dump(),
        "expert": scorer.expert_info,
        "adapter": scorer.adapter_info(),
        "protocol": scorer.protocol_info,
        "order": [s.name for s in sets],
        "benchmarks": {s.name: s.version for s in sets},
        "benchmark_table": bool(config.evaluation.benchmarks) and problems is None,
        "problems": {part.name: len(part.problems) for part in slices},
        "base_from_cache": from_cache,
        "versions": library_versions(),
        "timing": {"load_seconds": load_seconds, "base_seconds": seconds.get("base"),
                   "tuned_seconds": seconds.get("tuned"), "total_seconds": time.perf_counter() - started},
        "files": sorted(shard_predictions(side) for side in sides),
    }
    return output.finish(manifest)


def _read_shard(folder: Path) -> dict[str, Any]:
    path = folder / MANIFEST
    if not path.is_file():
        raise LightReasonerError(f"{folder}: missing {MANIFEST} (not a finished evaluation shard)")
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        raise LightReasonerError(f"{path}: not valid JSON (not a finished evaluation shard)") from None
    if not isinstance(data, dict) or data.get("stage") != SHARD_STAGE:
        stage = data.get("stage") if isinstance(data, dict) else None
        raise LightReasonerError(f"{path}: belongs to stage {stage!r}, not to stage {SHARD_STAGE!r}")
    return data


def _row_prediction(row: dict[str, Any]) -> Prediction:
    return Prediction(row["problem_id"], row["output"], row["extracted"], row["gold"], bool(row["correct"]),
                      int(row["tokens_generated"]), row["benchmark"], row["answer_type"])


def merge_evaluation(shard_dirs: list[str | Path], output: str | Path, *,
                     config: Config | None = None) -> EvalResult:
    """Join the folders of a sharded evaluation (:func:`evaluate_shard`: every shard of the base side, and of
    the tuned side all or none) into one evaluation folder, equal to a single-pod :func:`evaluate` of the
    same problems: the same predictions, metrics (per benchmark, pooled, averaged; intervals and McNemar),
    plots and manifest (plus ``shards``). The base predictions of each benchmark are stored in the
    prediction cache as one entry, as a single pod stores them. ``config``: refuse shards made with another."""
    from . import prediction_cache
    from .config import config_from_dict
    from .redaction import redact_uris

    started = time.perf_counter()
    out = Path(output)
    output = StageOutput(out, stage="evaluate", what="evaluation", rerun=True,
                         retire=(PREDICTIONS_TUNED, BENCHMARK_TABLE, DELTA_PLOT))
    if not shard_dirs:
        raise LightReasonerError(f"{out}: no evaluation shards to merge")
    shards = [(Path(folder), _read_shard(Path(folder))) for folder in shard_dirs]
    first = shards[0][1]
    for key, what in (("config", "configs"), ("expert", "Experts"), ("protocol", "protocols"),
                      ("order", "benchmarks"), ("benchmarks", "benchmark versions")):
        if any(d.get(key) != first.get(key) for _, d in shards):
            raise LightReasonerError(f"{out}: the shards were evaluated with different {what}")
    if config is not None and redact_uris(config.dump()) != first["config"]:
        raise LightReasonerError(f"{out}: the shards were evaluated with another config")
    count = first["shard"][1]
    present = [side for side in SIDES if any(side in d["sides"] for _, d in shards)]
    for side in SIDES:
        have = sorted(d["shard"][0] for _, d in shards if side in d["sides"])
        if (side == "base" or side in present) and (have != list(range(count)) or
                                                    any(d["shard"][1] != count for _, d in shards)):
            raise LightReasonerError(f"{out}: {side} predictions cover shards {have}, expected 0..{count - 1} once "
                                     "each")
    tuned_shards = [d for _, d in shards if "tuned" in d["sides"]]
    if len({(d.get("adapter") or {}).get("sha256") for d in tuned_shards}) > 1:
        raise LightReasonerError(f"{out}: the shards scored different adapters")
    output.claim()
    cfg = config if config is not None else config_from_dict(first["config"], "evaluation shard config")

    rows: dict[str, list[dict[str, Any]]] = {side: [] for side in present}
    for folder, data in shards:
        for side in data["sides"]:
            rows[side] += pq.read_table(folder / shard_predictions(side)).to_pylist()
    results = []
    for name in first["order"]:
        version = first["benchmarks"][name]
        preds: dict[str, list[Prediction]] = {}
        for side in present:
            mine = sorted((r for r in rows[side] if r["benchmark"] == name), key=lambda r: r["index"])
            if [r["index"] for r in mine] != list(range(version["n"])):
                raise LightReasonerError(f"{out}: the {side} predictions of {name} cover {len(mine)} rows, expected "
                                         f"each of its {version['n']} problems once")
            preds[side] = [_row_prediction(r) for r in mine]
        key = base_cache_key(first["expert"], cfg, first["protocol"], version)
        hit = all(d["base_from_cache"].get(name, False) for _, d in shards if "base" in d["sides"])
        if not hit:  # one entry for the whole benchmark, as a single pod stores it
            prediction_cache.store(cfg.evaluation.prediction_cache, key, _prediction_rows(preds["base"]),
                                   PREDICTION_SCHEMA)
        questions = [Problem(r["problem_id"], r["question"], r["gold"])
                     for r in sorted((r for r in rows["base"] if r["benchmark"] == name), key=lambda r: r["index"])]
        results.append(SetResult(EvalSet(name, questions, version.get("answer_type", "number"), version),
                                 preds["base"], preds.get("tuned"), key, hit))

    adapter_info = tuned_shards[0]["adapter"] if tuned_shards else None
    metrics = aggregate(cfg, results, expert_info=first["expert"], protocol_info=first["protocol"],
                        adapter=adapter_info["path"] if adapter_info else None,
                        adapter_sha256=adapter_info["sha256"] if adapter_info else None)

    def total(key: str, side: str | None = None) -> float | None:
        values = [d["timing"][key] for _, d in shards if side is None or side in d["sides"]]
        return sum(values) if values else None

    # Summed over the pods (GPU seconds), the merge's own time included in the total.
    timing = {"load_seconds": total("load_seconds"), "base_seconds": total("base_seconds", "base"),
              "tuned_seconds": total("tuned_seconds", "tuned"),
              "total_seconds": total("total_seconds") + time.perf_counter() - started}
    return write_evaluation(output, cfg, metrics, results, benchmarks=bool(first["benchmark_table"]),
                            expert_info=first["expert"], adapter_info=adapter_info, timing=timing,
                            extra={"shards": count})
