"""The paper's seven benchmarks as the Qwen2.5-Math evaluation toolkit reads them: where each lives, which
fields hold the problem and the gold answer, how the question is written and which rows are kept -- one
table, :data:`BENCHMARKS` -- and the paper's published numbers (:func:`paper_results`).

Offline, ``evaluation.benchmark_dir`` names a folder (or s3:// prefix) with ``<name>/test.jsonl`` per benchmark,
the toolkit's layout and row format, read as it is (every row: no filter, no de-duplication); else the Hugging
Face data set is loaded, with the toolkit's splits and filters. Either way the rows are the toolkit's and their
count is the paper's (``paper_rows``). A benchmark's version is the sha256 of its problems (ids and gold
answers) and, for a file, of the file itself.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .config import BENCHMARK_NAMES
from .errors import LightReasonerError

CHOICE_LETTERS = "ABCDEFGHIJ"

# The 18 MMLU subjects the toolkit keeps as MMLU-STEM (3,018 test rows).
MMLU_STEM_SUBJECTS = frozenset({
    "abstract_algebra", "astronomy", "college_biology", "college_chemistry", "college_computer_science",
    "college_mathematics", "college_physics", "computer_security", "conceptual_physics", "electrical_engineering",
    "elementary_mathematics", "high_school_biology", "high_school_chemistry", "high_school_computer_science",
    "high_school_mathematics", "high_school_physics", "high_school_statistics", "machine_learning",
})
# MATH's 5,000 test problems on the hub: one config per subject (the toolkit's competition_math is gone).
MATH_SUBJECTS = ("algebra", "counting_and_probability", "geometry", "intermediate_algebra", "number_theory",
                 "prealgebra", "precalculus")


class MissingField(KeyError):
    """A row lacks a field the benchmark reads (its name is the argument)."""


def field(row: dict[str, Any], *names: str) -> Any:
    """The first of ``names`` the row has (not None); the toolkit lower-cases hub keys, so ``Body`` is also
    found as ``body``."""
    for name in names:
        for key in (name, name.lower()):
            if row.get(key) is not None:
                return row[key]
    raise MissingField(names[0])


@dataclass(frozen=True)
class Benchmark:
    name: str
    hub: str  # Hugging Face data set
    hf_config: str | tuple[str, ...] | None  # several: loaded one after another and concatenated (MATH)
    split: str  # "train+test": both splits, train first (SVAMP)
    fields: tuple[str, ...]  # the fields of the toolkit's rows: the problem's, then the gold answer's
    answer_type: str  # number, latex or choice (lightreasoner.answers)
    local: str  # file under evaluation.benchmark_dir
    question: Callable[[dict[str, Any]], str]
    gold: Callable[[dict[str, Any]], str]
    note: str = ""
    paper_rows: int = 0  # rows of the toolkit's set (the paper's table)
    keep: Callable[[dict[str, Any]], bool] | None = None  # the toolkit's filter of the hub rows

    def hub_source(self) -> str:
        configs = self.hf_config if isinstance(self.hf_config, tuple) else (self.hf_config,)
        shown = (f" ({configs[0]})" if len(configs) == 1 and configs[0] else
                 f" ({len(configs)} configs, each)" if len(configs) > 1 else "")
        return f"{self.hub}{shown}:{self.split}"


def last_boxed(text: str) -> str | None:
    """A reference solution's final answer as the toolkit takes it: what follows the last ``boxed`` -- its
    brace-matched ``{...}``, else the text up to the next ``$`` -- with line breaks joined and a leading ``:``
    or a trailing ``.`` or ``/`` dropped; None when the text has no ``boxed``."""
    text = str(text)
    if "boxed" not in text:
        return None
    tail = text.rsplit("boxed", 1)[1]
    if tail.startswith("{"):
        depth, out = 0, []
        for ch in tail:
            depth += (ch == "{") - (ch == "}")
            if depth == 0:
                break
            out.append(ch)
        answer = "".join(out[1:])
    else:
        answer = tail.split("$")[0].strip()
    answer = re.sub(r"\n\s*", "", answer)
    answer = answer[1:] if answer.startswith(":") else answer
    return answer[:-1] if answer.endswith((".", "/")) else answer


def _number_gold(value: Any) -> str:
    from .data import parse_gold_answer

    return parse_gold_answer(value)


def _gsm8k_gold(row: dict[str, Any]) -> str:
    return _number_gold(str(field(row, "answer")).split("####")[-1])


def _boxed_gold(text: str, what: str) -> str:
    boxed = last_boxed(text)
    if boxed is None:
        raise ValueError(f"no \\boxed{{}} in {what}")  # a solution without \boxed{} has no gold answer
    return boxed.strip()


def _math_gold(row: dict[str, Any]) -> str:
    """The toolkit's: the last ``\\boxed{}`` of the solution (a row with only ``answer``: that)."""
    if row.get("solution") not in (None, ""):
        return _boxed_gold(row["solution"], "solution")
    return str(field(row, "answer", "solution")).strip()


