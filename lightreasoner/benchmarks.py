"""The paper's seven benchmarks: where each lives, which fields hold the problem and the gold answer, and how
its answers are graded -- one table, :data:`BENCHMARKS`.

Offline, ``evaluation.benchmark_dir`` names a folder (or s3:// prefix) with ``<name>/test.jsonl`` per benchmark,
the Qwen2.5-Math evaluation toolkit's layout and row format; else the Hugging Face data set is loaded. A
benchmark's version is the sha256 of its problems (ids and gold answers) and, for a file, of the file itself.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import LightReasonerError

CHOICE_LETTERS = "ABCDEFGHIJ"


@dataclass(frozen=True)
class Benchmark:
    name: str
    hub: str  # Hugging Face data set
    hf_config: str | None
    split: str
    fields: tuple[str, ...]  # the fields a row must have: the problem's, then the gold answer's
    answer_type: str  # number, latex or choice (lightreasoner.answers)
    local: str  # file under evaluation.benchmark_dir
    question: Callable[[dict[str, Any]], str]
    gold: Callable[[dict[str, Any]], str]
    note: str = ""


def last_boxed(text: str) -> str | None:
    from .answers import _last_boxed

    return _last_boxed(str(text))


def _number_gold(value: Any) -> str:
    from .data import parse_gold_answer

    return parse_gold_answer(value)


def _asdiv_gold(value: Any) -> str:
    """``9 (apples)`` -> ``9``; answers that are not numbers (``Mrs. Hilt``) stay text."""
    text = re.sub(r"\s*\([^()]*\)\s*$", "", str(value)).strip()
    return _number_gold(text) if text else str(value).strip()


def _math_gold(row: dict[str, Any]) -> str:
    if row.get("answer") not in (None, ""):
        return str(row["answer"]).strip()
    boxed = last_boxed(row.get("solution") or "")
    if boxed is None:
        raise KeyError("answer")
    return boxed.strip()


def _minerva_gold(row: dict[str, Any]) -> str:
    boxed = last_boxed(row["solution"])
    if boxed is None:
        raise KeyError("solution")  # a solution without \boxed{} has no gold answer
    return boxed.strip()


def _olympiad_gold(row: dict[str, Any]) -> str:
    answers = row["final_answer"]
    if isinstance(answers, str):
        answers = [answers]
    return ", ".join(str(a).strip().strip("$").strip() for a in answers)


def _olympiad_question(row: dict[str, Any]) -> str:
    context = (row.get("context") or "").strip()
    return f"{context}\n{row['question']}".strip() if context else str(row["question"])


def _mmlu_question(row: dict[str, Any]) -> str:
    choices = "\n".join(f"({CHOICE_LETTERS[i]}) {c}" for i, c in enumerate(row["choices"]))
    return f"{row['question']}\nAnswer Choices:\n{choices}"


def _mmlu_gold(row: dict[str, Any]) -> str:
    answer = row["answer"]
    if isinstance(answer, str) and answer.strip().upper() in CHOICE_LETTERS:
        return answer.strip().upper()
    return CHOICE_LETTERS[int(answer)]


BENCHMARKS: dict[str, Benchmark] = {b.name: b for b in (
    Benchmark("gsm8k", "openai/gsm8k", "main", "test", ("question", "answer"), "number", "gsm8k/test.jsonl",
              lambda r: str(r["question"]), lambda r: _number_gold(r["answer"]), "gold: the number after ####"),
    Benchmark("math", "HuggingFaceH4/MATH-500", None, "test", ("problem", "answer"), "latex", "math/test.jsonl",
              lambda r: str(r["problem"]), _math_gold,
              "the hub default is MATH-500; a local file may hold the 5,000 test problems (answer, else the last "
              "\\boxed{} of solution)"),
    Benchmark("svamp", "ChilleD/SVAMP", None, "test", ("Body", "Question", "Answer"), "number", "svamp/test.jsonl",
              lambda r: f"{str(r['Body']).strip()} {str(r['Question']).strip()}", lambda r: _number_gold(r["Answer"]),
              "question: Body + Question"),
    Benchmark("asdiv", "EleutherAI/asdiv", None, "validation", ("body", "question", "answer"), "number",
              "asdiv/test.jsonl", lambda r: f"{str(r['body']).strip()} {str(r['question']).strip()}",
              lambda r: _asdiv_gold(r["answer"]), "gold: answer without its unit (9 (apples) -> 9)"),
    Benchmark("minerva_math", "math-ai/minervamath", None, "test", ("problem", "solution"), "latex",
              "minerva_math/test.jsonl", lambda r: str(r["problem"]), _minerva_gold,
              "gold: the last \\boxed{} of solution"),
    Benchmark("olympiadbench", "Hothan/OlympiadBench", "OE_TO_maths_en_COMP", "train", ("question", "final_answer"),
              "latex", "olympiadbench/test.jsonl", _olympiad_question, _olympiad_gold,
              "gold: final_answer, a list joined with commas"),
    Benchmark("mmlu_stem", "TIGER-Lab/MMLU-STEM", None, "test", ("question", "choices", "answer"), "choice",
              "mmlu_stem/test.jsonl", _mmlu_question, _mmlu_gold, "gold: the letter of choices[answer]"),
)}


def check_names(names: list[str]) -> list[str]:
    """The benchmark names, validated (unknown names refused), duplicates dropped, order kept."""
    unknown = [n for n in names if n not in BENCHMARKS]
    if unknown:
        raise ValueError(f"unknown benchmark {unknown[0]!r} (known: {', '.join(BENCHMARKS)})")
    return list(dict.fromkeys(names))


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

    def version(self) -> dict[str, Any]:
        return {"source": self.source, "file_sha256": self.file_sha256, "problems_sha256": self.problems_sha256,
                "n": len(self.problems), "answer_type": self.benchmark.answer_type}


def rows_to_problems(bench: Benchmark, rows, where: str) -> list:
    """Problems of a benchmark's rows; a row without a field the table names is refused (one line)."""
    from .data import Problem, problem_id

    problems = []
    for label, row in rows:
        missing = [f for f in bench.fields if f not in row or row[f] is None]
        if missing:
            raise LightReasonerError(f"{where}{label}: benchmark {bench.name}: missing field {missing[0]!r}")
        try:
            question, gold = bench.question(row).strip(), bench.gold(row)
        except (KeyError, IndexError, ValueError, TypeError) as exc:
            raise LightReasonerError(f"{where}{label}: benchmark {bench.name}: no gold answer ({exc!s})") from None
        if not question:
            raise LightReasonerError(f"{where}{label}: benchmark {bench.name}: empty problem")
        problems.append(Problem(problem_id(question), question, gold))
    return problems


