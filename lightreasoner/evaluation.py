"""Stage 3: evaluation of the base Expert and the Expert with its LoRA adapter on the same problems.

Answers are extracted and graded by :mod:`lightreasoner.answers`; the paired statistics live in
:mod:`lightreasoner.stats` (both re-exported here under their old names).

The run generates greedily in batches (left padding, the sampling stage's prompt), scores pass@1 for the
base Expert and for the Expert with the adapter, and compares the two on the same problems: the paired
delta with a bootstrap 95% confidence interval and the exact McNemar p-value.

Output folder (keep these names): ``predictions_base.parquet``, ``predictions_tuned.parquet``,
``metrics.json``, ``accuracy.png`` and ``manifest.json`` (written last).
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

from . import storage
from .answers import answers_match, extract_answer  # noqa: F401 - re-exported
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
from .sampling import write_json_atomic
from .stats import bootstrap_delta_ci, mcnemar_exact, paired_metrics  # noqa: F401 - re-exported

log = logging.getLogger(__name__)

PREDICTIONS_BASE = "predictions_base.parquet"
PREDICTIONS_TUNED = "predictions_tuned.parquet"
METRICS = "metrics.json"
PLOT = "accuracy.png"
MANIFEST = "manifest.json"

PREDICTION_SCHEMA = pa.schema(
    [
        ("problem_id", pa.string()),
        ("output", pa.string()),
        ("extracted", pa.string()),
        ("gold", pa.string()),
        ("correct", pa.bool_()),
        ("tokens_generated", pa.int32()),
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
                         progress: bool = False, desc: str = "generate", compile: bool = False) -> list[list[int]]:
    """Greedy completions (ids up to and including EOS) in the prompts' order, ``batch_size`` at a time
    (``compile``: static KV cache and torch.compile, see :func:`generate_greedy`)."""
    completions: list[list[int] | None] = [None] * len(prompts)
    with tqdm(total=len(prompts), desc=desc, unit="problem", disable=not progress) as bar:
        for members in plan_batches([len(p) for p in prompts], batch_size):
            outs, _ = generate_greedy(model, tokenizer, [prompts[i] for i in members], max_new_tokens,
                                      compile=compile)
            for i, out in zip(members, outs, strict=True):
                completions[i] = out
            bar.update(len(members))
    return [c or [] for c in completions]


def predict(model, tokenizer, problems: list[Problem], config: Config, progress: bool = False,
            desc: str = "evaluate") -> list[Prediction]:
    """Generate, decode, extract and score every problem."""
    prompts = [prompt_token_ids(tokenizer, p.question, config.prompt.system_prompt, config.prompt.chat_template)
               for p in problems]
    ecfg = config.evaluation
    batch_size = auto_batch_size(ecfg.batch_size, [model], max((len(p) for p in prompts), default=1)
                                 + ecfg.max_new_tokens, fraction=config.performance.memory_fraction)
    completions = generate_completions(model, tokenizer, prompts, ecfg.max_new_tokens, batch_size, progress, desc,
                                       compile=resolve_compile(config.performance.compile, model.device))
    predictions = []
    for prob, ids in zip(problems, completions, strict=True):
        text = tokenizer.decode(ids, skip_special_tokens=True)
        extracted = extract_answer(text)
        predictions.append(Prediction(prob.problem_id, text, extracted, prob.answer,
                                      answers_match(extracted, prob.answer), len(ids)))
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
             "correct": p.correct, "tokens_generated": p.tokens_generated}
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
    (out / PREDICTIONS_TUNED).unlink(missing_ok=True)


def problems_digest(problems: list[Problem]) -> str:
    """sha256 of the problem ids and gold answers: equal digests mean two evaluations scored the same set."""
    digest = hashlib.sha256()
    for prob in sorted(problems, key=lambda p: p.problem_id):
        digest.update(f"{prob.problem_id}\t{prob.answer}\n".encode())
    return digest.hexdigest()


@dataclass
class EvalResult:
    output: Path
    metrics: dict[str, Any]
    manifest: dict[str, Any]
    predictions_base: list[Prediction]
    predictions_tuned: list[Prediction] | None


def evaluate(config: Config, model: str | None, adapter: str | Path | None, output: str | Path, *,
             problems: list[Problem] | None = None, limit: int | None = None,
             progress: bool = True, base_predictions: list[Prediction] | None = None) -> EvalResult:
    """Stage 3: score the base Expert and (with ``adapter``) the Expert + adapter on the same problems.

    ``model`` overrides ``expert.model``; ``limit`` overrides ``evaluation.data.limit``;
    ``base_predictions`` (of the same Expert on the same problems, from an earlier evaluation) are reused
    instead of generating the base again (how ``run --method both`` scores both adapters against one base). Writes the
    predictions, ``metrics.json``, ``accuracy.png`` and finally ``manifest.json`` to ``output``.
    """
    from .sampling import library_versions

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

    # Everything that can be refused is checked before any output is written.
    _check_output(out)
    source = resolve_adapter(adapter) if adapter is not None else None
    if problems is None:
        problems = load_problems(config.evaluation.data)
    elif limit is not None:
        problems = problems[:limit]
    if not problems:
        raise LightReasonerError(f"{config.evaluation.data.path}: no problems (empty data set)")
    device = resolve_device(config.expert.device)
    tokenizer = load_tokenizer(config.expert, "expert")
    expert = load_model(config.expert, "expert", device)
    expert_info = model_fingerprint(config.expert, expert)
    tuned_model = None
    if source is not None:
        check_adapter_base(source, config, expert_info, expert)
        tuned_model = attach_adapter(expert, source)
    adapter_sha256 = storage.folder_sha256(source.folder) if source is not None else None
    _prepare_output(out)
    load_seconds = time.perf_counter() - started

    t0 = time.perf_counter()
    if base_predictions is not None:
        if [p.problem_id for p in base_predictions] != [p.problem_id for p in problems]:
            raise LightReasonerError("base predictions: made for other evaluation problems")
        base_preds = list(base_predictions)
    elif tuned_model is not None:
        with tuned_model.disable_adapter():
            base_preds = predict(tuned_model, tokenizer, problems, config, progress, "evaluate base")
    else:
        base_preds = predict(expert, tokenizer, problems, config, progress, "evaluate base")
    base_seconds = time.perf_counter() - t0
    tuned_preds, tuned_seconds = None, None
    if tuned_model is not None:
        t0 = time.perf_counter()
        tuned_preds = predict(tuned_model, tokenizer, problems, config, progress, "evaluate tuned")
        tuned_seconds = time.perf_counter() - t0

    ecfg = config.evaluation
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
    metrics["problems_sha256"] = problems_digest(problems)
    metrics["expert"] = expert_info
    metrics["adapter"] = str(source.given) if source is not None else None
    # The identity of the adapter scored here: `register` refuses to pair these metrics with another one.
    metrics["adapter_sha256"] = adapter_sha256

    write_predictions(base_preds, out / PREDICTIONS_BASE)
    if tuned_preds is not None:
        write_predictions(tuned_preds, out / PREDICTIONS_TUNED)
    write_json_atomic(metrics, out / METRICS)
    plot_accuracy(metrics, out / PLOT, title=f"{Path(config.expert.model).name} on {Path(ecfg.data.path).name}")

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