def _minerva_gold(row: dict[str, Any]) -> str:
    """The toolkit's file: the last ``\\boxed{}`` of ``solution``; hub copies with the final answer in
    ``answer``: that answer (its last ``\\boxed{}`` if it has one)."""
    if row.get("solution") not in (None, ""):
        return _boxed_gold(row["solution"], "solution")
    answer = str(field(row, "answer", "solution"))
    return (last_boxed(answer) or answer).strip()


def _asdiv_gold(row: dict[str, Any]) -> str:
    """``9 (apples)`` -> ``9`` (every parenthesised part removed, as the toolkit does); answers that are not
    numbers (``Mrs. Hilt``, ``Yes``) stay text."""
    value = str(field(row, "answer"))
    text = re.sub(r"\(.*?\)", "", value).strip()
    return _number_gold(text) if text else value.strip()


def _olympiad_gold(row: dict[str, Any]) -> str:
    """The toolkit's: the first element of ``final_answer``, without its ``$``."""
    answers = field(row, "final_answer")
    if isinstance(answers, str):
        answers = [answers]
    return str(list(answers)[0]).strip().strip("$").strip()


def _svamp_question(row: dict[str, Any]) -> str:
    body = str(field(row, "Body")).strip()
    if not body.endswith("."):
        body += "."
    return f"{body} {str(field(row, 'Question')).strip()}"


def _asdiv_question(row: dict[str, Any]) -> str:
    return f"{str(field(row, 'body')).strip()} {str(field(row, 'question')).strip()}"


def _mmlu_question(row: dict[str, Any]) -> str:
    """The toolkit's: the question, then ``Answer Choices: (A) .. (B) ..`` on one line."""
    choices = " ".join(f"({CHOICE_LETTERS[i]}) {str(c).strip()}" for i, c in enumerate(field(row, "choices")))
    return f"{str(field(row, 'question')).strip()}\nAnswer Choices: {choices}"


def _mmlu_gold(row: dict[str, Any]) -> str:
    answer = field(row, "answer")
    if isinstance(answer, str) and answer.strip().upper() in CHOICE_LETTERS:
        return answer.strip().upper()
    return CHOICE_LETTERS[int(answer)]


def _mmlu_stem(row: dict[str, Any]) -> bool:
    return str(row.get("subject", row.get("type", ""))) in MMLU_STEM_SUBJECTS


def _text(*names: str) -> Callable[[dict[str, Any]], str]:
    return lambda row: str(field(row, *names))


