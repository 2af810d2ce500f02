import json
import logging

import pyarrow.parquet as pq
import pytest
from conftest import GSM8K

from lightreasoner.config import DataConfig
from lightreasoner.data import (
    load_problems,
    parse_gold_answer,
    prepare_data,
    problem_id,
    synthetic_problems,
)
from lightreasoner.errors import LightReasonerError


def write_jsonl(path, rows):
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


def test_problem_id_is_a_stable_hash_of_the_normalised_question():
    a = problem_id("Tom has  3 apples.\n")
    assert a == problem_id("tom has 3 apples.") and len(a) == 16 and "tom" not in a


def test_gold_answers():
    assert parse_gold_answer("He has 3 + 4 = 7\n#### 1,234") == "1234"
    assert parse_gold_answer(" -5 ") == "-5" and parse_gold_answer(12.0) == "12"


def test_synthetic_is_seeded_and_splits_are_disjoint():
    train, test = synthetic_problems("train", 300), synthetic_problems("test", 100)
    assert train == synthetic_problems("train", 300)
    assert not {p.problem_id for p in train} & {p.problem_id for p in test}
    assert all(p.answer.lstrip("-").isdigit() for p in train)
    ops = {p.question.count("Then") for p in train}
    assert ops == {1, 2, 3, 4}


def test_jsonl_and_parquet_roundtrip(tmp_path):
    src = write_jsonl(tmp_path / "p.jsonl", [{"q": "What is 2+2?", "a": "#### 4"}, {"q": "What is 3+3?", "a": "6"}])
    cfg = DataConfig(path=str(src), question_field="q", answer_field="a")
    probs = load_problems(cfg)
    assert [p.answer for p in probs] == ["4", "6"]
    out = prepare_data(cfg, tmp_path / "prepared")
    assert pq.read_table(out).column_names == ["problem_id", "question", "answer"]
    again = load_problems(DataConfig(path=str(out)))
    assert again == probs


def test_duplicates_are_dropped_with_a_count(tmp_path, caplog):
    src = write_jsonl(tmp_path / "p.jsonl", [{"question": "Q one", "answer": "1"}, {"question": "q  ONE", "answer": "1"}])
    with caplog.at_level(logging.WARNING):
        probs = load_problems(DataConfig(path=str(src)))
    assert len(probs) == 1 and "dropped 1 duplicate" in caplog.text


@pytest.mark.parametrize(
    "rows, message",
    [
        ([{"question": "a", "answer": "1"}, "{not json"], "p.jsonl:2: not valid JSON"),
        ([{"question": "a"}], "p.jsonl:1: missing field 'answer'"),
        ([], "no problems (empty data set)"),
        (["[1, 2]"], "p.jsonl:1: expected a JSON object"),
    ],
)
def test_bad_files(tmp_path, rows, message):
    src = write_jsonl(tmp_path / "p.jsonl", rows)
    with pytest.raises(LightReasonerError) as err:
        load_problems(DataConfig(path=str(src)))
    assert message in str(err.value) and "\n" not in str(err.value)


def test_missing_file_and_unknown_dataset(tmp_path):
    with pytest.raises(LightReasonerError, match="data file not found"):
        load_problems(DataConfig(path=str(tmp_path / "nope.jsonl")))
    with pytest.raises(LightReasonerError, match="cannot load Hugging Face dataset"):
        load_problems(DataConfig(path="no-such-org/no-such-dataset"))


def test_prepare_data_failure_leaves_nothing(tmp_path):
    src = write_jsonl(tmp_path / "p.jsonl", [{"question": "a"}])
    with pytest.raises(LightReasonerError):
        prepare_data(DataConfig(path=str(src)), tmp_path / "out")
    assert not (tmp_path / "out" / "problems.parquet").exists()


@pytest.mark.skipif(not (GSM8K / "test.jsonl").is_file(), reason="GSM8K not available")
def test_gsm8k_file_loads():
    probs = load_problems(DataConfig(path=str(GSM8K / "test.jsonl")))
    assert len(probs) > 1300 and all(p.answer.lstrip("-").replace(".", "").isdigit() for p in probs)