def _digest(problems) -> str:
    digest = hashlib.sha256()
    for prob in sorted(problems, key=lambda p: p.problem_id):
        digest.update(f"{prob.problem_id}\t{prob.answer}\n".encode())
    return digest.hexdigest()


def load_benchmark(name: str, benchmark_dir: str = "", limit: int | None = None) -> BenchmarkData:
    """A benchmark's problems (deduplicated, the first ``limit``), from ``benchmark_dir`` or the hub."""
    from .data import deduplicate, read_jsonl_rows

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
        source = f"{bench.hub}:{bench.split}" + (f" ({bench.hf_config})" if bench.hf_config else "")
        try:
            import datasets

            ds = datasets.load_dataset(bench.hub, bench.hf_config, split=bench.split)
        except Exception as exc:  # noqa: BLE001 - offline, renamed: one line
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise LightReasonerError(f"benchmark {name}: cannot load Hugging Face data set {bench.hub} ({first[:200]}); "
                                     "offline, set evaluation.benchmark_dir") from None
        problems = rows_to_problems(bench, ((f": row {i}", row) for i, row in enumerate(ds)), bench.hub)
    problems = deduplicate(problems, source)
    if limit is not None:
        problems = problems[:limit]
    if not problems:
        raise LightReasonerError(f"benchmark {name}: {source}: no problems")
    return BenchmarkData(bench, problems, source, file_sha, _digest(problems))


def table_markdown() -> str:
    """The benchmark table (README): name, hub data set, split, fields, answer type, local file."""
    lines = ["| benchmark | hub data set | split | fields | answer type | local file | gold |",
             "| --- | --- | --- | --- | --- | --- | --- |"]
    for b in BENCHMARKS.values():
        hub = b.hub + (f" ({b.hf_config})" if b.hf_config else "")
        lines.append(f"| `{b.name}` | `{hub}` | {b.split} | {', '.join(f'`{f}`' for f in b.fields)} | "
                     f"{b.answer_type} | `{b.local}` | {b.note.replace('|', '/')} |")
    return "\n".join(lines) + "\n"