BENCHMARKS: dict[str, Benchmark] = {b.name: b for b in (
    Benchmark("gsm8k", "openai/gsm8k", "main", "test", ("question", "answer"), "number", "gsm8k/test.jsonl",
              _text("question"), _gsm8k_gold, "gold: the number after ####", 1319),
    Benchmark("math", "EleutherAI/hendrycks_math", MATH_SUBJECTS, "test", ("problem", "solution"), "latex",
              "math/test.jsonl", _text("problem"), _math_gold,
              "the 5,000 test problems (7 subject configs on the hub), not MATH-500; gold: the last \\boxed{} of "
              "solution", 5000),
    Benchmark("svamp", "ChilleD/SVAMP", None, "train+test", ("Body", "Question", "Answer"), "number",
              "svamp/test.jsonl", _svamp_question, lambda r: _number_gold(field(r, "Answer")),
              "train + test (1,000); question: Body, a period if missing, a space, Question", 1000),
    Benchmark("asdiv", "EleutherAI/asdiv", None, "validation", ("body", "question", "answer"), "number",
              "asdiv/test.jsonl", _asdiv_question, _asdiv_gold,
              "rows with several answers (;) dropped; question: body + question; gold: answer without its "
              "parenthesised unit (9 (apples) -> 9)", 2215, lambda r: ";" not in str(r.get("answer", ""))),
    Benchmark("minerva_math", "math-ai/minervamath", None, "test", ("problem", "solution"), "latex",
              "minerva_math/test.jsonl", _text("problem", "question"), _minerva_gold,
              "gold: the last \\boxed{} of solution (hub copies with question/answer: answer)", 272),
    Benchmark("olympiadbench", "Hothan/OlympiadBench", "OE_TO_maths_en_COMP", "train", ("question", "final_answer"),
              "latex", "olympiadbench/test.jsonl", _text("question"), _olympiad_gold,
              "gold: the first element of final_answer", 675),
    Benchmark("mmlu_stem", "hails/mmlu_no_train", "all", "test", ("question", "choices", "answer"), "choice",
              "mmlu_stem/test.jsonl", _mmlu_question, _mmlu_gold,
              "the 18 STEM subjects; question: `Answer Choices: (A) .. (B) ..` on one line; gold: the letter of "
              "choices[answer]", 3018, _mmlu_stem),
)}


if tuple(BENCHMARKS) != BENCHMARK_NAMES:  # the names the config accepts are this table's
    raise RuntimeError(f"lightreasoner.config.BENCHMARK_NAMES {BENCHMARK_NAMES} != {tuple(BENCHMARKS)}")


def get(name: str) -> Benchmark:
    if name not in BENCHMARKS:
        raise LightReasonerError(f"benchmark {name!r}: unknown (known: {', '.join(BENCHMARKS)})")
    return BENCHMARKS[name]


@dataclass
class BenchmarkData:
    benchmark: Benchmark
    problems: list  # list[lightreasoner.data.Problem]
    source: str  # the file or hub data set read
    file_sha256: str | None  # of the local file; None for the hub
    problems_sha256: str  # the benchmark version: ids and gold answers of the problems scored
    rows: int = 0  # rows loaded (before any limit)

    def version(self) -> dict[str, Any]:
        return {"source": self.source, "file_sha256": self.file_sha256, "problems_sha256": self.problems_sha256,
                "n": len(self.problems), "answer_type": self.benchmark.answer_type, "rows": self.rows,
                "paper_rows": self.benchmark.paper_rows}


# The toolkit appends these to a question whose gold answer is yes/no or true/false (ASDiv has some).
_YES_NO = {"yes": " (Yes or No)", "no": " (Yes or No)", "true": " (True or False)", "false": " (True or False)"}


