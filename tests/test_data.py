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
from lightreasoner.outputs import read_manifest


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


def test_prepare_data_writes_its_manifest_last_and_is_recomputed(tmp_path):
    out = tmp_path / "prepared"
    path = prepare_data(DataConfig(limit=3), out)
    manifest = read_manifest(out, "prepare")
    assert path == out / "problems.parquet" and pq.read_metadata(path).num_rows == 3
    assert manifest["stage"] == "prepare" and manifest["counts"] == {"problems": 3}
    assert manifest["config"]["data"]["limit"] == 3 and len(manifest["fingerprint"]) == 64
    assert "pyarrow" in manifest["versions"] and manifest["files"] == ["problems.parquet"]
    # a rerun (another config, or an older folder without a manifest) prepares the folder again in place
    prepare_data(DataConfig(limit=2), out)
    assert pq.read_metadata(path).num_rows == 2 and read_manifest(out, "prepare")["counts"] == {"problems": 2}
    (out / "manifest.json").unlink()
    prepare_data(DataConfig(limit=4), out)
    assert read_manifest(out, "prepare")["counts"] == {"problems": 4}
    # a .parquet path is a file, not a stage output folder: no manifest beside it
    single = prepare_data(DataConfig(limit=2), tmp_path / "single" / "p.parquet")
    assert single == tmp_path / "single" / "p.parquet" and sorted(p.name for p in single.parent.iterdir()) == ["p.parquet"]


def test_prepare_data_failed_work_leaves_no_manifest(tmp_path, monkeypatch):
    import lightreasoner.data as data

    out = tmp_path / "prepared"
    prepare_data(DataConfig(limit=3), out)

    def full(table, path):
        raise LightReasonerError(f"{path}: No space left on device")

    monkeypatch.setattr(data, "write_table_atomic", full)
    with pytest.raises(LightReasonerError, match="No space left"):
        prepare_data(DataConfig(limit=2), out)
    assert not (out / "manifest.json").exists() and not (out / "problems.parquet").exists()
    monkeypatch.undo()
    prepare_data(DataConfig(limit=2), out)  # nothing blocks the rerun
    assert read_manifest(out, "prepare")["counts"] == {"problems": 2}


def test_prepare_data_refuses_another_stages_output_untouched(tmp_path):
    out = tmp_path / "samples"
    out.mkdir()
    (out / "manifest.json").write_text(json.dumps({"stage": "sample"}))
    (out / "samples.parquet").write_bytes(b"data")
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    with pytest.raises(LightReasonerError) as err:
        prepare_data(DataConfig(limit=2), out)
    assert "belongs to stage 'sample', not to stage 'prepare'" in str(err.value) and "\n" not in str(err.value)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before


@pytest.mark.skipif(not (GSM8K / "test.jsonl").is_file(), reason="GSM8K not available")
def test_gsm8k_file_loads():
    probs = load_problems(DataConfig(path=str(GSM8K / "test.jsonl")))
    assert len(probs) > 1300 and all(p.answer.lstrip("-").replace(".", "").isdigit() for p in probs)
