"""The stage-output conventions: atomic writes, digests, manifests, and the one output-folder rule."""

import json

import pyarrow as pa
import pytest

from lightreasoner import outputs
from lightreasoner.errors import LightReasonerError
from lightreasoner.outputs import Claim, StageOutput, claim_output, prepare_output

RULE = dict(stage="sample", what="samples", fingerprint="fp", state="shards/state.json")


def _finished(out, fingerprint="fp", stage="sample"):
    out.mkdir(parents=True, exist_ok=True)
    (out / "data.parquet").write_bytes(b"x")
    (out / outputs.MANIFEST).write_text(json.dumps({"stage": stage, "fingerprint": fingerprint}))


def _in_progress(out, fingerprint="fp", work=True):
    (out / "shards").mkdir(parents=True, exist_ok=True)
    (out / "shards" / "state.json").write_text(json.dumps({"fingerprint": fingerprint}))
    if work:
        (out / "shards" / "batch-0.parquet").write_bytes(b"x")


def test_atomic_writes_digests_and_manifest_errors(tmp_path):
    outputs.write_json_atomic({"uri": "http://bob:pw@host", "n": 1}, tmp_path / "m.json")
    assert json.loads((tmp_path / "m.json").read_text()) == {"uri": "http://bob:***@host", "n": 1}
    outputs.write_table_atomic(pa.table({"a": [1, 2]}), tmp_path / "t.parquet")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.json", "t.parquet"]  # no .tmp left
    assert len(outputs.sha256_file(tmp_path / "m.json")) == 64
    assert outputs.folder_sha256(tmp_path) == outputs.folder_sha256(tmp_path)
    with pytest.raises(LightReasonerError, match=r"missing manifest.json \(not a finished samples folder\)"):
        outputs.read_manifest(tmp_path)
    (tmp_path / "manifest.json").write_text("[1]")
    with pytest.raises(LightReasonerError, match="expected a JSON object"):
        outputs.read_manifest(tmp_path)
    (tmp_path / "manifest.json").write_text("{")
    with pytest.raises(LightReasonerError, match="not valid JSON"):
        outputs.read_manifest(tmp_path)
    assert outputs.plan_batches([3, 1, 2, 1], 2) == [[1, 3], [2, 0]]
    assert outputs.plan_batches([3, 1, 2], 2, sort_by_length=False) == [[0, 1], [2]]
    assert outputs.cut_at_stop([5, 6, 2, 7], {2}) == [5, 6, 2] and outputs.cut_at_stop([5], {2}) == [5]


def test_rule_fresh_finished_and_in_progress(tmp_path):
    out = tmp_path / "out"
    assert prepare_output(out, **RULE) == Claim(out)
    (out / "shards").mkdir(parents=True)  # a run killed while claiming: only empty folders
    assert prepare_output(out, **RULE).clear
    _finished(out)
    assert prepare_output(out, **RULE, resume=True).finished == {"stage": "sample", "fingerprint": "fp"}
    with pytest.raises(LightReasonerError, match="already holds this samples job, finished .use --resume"):
        prepare_output(out, **RULE)
    assert prepare_output(out, **RULE, overwrite=True).clear
    with pytest.raises(LightReasonerError, match="holds samples output of a different config"):
        prepare_output(out, **{**RULE, "fingerprint": "other"})
    other = tmp_path / "wip"
    _in_progress(other)
    assert prepare_output(other, **RULE, resume=True) == Claim(other, resume=True)
    with pytest.raises(LightReasonerError, match="use --resume to continue it"):
        prepare_output(other, **RULE)
    with pytest.raises(LightReasonerError, match="different config .cannot resume"):
        prepare_output(other, **{**RULE, "fingerprint": "other"}, resume=True)


def test_rule_refuses_foreign_or_damaged_content_unless_overwrite(tmp_path):
    cases = {"train": lambda o: _finished(o, stage="train"),
             "damaged": lambda o: (o.mkdir(), (o / "manifest.json").write_text("{")),
             "files": lambda o: (o.mkdir(), (o / "notes.txt").write_text("mine")),
             "state": lambda o: (_in_progress(o), (o / "shards" / "state.json").write_text("{"))}
    for name, make in cases.items():
        out = tmp_path / name
        make(out)
        with pytest.raises(LightReasonerError, match=r"\(use --overwrite to replace it\)$"):
            prepare_output(out, **RULE, resume=True)
        assert prepare_output(out, **RULE, overwrite=True).clear
        assert out.exists()  # refusing wrote and removed nothing


def test_rule_work_in_progress_without_results_counts_as_empty(tmp_path):
    out = tmp_path / "out"
    _in_progress(out, fingerprint="old", work=False)
    has_work = lambda o: any((o / "shards").glob("batch-*"))  # noqa: E731
    assert prepare_output(out, **RULE, has_work=has_work).clear