def rows_to_problems(bench: Benchmark, rows, where: str) -> list:
    """Problems of a benchmark's rows, every row kept (the paper counts every row: a repeated question gets
    the id of its first occurrence with ``-2``, ``-3`` ... appended). A row without a field the table names
    is refused (one line)."""
    from .data import Problem, problem_id

    problems, seen = [], {}
    for label, row in rows:
        try:
            question, gold = bench.question(row).strip(), bench.gold(row)
        except MissingField as exc:
            raise LightReasonerError(f"{where}{label}: benchmark {bench.name}: missing field {exc.args[0]!r}") from None
        except (KeyError, IndexError, ValueError, TypeError) as exc:
            raise LightReasonerError(f"{where}{label}: benchmark {bench.name}: no gold answer ({exc!s})") from None
        if not question:
            raise LightReasonerError(f"{where}{label}: benchmark {bench.name}: empty problem")
        question += _YES_NO.get(str(gold).strip().lower(), "")
        pid = problem_id(question)
        seen[pid] = seen.get(pid, 0) + 1
        problems.append(Problem(pid if seen[pid] == 1 else f"{pid}-{seen[pid]}", question, gold))
    return problems


def _digest(problems) -> str:
    digest = hashlib.sha256()
    for prob in sorted(problems, key=lambda p: p.problem_id):
        digest.update(f"{prob.problem_id}\t{prob.answer}\n".encode())
    return digest.hexdigest()


def hub_rows(bench: Benchmark) -> list[dict[str, Any]]:
    """The toolkit's rows of a benchmark from the Hugging Face hub: its configs and splits in order, then its
    filter. Raises what ``datasets`` raises."""
    import datasets

    configs = bench.hf_config if isinstance(bench.hf_config, tuple) else (bench.hf_config,)
    rows: list[dict[str, Any]] = []
    for config in configs:
        for split in bench.split.split("+"):
            rows += list(datasets.load_dataset(bench.hub, config, split=split))
    return [r for r in rows if bench.keep(r)] if bench.keep is not None else rows


def load_benchmark(name: str, benchmark_dir: str = "", limit: int | None = None) -> BenchmarkData:
    """A benchmark's problems (every row, the first ``limit``), from ``benchmark_dir`` or the hub."""
    from .data import read_jsonl_rows

    bench = get(name)
    file_sha = None
    if benchmark_dir:
        if benchmark_dir.startswith("s3://"):
            from . import storage

            uri = storage.join(benchmark_dir, bench.local)
            path = storage.download_file(uri)
            source = uri
        else:
            path = Path(benchmark_dir).expanduser() / bench.local
            source = str(path)
            if not path.is_file():
                raise LightReasonerError(f"benchmark {name}: {path} not found (evaluation.benchmark_dir)")
        file_sha = hashlib.sha256(Path(path).read_bytes()).hexdigest()
        problems = rows_to_problems(bench, read_jsonl_rows(Path(path)), str(source))
    else:
        source = bench.hub_source()
        try:
            rows = hub_rows(bench)
        except Exception as exc:  # noqa: BLE001 - offline, renamed: one line
            from .errors import passthrough

            if passthrough(exc):
                raise
            text = str(exc).strip()
            first = text.splitlines()[0] if text else type(exc).__name__
            raise LightReasonerError(f"benchmark {name}: cannot load Hugging Face data set {bench.hub} ({first[:200]}); "
                                     "offline, set evaluation.benchmark_dir (--benchmark-dir)") from None
        problems = rows_to_problems(bench, ((f": row {i}", row) for i, row in enumerate(rows)), bench.hub)
    rows_loaded = len(problems)
    if limit is not None:
        problems = problems[:limit]
    if not problems:
        raise LightReasonerError(f"benchmark {name}: {source}: no problems")
    return BenchmarkData(bench, problems, source, file_sha, _digest(problems), rows_loaded)


def row_count_note(name: str, version: dict[str, Any]) -> str | None:
    """One line when a benchmark was scored on another number of rows than the paper's set has, else None."""
    paper = (BENCHMARKS[name].paper_rows if name in BENCHMARKS else 0) or version.get("paper_rows") or 0
    n = version.get("n")
    if not paper or n is None or int(n) == int(paper):
        return None
    return f"{name}: {int(n):,} rows, the paper's set has {int(paper):,}"


