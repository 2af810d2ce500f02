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
import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
from tqdm.auto import tqdm

from .answers import answers_match, extract, extract_answer, grade  # noqa: F401 - re-exported
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
    resolve_source,
    same_model,
)
from .outputs import folder_sha256, write_json_atomic
from .protocols import resolve_protocol, stop_token_ids
from .stats import bootstrap_delta_ci, mcnemar_exact, paired_metrics  # noqa: F401 - re-exported

log = logging.getLogger(__name__)

PREDICTIONS_BASE = "predictions_base.parquet"
PREDICTIONS_TUNED = "predictions_tuned.parquet"
METRICS = "metrics.json"
PLOT = "accuracy.png"
MANIFEST = "manifest.json"
BENCHMARK_TABLE = "benchmarks.csv"
DELTA_PLOT = "benchmark_deltas.png"

PREDICTION_SCHEMA = pa.schema(
    [
        ("problem_id", pa.string()),
        ("output", pa.string()),
        ("extracted", pa.string()),
        ("gold", pa.string()),
        ("correct", pa.bool_()),
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


def plan_batches(lengths: list[int], batch_size: int) -> list[list[int]]:
    """Indices per batch, prompts of similar length together (less padding)."""
    order = sorted(range(len(lengths)), key=lambda i: (lengths[i], i))
    return [order[i : i + batch_size] for i in range(0, len(order), batch_size)]


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
        extracted = extract(text, answer_type)
        predictions.append(Prediction(prob.problem_id, text, extracted, prob.answer,
                                      grade(extracted, prob.answer, answer_type), len(ids), benchmark, answer_type))
    return predictions


# --- adapter -------------------------------------------------------------------------------------


@dataclass
class AdapterSource:
    folder: Path  # holds adapter_config.json
    given: Path  # what the user passed
    training_manifest: dict[str, Any] | None


def resolve_adapter(path: str | Path) -> AdapterSource:
    """A training output folder (``adapter/`` + ``manifest.json``) or an adapter folder itself."""
    given = Path(path).expanduser()
    if not given.exists():
        raise LightReasonerError(f"adapter {given}: not found")
    if not given.is_dir():
        raise LightReasonerError(f"adapter {given}: expected a training output folder or an adapter folder")
    if (given / "adapter" / "adapter_config.json").is_file():
        folder, manifest_path = given / "adapter", given / MANIFEST
    elif (given / "adapter_config.json").is_file():
        folder, manifest_path = given, given.parent / MANIFEST
        if given.name != "adapter":
            manifest_path = None
    else:
        raise LightReasonerError(f"adapter {given}: no adapter_config.json (not a training output or adapter folder)")
    manifest = None
    if manifest_path is not None and manifest_path.is_file():
        try:
            manifest = json.loads(manifest_path.read_text())
        except json.JSONDecodeError as exc:
            raise LightReasonerError(f"{manifest_path}: not valid JSON ({exc.msg})") from None
        if not isinstance(manifest, dict):
            raise LightReasonerError(f"{manifest_path}: expected a JSON object")
    return AdapterSource(folder, given, manifest)


def _adapter_base_name(folder: Path) -> str | None:
    try:
        data = json.loads((folder / "adapter_config.json").read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise LightReasonerError(f"adapter {folder}: unreadable adapter_config.json ({exc})") from None
    if not isinstance(data, dict):
        raise LightReasonerError(f"adapter {folder}: adapter_config.json is not a JSON object")
    name = data.get("base_model_name_or_path")
    return str(name) if name else None


def _names_same_model(recorded: str, candidates: list[str]) -> bool:
    rec_path = Path(recorded).expanduser()
    for cand in candidates:
        if not cand:
            continue
        if recorded == cand:
            return True
        cand_path = Path(cand).expanduser()
        if rec_path.exists() and cand_path.exists() and rec_path.resolve() == cand_path.resolve():
            return True
        if rec_path.name and rec_path.name == cand_path.name and not (rec_path.exists() and cand_path.exists()):
            return True  # a hub id and a local copy of it ("Org/Name" vs "/models/Name")
    return False


def check_adapter_base(source: AdapterSource, config: Config, expert_info: dict[str, Any], model) -> None:
    """Refuse an adapter made for another base model (training manifest first, else peft's record)."""
    recorded = (source.training_manifest or {}).get("expert")
    if isinstance(recorded, dict):
        if not same_model(recorded, expert_info):
            raise LightReasonerError(
                f"adapter {source.given}: trained on expert {recorded.get('model')!r}, "
                f"not on expert.model {config.expert.model!r} (different weights)"
            )
        return
    base = _adapter_base_name(source.folder)
    if base is None:
        return
    src = resolve_source(config.expert)
    candidates = [config.expert.model, src.location, str(getattr(model, "name_or_path", "") or "")]
    if not _names_same_model(base, candidates):
        raise LightReasonerError(
            f"adapter {source.given}: made for base model {base!r}, not for expert.model {config.expert.model!r}"
        )


def attach_adapter(model, source: AdapterSource):
    """The Expert wrapped with the LoRA adapter; peft's loading errors become one line."""
    from peft import PeftModel

    try:
        tuned = PeftModel.from_pretrained(model, str(source.folder), is_trainable=False)
    except Exception as exc:  # noqa: BLE001 - shape mismatch, missing modules, bad files: all one line
        text = str(exc).strip()
        first = text.splitlines()[0] if text else type(exc).__name__
        if "size mismatch" in text:
            first = "weight shapes differ from this Expert's (adapter made for another base model)"
        raise LightReasonerError(f"adapter {source.given}: cannot load onto expert.model ({first[:300]})") from None
    tuned.eval()
    return tuned


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
    tmp = path.with_name(path.name + ".tmp")
    pq.write_table(table, tmp)
    tmp.replace(path)


def plot_accuracy(metrics: dict[str, Any], path: Path, title: str = "") -> None:
    """Bars of base and tuned accuracy; the tuned bar carries the paired delta's 95% interval
    (base accuracy + [ci_low, ci_high])."""
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    labels, values = ["base"], [metrics["accuracy_base"]]
    tuned = metrics.get("accuracy_tuned")
    if tuned is not None:
        labels.append("tuned")
        values.append(tuned)
    fig, ax = plt.subplots(figsize=(4.5, 4.0), dpi=100)
    bars = ax.bar(labels, values, color=["#8c8c8c", "#2a7ab9"][: len(values)], width=0.55)
    if tuned is not None:
        low = metrics["accuracy_base"] + metrics["delta_ci_low"]
        high = metrics["accuracy_base"] + metrics["delta_ci_high"]
        ax.errorbar([1], [tuned], yerr=[[max(0.0, tuned - low)], [max(0.0, high - tuned)]], fmt="none",
                    ecolor="black", capsize=6, linewidth=1.5, label="base + 95% CI of paired delta")
        ax.legend(loc="lower right", fontsize=7)
        ax.set_xlabel(
            f"delta {metrics['delta']:+.3f} [{metrics['delta_ci_low']:+.3f}, {metrics['delta_ci_high']:+.3f}], "
            f"McNemar p={metrics['mcnemar_p']:.3g}",
            fontsize=8,
        )
    for bar, value in zip(bars, values, strict=True):
        inside = value >= 0.12
        ax.text(bar.get_x() + bar.get_width() * 0.3, value / 2 if inside else value + 0.01, f"{value:.3f}",
                ha="center", va="center" if inside else "bottom", fontsize=9, color="white" if inside else "black")
    ax.set_ylim(0, 1.05)
    ax.set_ylabel(f"pass@1 accuracy (n={metrics['n']})")
    ax.set_title(title or "LightReasoner evaluation", fontsize=10)
    fig.tight_layout()
    tmp = path.with_name(path.name + ".tmp.png")
    fig.savefig(tmp, format="png")
    plt.close(fig)
    tmp.replace(path)


def _check_output(out: Path) -> None:
    """Refuse a file, or a folder holding another stage's output."""
    if out.exists() and not out.is_dir():
        raise LightReasonerError(f"output {out}: exists and is not a folder")
    manifest = out / MANIFEST
    if manifest.is_file():
        try:
            stage = json.loads(manifest.read_text()).get("stage")
        except (json.JSONDecodeError, AttributeError):
            stage = None
        if stage != "evaluate":
            raise LightReasonerError(f"output {out}: holds the output of stage {stage!r}; choose another folder")


def _prepare_output(out: Path) -> None:
    """Drop a previous evaluation's manifest first, so a failed rerun never leaves a folder that looks
    complete."""
    _check_output(out)
    (out / MANIFEST).unlink(missing_ok=True)
    out.mkdir(parents=True, exist_ok=True)
    for name in (PREDICTIONS_TUNED, BENCHMARK_TABLE, DELTA_PLOT):
        (out / name).unlink(missing_ok=True)


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
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(buf.getvalue())
    tmp.replace(path)


def plot_benchmark_deltas(metrics: dict[str, Any], path: Path, title: str = "") -> None:
    """Per-benchmark paired delta (tuned - base) with its bootstrap 95% interval, and the average."""
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    rows = [r for r in benchmark_rows(metrics) if r["delta"] is not None]
    fig, ax = plt.subplots(figsize=(max(4.5, 1.1 * len(rows) + 1.5), 4.0), dpi=100)
    names = [r["benchmark"] for r in rows]
    deltas = [r["delta"] * 100 for r in rows]
    colors = ["#2a7ab9" if d >= 0 else "#c0504d" for d in deltas]
    ax.bar(names, deltas, color=colors, width=0.6)
    low = [max(0.0, (r["delta"] - r["delta_ci_low"]) * 100) if r["delta_ci_low"] is not None else 0 for r in rows]
    high = [max(0.0, (r["delta_ci_high"] - r["delta"]) * 100) if r["delta_ci_high"] is not None else 0 for r in rows]
    ax.errorbar(names, deltas, yerr=[low, high], fmt="none", ecolor="black", capsize=5, linewidth=1.2)
    ax.axhline(0, color="black", linewidth=0.8)
    ax.set_ylabel("delta accuracy, points (tuned - base, 95% CI)")
    ax.set_title(title or "LightReasoner: per-benchmark delta", fontsize=10)
    plt.setp(ax.get_xticklabels(), rotation=30, ha="right", fontsize=8)
    fig.tight_layout()
    tmp = path.with_name(path.name + ".tmp.png")
    fig.savefig(tmp, format="png")
    plt.close(fig)
    tmp.replace(path)


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
    _check_output(out)
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
    _prepare_output(out)
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
            plot_benchmark_deltas(metrics, out / DELTA_PLOT, title=f"{Path(config.expert.model).name}: delta per benchmark")

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


def read_metrics(folder: str | Path) -> dict[str, Any]:
    """``metrics.json`` of a finished evaluation folder (the manifest must exist: the run completed)."""
    folder = Path(folder)
    if not (folder / MANIFEST).is_file():
        raise LightReasonerError(f"{folder}: missing {MANIFEST} (not a finished evaluation folder)")
    try:
        return json.loads((folder / METRICS).read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise LightReasonerError(f"{folder / METRICS}: unreadable ({exc})") from None
