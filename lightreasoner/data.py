"""Problems: loading, normalising, and the built-in synthetic arithmetic data set.

Every source becomes a list of :class:`Problem` (problem_id, question, answer). The id is a hash of the
normalised question, so the same problem has the same id in every file and every run.
"""

from __future__ import annotations

import hashlib
import json
import logging
import random
import re
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from .config import DataConfig, fingerprint_of
from .errors import LightReasonerError, passthrough
from .outputs import StageOutput, library_versions, write_table_atomic

log = logging.getLogger(__name__)

PROBLEM_SCHEMA = pa.schema(
    [("problem_id", pa.string()), ("question", pa.string()), ("answer", pa.string())]
)
FILE_SUFFIXES = (".jsonl", ".json", ".parquet")


@dataclass(frozen=True)
class Problem:
    problem_id: str
    question: str
    answer: str  # the gold final answer, as text ("72", "-3", "0.5")


def normalise_question(text: str) -> str:
    return " ".join(text.split()).lower()


def problem_id(question: str) -> str:
    """Stable id: the first 16 hex digits of sha256 of the normalised question."""
    return hashlib.sha256(normalise_question(question).encode("utf-8")).hexdigest()[:16]


def parse_gold_answer(answer: object) -> str:
    """GSM8K keeps the final answer after ``####``; other sets store the number itself."""
    text = str(answer).strip()
    if "####" in text:
        text = text.rsplit("####", 1)[1].strip()
    text = text.replace(",", "").replace("$", "").strip()
    if re.fullmatch(r"[-+]?\d+\.0+", text):
        text = text.split(".")[0]
    return text.lstrip("+")


def _record(source: str, where: str, row: dict, cfg: DataConfig) -> Problem:
    for name in (cfg.question_field, cfg.answer_field):
        if name not in row or row[name] is None:
            raise LightReasonerError(f"{source}{where}: missing field {name!r}")
    question = str(row[cfg.question_field]).strip()
    if not question:
        raise LightReasonerError(f"{source}{where}: empty field {cfg.question_field!r}")
    return Problem(problem_id(question), question, parse_gold_answer(row[cfg.answer_field]))


def read_jsonl_rows(path: Path) -> Iterator[tuple[str, dict[str, Any]]]:
    """The objects of a JSON Lines file with their place (``:<line>``); blank lines skipped, a bad line is a
    one-line error naming the file and line."""
    with Path(path).open("r", encoding="utf-8") as handle:
        for lineno, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                raise LightReasonerError(f"{path}:{lineno}: not valid JSON ({exc.msg})") from exc
            if not isinstance(row, dict):
                raise LightReasonerError(f"{path}:{lineno}: expected a JSON object")
            yield f":{lineno}", row


def _read_jsonl(path: Path, cfg: DataConfig) -> list[Problem]:
    return [_record(str(path), where, row, cfg) for where, row in read_jsonl_rows(path)]


def _read_parquet(path: Path, cfg: DataConfig) -> list[Problem]:
    try:
        table = pq.read_table(path)
    except (pa.ArrowInvalid, OSError) as exc:
        raise LightReasonerError(f"{path}: not a readable Parquet file ({exc})") from exc
    for name in (cfg.question_field, cfg.answer_field):
        if name not in table.column_names:
            raise LightReasonerError(f"{path}: missing field {name!r} (columns: {', '.join(table.column_names)})")
    rows = table.select([cfg.question_field, cfg.answer_field]).to_pylist()
    return [_record(str(path), f": row {i}", row, cfg) for i, row in enumerate(rows)]


def _read_hf(cfg: DataConfig) -> list[Problem]:
    try:
        import datasets

        ds = datasets.load_dataset(cfg.path, cfg.hf_config, split=cfg.split)
    except Exception as exc:  # noqa: BLE001 - offline, unknown name, unknown split: all one line
        if passthrough(exc):
            raise
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise LightReasonerError(f"{cfg.path}: cannot load Hugging Face dataset ({first})") from exc
    for name in (cfg.question_field, cfg.answer_field):
        if name not in ds.column_names:
            raise LightReasonerError(f"{cfg.path}: missing field {name!r}")
    return [_record(cfg.path, f": row {i}", row, cfg) for i, row in enumerate(ds)]


def read_problem_file(path: str | Path, cfg: DataConfig | None = None) -> list[Problem]:
    cfg = cfg or DataConfig()
    p = Path(path)
    if not p.is_file():
        raise LightReasonerError(f"{p}: data file not found")
    if p.suffix == ".parquet":
        return _read_parquet(p, cfg)
    return _read_jsonl(p, cfg)


def deduplicate(problems: list[Problem], source: str) -> list[Problem]:
    seen: set[str] = set()
    unique = []
    for prob in problems:
        if prob.problem_id not in seen:
            seen.add(prob.problem_id)
            unique.append(prob)
    dropped = len(problems) - len(unique)
    if dropped:
        log.warning("%s: dropped %d duplicate problem(s) (same normalised question)", source, dropped)
    return unique