def table_markdown() -> str:
    """The benchmark table (README): name, hub data set, split, fields, answer type, local file, rows."""
    lines = ["| benchmark | hub data set | split | fields | answer type | local file | rows | toolkit's set |",
             "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    for b in BENCHMARKS.values():
        hub = b.hub_source().rsplit(":", 1)[0]
        lines.append(f"| `{b.name}` | `{hub}` | {b.split} | {', '.join(f'`{f}`' for f in b.fields)} | "
                     f"{b.answer_type} | `{b.local}` | {b.paper_rows:,} | {b.note.replace('|', '/')} |")
    return "\n".join(lines) + "\n"


# --- the paper's published numbers ----------------------------------------------------------------------

PAPER_RESULTS = Path(__file__).with_name("paper_results.yaml")


def _paper_table() -> dict[str, Any]:
    import yaml

    return yaml.safe_load(PAPER_RESULTS.read_text(encoding="utf-8"))


def paper_results(expert_model: str | None) -> dict[str, Any] | None:
    """The paper's published row of an Expert (``source``, ``model``, ``benchmarks``: name -> {base, sft,
    lightreasoner} in %, and ``average``), matched by the model's last path component (a hub id or a local
    folder named like it); None for an Expert the paper did not report."""
    if not expert_model:
        return None
    key = str(expert_model).rstrip("/").rsplit("/", 1)[-1].lower()
    table = _paper_table()
    for model, row in (table.get("models") or {}).items():
        if model.lower() == key:
            return {"source": table["source"], "model": model, "benchmarks": row.get("benchmarks") or {},
                    "average": row.get("average")}
    return None


def paper_comparison(metrics: dict[str, Any]) -> dict[str, Any] | None:
    """The paper's published numbers beside an evaluation's (``metrics.json``), per benchmark run: the paper's
    base / SFT / LightReasoner accuracy, ours base / tuned, and the differences (all in %); then the average
    over those benchmarks. None when the Expert is not one of the paper's."""
    paper = paper_results((metrics.get("expert") or {}).get("model"))
    if paper is None:
        return None

    def pct(value: Any) -> float | None:
        return None if value is None else round(float(value) * 100, 2)

    def minus(a: float | None, b: float | None) -> float | None:
        return None if a is None or b is None else round(a - b, 2)

    rows = []
    for name, m in (metrics.get("benchmarks") or {}).items():
        published = paper["benchmarks"].get(name)
        if not published:
            continue
        base, tuned = pct(m.get("accuracy_base")), pct(m.get("accuracy_tuned"))
        rows.append({"benchmark": name, "paper_base": published.get("base"), "paper_sft": published.get("sft"),
                     "paper_lightreasoner": published.get("lightreasoner"), "base": base, "tuned": tuned,
                     "base_minus_paper": minus(base, published.get("base")),
                     "tuned_minus_paper": minus(tuned, published.get("lightreasoner"))})
    if len(rows) > 1:
        def mean(key: str) -> float | None:
            values = [r[key] for r in rows]
            return None if any(v is None for v in values) else round(sum(values) / len(values), 2)

        average = {"benchmark": "average", **{k: mean(k) for k in ("paper_base", "paper_sft", "paper_lightreasoner",
                                                                      "base", "tuned")}}
        average["base_minus_paper"] = minus(average["base"], average["paper_base"])
        average["tuned_minus_paper"] = minus(average["tuned"], average["paper_lightreasoner"])
        rows.append(average)
    return {"source": paper["source"], "model": paper["model"], "rows": rows} if rows else None


def row_count_notes(metrics: dict[str, Any]) -> list[str]:
    """A line per benchmark scored on another number of rows than the paper's set has."""
    notes = [row_count_note(name, m.get("version") or {"n": m.get("n")})
             for name, m in (metrics.get("benchmarks") or {}).items() if name in BENCHMARKS]
    return [n for n in notes if n]