def test_rule_rerun_recomputes_its_own_output_and_refuses_another_stage(tmp_path):
    ev = dict(stage="evaluate", what="evaluation", rerun=True)
    out = tmp_path / "eval"
    _finished(out, stage="evaluate")
    claim = prepare_output(out, **ev)
    assert claim == Claim(out)
    claim_output(claim, retire=("predictions_tuned.parquet",))
    assert not (out / outputs.MANIFEST).exists() and (out / "data.parquet").exists()
    _finished(tmp_path / "train", stage="train")
    with pytest.raises(LightReasonerError, match="belongs to stage 'train', not to stage 'evaluate' .choose another folder"):
        prepare_output(tmp_path / "train", **ev)


def test_claim_clears_and_records_the_fingerprint(tmp_path):
    out = tmp_path / "out"
    _finished(out, fingerprint="old")
    claim_output(prepare_output(out, **RULE, overwrite=True), fingerprint="fp", state="shards/state.json")
    assert [p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file()] == ["shards/state.json"]
    assert json.loads((out / "shards" / "state.json").read_text()) == {"fingerprint": "fp"}


def test_stage_output_runs_the_skeleton_in_order(tmp_path):
    """prepare (reads only) -> the caller's checks -> claim -> the caller's work -> the manifest last."""
    out = tmp_path / "out"
    output = StageOutput(out, **RULE)
    assert not out.exists() and output.finished is None  # prepared: nothing written yet
    with pytest.raises(RuntimeError, match="after claim"):
        output.finish({"n": 1})  # no manifest before the folder is claimed
    assert not out.exists()
    assert output.claim() == out
    assert json.loads((out / "shards" / "state.json").read_text()) == {"fingerprint": "fp"}
    (out / "data.parquet").write_bytes(b"x")  # the work
    assert not (out / outputs.MANIFEST).exists()
    assert output.finish({"fingerprint": "fp"}) == {"stage": "sample", "fingerprint": "fp"}
    assert json.loads((out / outputs.MANIFEST).read_text()) == {"stage": "sample", "fingerprint": "fp"}
    again = StageOutput(out, **RULE, resume=True)  # the same job, finished: returned as it is
    assert again.finished == {"stage": "sample", "fingerprint": "fp"}
    with pytest.raises(RuntimeError, match="already finished"):
        again.claim()
    mine = StageOutput(tmp_path / "other", **RULE)
    mine.claim()
    with pytest.raises(ValueError, match="manifest of stage 'train' in the output of stage 'sample'"):
        mine.finish({"stage": "train"})
    assert not (tmp_path / "other" / outputs.MANIFEST).exists()


def test_a_refused_prepare_writes_nothing(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    with pytest.raises(LightReasonerError, match="not empty and holds no samples output"):
        StageOutput(out, **RULE, resume=True)
    assert [p.name for p in out.iterdir()] == ["notes.txt"]
    _finished(tmp_path / "train", stage="train")
    before = sorted(p.name for p in (tmp_path / "train").iterdir())
    with pytest.raises(LightReasonerError, match="belongs to stage 'train'"):
        StageOutput(tmp_path / "train", stage="evaluate", what="evaluation", rerun=True)
    assert sorted(p.name for p in (tmp_path / "train").iterdir()) == before


def test_a_failing_work_step_leaves_no_manifest(tmp_path):
    out = tmp_path / "eval"

    def evaluate(fail: bool):  # a stage function on the skeleton
        output = StageOutput(out, stage="evaluate", what="evaluation", rerun=True, retire=("old.parquet",))
        output.claim()
        (out / "data.parquet").write_bytes(b"y")
        if fail:
            raise OSError("disk full")
        return output.finish({"n": 1})

    _finished(out, stage="evaluate")
    (out / "old.parquet").write_bytes(b"x")
    with pytest.raises(OSError, match="disk full"):
        evaluate(fail=True)
    assert sorted(p.name for p in out.iterdir()) == ["data.parquet"]  # the old manifest went first
    assert evaluate(fail=False) == {"stage": "evaluate", "n": 1}
    assert json.loads((out / outputs.MANIFEST).read_text()) == {"stage": "evaluate", "n": 1}
    # discard_on_failure (sft: the folder was empty when claimed): a failure empties it for the rerun
    sft = StageOutput(tmp_path / "sft", stage="sft", what="SFT", overwrite_flag=None)
    sft.claim()
    with pytest.raises(RuntimeError, match="diverged"), sft.discard_on_failure():
        (tmp_path / "sft" / "checkpoints").mkdir()
        (tmp_path / "sft" / "solutions.parquet").write_bytes(b"x")
        raise RuntimeError("diverged")
    assert list((tmp_path / "sft").iterdir()) == []
    StageOutput(tmp_path / "sft", stage="sft", what="SFT", overwrite_flag=None).claim()  # the rerun is taken