def load_problems(cfg: DataConfig) -> list[Problem]:
    """Load, deduplicate and limit the problems a data config names. Raises on empty results."""
    source = cfg.path
    if source == "synthetic":
        if cfg.split not in ("train", "test"):
            raise LightReasonerError(f"data.split {cfg.split!r}: synthetic data has splits train and test")
        problems = synthetic_problems(cfg.split, cfg.synthetic_size, cfg.seed)
    elif source.startswith("s3://"):
        from . import storage

        local = storage.download_file(source)
        problems = read_problem_file(local, cfg)
    elif Path(source).exists() or source.endswith(FILE_SUFFIXES):
        problems = read_problem_file(source, cfg)
    else:
        problems = _read_hf(cfg)
    problems = deduplicate(problems, source)
    if cfg.limit is not None:
        problems = problems[: cfg.limit]
    if not problems:
        raise LightReasonerError(f"{source}: no problems (empty data set)")
    return problems


def problems_to_table(problems: list[Problem]) -> pa.Table:
    return pa.Table.from_pylist([asdict(p) for p in problems], schema=PROBLEM_SCHEMA)


def write_problems(problems: list[Problem], path: str | Path) -> Path:
    """Write the normalised Parquet file atomically (a temporary name, then a rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_table_atomic(problems_to_table(problems), path)
    return path


PROBLEMS = "problems.parquet"


def prepare_data(cfg: DataConfig, output: str | Path) -> Path:
    """Stage ``prepare``: load the configured problems and write ``problems.parquet`` under ``output``, then
    ``manifest.json`` last (:class:`lightreasoner.outputs.StageOutput`; recomputed on every call, like
    ``evaluate``: only another stage's output in ``output`` is refused). ``output`` ending in ``.parquet`` is
    a file, not a stage output folder: the problems are written there (atomically), with no manifest.
    Returns the problems file."""
    out = Path(output)
    if out.suffix == ".parquet":
        return write_problems(load_problems(cfg), out)
    # Everything that can be refused is checked before any output is written.
    stage = StageOutput(out, stage="prepare", what="prepared data", rerun=True, retire=(PROBLEMS,))
    problems = load_problems(cfg)
    stage.claim()
    path = write_problems(problems, out / PROBLEMS)
    settings = {"data": cfg.model_dump(mode="json")}  # fingerprint: equal to Config.fingerprint("data")
    stage.finish({"config": settings, "fingerprint": fingerprint_of(settings),
                  "counts": {"problems": len(problems)}, "versions": library_versions(), "files": [PROBLEMS]})
    return path


# --- built-in synthetic arithmetic word problems ---------------------------------------------------

_NAMES = ["Ava", "Ben", "Chloe", "Diego", "Emma", "Farid", "Grace", "Hiro", "Ines", "Jamal", "Kira", "Liam"]
_ITEMS = ["apples", "marbles", "stickers", "books", "coins", "pencils", "cookies", "stamps", "shells", "cards"]


def _step(rng: random.Random, value: int, item: str, name: str) -> tuple[str, int]:
    """One operation sentence and the new value; every value stays a non-negative integer."""
    kinds = ["add", "sub", "mul"]
    divisors = [d for d in (2, 3, 4, 5) if value % d == 0 and value // d > 0]
    if divisors:
        kinds.append("div")
    kind = rng.choice(kinds)
    if kind == "add":
        x = rng.randint(2, 40)
        verb = rng.choice([f"buys {x} more {item}", f"finds {x} more {item}", f"is given {x} more {item}"])
        return f"Then {name} {verb}.", value + x
    if kind == "sub" and value > 1:
        x = rng.randint(1, value - 1)
        verb = rng.choice([f"gives {x} {item} to a friend", f"loses {x} {item}", f"uses {x} {item}"])
        return f"Then {name} {verb}.", value - x
    if kind == "div":
        d = rng.choice(divisors)
        return f"Then {name} splits the {item} into {d} equal groups and keeps one group.", value // d
    k = rng.randint(2, 4)
    word = {2: "doubles", 3: "triples", 4: "quadruples"}[k]
    return f"Then {name} {word} the number of {item}.", value * k


def synthetic_problem(rng: random.Random) -> Problem:
    name, item = rng.choice(_NAMES), rng.choice(_ITEMS)
    value = rng.randint(3, 60)
    sentences = [f"{name} has {value} {item}."]
    for _ in range(rng.randint(1, 4)):
        sentence, value = _step(rng, value, item, name)
        sentences.append(sentence)
    sentences.append(f"How many {item} does {name} have now?")
    question = " ".join(sentences)
    return Problem(problem_id(question), question, str(value))


def synthetic_split(pid: str) -> str:
    """Train/test by id: one problem in five is a test problem, so the splits can never overlap."""
    return "test" if int(pid, 16) % 5 == 0 else "train"


def synthetic_problems(split: str, size: int, seed: int = 0) -> list[Problem]:
    """``size`` distinct problems of one split, the same for the same seed on every machine."""
    rng = random.Random(f"lightreasoner-synthetic-{seed}")
    problems: list[Problem] = []
    seen: set[str] = set()
    attempts = 0
    while len(problems) < size:
        attempts += 1
        if attempts > size * 50 + 1000:
            raise LightReasonerError(f"synthetic: could not generate {size} distinct {split} problems")
        prob = synthetic_problem(rng)
        if prob.problem_id in seen or synthetic_split(prob.problem_id) != split:
            continue
        seen.add(prob.problem_id)
        problems.append(prob)
    return problems
