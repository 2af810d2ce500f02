"""Stage 3: answer extraction, paired metrics, batched generation and the evaluation run."""

from __future__ import annotations

import json
import math
import re
import warnings
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from conftest import GSM8K, tiny_config

from lightreasoner.adapters import check_adapter_base, resolve_adapter
from lightreasoner.config import ModelConfig
from lightreasoner.data import Problem, load_problems, parse_gold_answer, problem_id
from lightreasoner.errors import LightReasonerError
from lightreasoner.evaluation import (
    PREDICTION_SCHEMA,
    answers_match,
    bootstrap_delta_ci,
    evaluate,
    extract_answer,
    generate_completions,
    mcnemar_exact,
    paired_metrics,
)
from lightreasoner.models import load_model, load_tokenizer, model_fingerprint, prompt_token_ids

# --- extraction ------------------------------------------------------------------------------------

EXTRACTION = [
    # GSM8K style
    ("She makes 9 * 2 = $<<9*2=18>>18 every day.\n#### 18", "18"),
    ("#### 1,450,000", "1450000"),
    ("#### -10", "-10"),
    # boxed, with nested braces, commas, LaTeX
    (r"So the total is $\boxed{1,000}$ dollars.", "1000"),
    (r"\boxed{1{,}250}", "1250"),
    (r"\boxed{\frac{1}{2}}", "0.5"),
    (r"\boxed{-\dfrac{3}{4}}", "-0.75"),
    (r"\boxed{\frac{1}{3}}", "1/3"),
    (r"\boxed{x = 5}", "5"),
    (r"\boxed{18 \text{ dollars}}", "18"),
    (r"\boxed{\$18.00}", "18"),
    (r"\boxed{50\%}", "50"),
    (r"First \boxed{3}, then corrected: \boxed{{4}}", "4"),
    (r"The answer is 7 and the final one is \boxed{12} as 3 * 4 = 12 then 99", "12"),
    # answer phrases
    ("The answer is -3.", "-3"),
    ("Answer: 42 apples", "42"),
    ("The answer is: $0.50", "0.5"),
    ("So 5 + 3 = 8. The answer is 3 * 4 = 12.", "12"),
    ("Final Answer: The final answer is $18$. I hope it is correct.", "18"),
    ("The answer is 2.\n\nQuestion: Tom has 9 apples and 4 pears.", "2"),
    # last number, several numbers
    ("She has 5 apples, then 7, then 12 apples left.", "12"),
    ("16-3-4=9", "9"),
    ("10 - 5 = 5, so 3 - 8", "8"),
    ("The temperature drops to -5 degrees", "-5"),
    ("It went up by 50%.", "50"),
    ("It costs $5.00", "5"),
    ("x = +7", "7"),
    ("Each gets 1/2 of the cake", "0.5"),
    ("Total: $1,234,567.50", "1234567.5"),
    ("It is 3.5.", "3.5"),
    ("It is .25 of the total", "0.25"),
    # no answer at all
    ("I do not know.", None),
    ("", None),
    (None, None),
]


@pytest.mark.parametrize(("text", "expected"), EXTRACTION)
def test_extract_answer(text, expected):
    assert extract_answer(text) == expected


MATCHES = [
    ("0.5", "1/2", True),
    ("1/2", "0.50", True),
    ("18.00", "18", True),
    ("$1,000", "1000", True),
    ("+7", "7", True),
    ("-3", "-3", True),
    ("3", "-3", False),
    ("50%", "50", True),
    ("1/3", "0.333", False),
    ("18", "#### 18", True),
    ("The answer is 18.", "18", True),
    (None, "18", False),
    ("A", "a", True),
    ("A", "18", False),
]


@pytest.mark.parametrize(("pred", "gold", "expected"), MATCHES)
def test_answers_match(pred, gold, expected):
    assert answers_match(pred, gold) is expected


@pytest.mark.skipif(not (GSM8K / "test.jsonl").is_file(), reason="GSM8K test set not present in ../shared")
def test_gsm8k_gold_answers_recovered():
    rows = [json.loads(line) for line in (GSM8K / "test.jsonl").read_text().splitlines() if line.strip()]
    assert len(rows) == 1319
    failures = []
    for row in rows:
        gold = parse_gold_answer(row["answer"])
        got = extract_answer(row["answer"])
        if got != gold or not answers_match(got, gold):
            failures.append((gold, got))
    assert not failures, failures[:10]


# --- paired metrics on hand-made tables ---------------------------------------------------------------


def test_paired_metrics_hand_table():
    base = [1, 1, 1, 0, 0, 0, 0, 0, 1, 0]
    tuned = [1, 1, 0, 1, 1, 1, 1, 0, 1, 1]
    m = paired_metrics(base, tuned, bootstrap_samples=4000, seed=3)
    assert m["n"] == 10
    assert m["correct_base"] == 4 and m["correct_tuned"] == 8
    assert m["accuracy_base"] == pytest.approx(0.4) and m["accuracy_tuned"] == pytest.approx(0.8)
    assert m["delta"] == pytest.approx(0.4)
    assert m["delta_ci_low"] < 0.4 < m["delta_ci_high"]
    assert -1.0 <= m["delta_ci_low"] and m["delta_ci_high"] <= 1.0
    # Discordant pairs: 1 base-only, 5 tuned-only. Two-sided exact: 2 * (C(6,0) + C(6,1)) / 2^6 = 14/64.
    assert (m["base_only_correct"], m["tuned_only_correct"]) == (1, 5)
    assert m["mcnemar_p"] == pytest.approx(14 / 64)
    # The same seed gives the same interval.
    again = paired_metrics(base, tuned, bootstrap_samples=4000, seed=3)
    assert (again["delta_ci_low"], again["delta_ci_high"]) == (m["delta_ci_low"], m["delta_ci_high"])


def test_mcnemar_exact_values():
    assert mcnemar_exact(0, 0) == 1.0
    assert mcnemar_exact(3, 3) == 1.0
    assert mcnemar_exact(0, 10) == pytest.approx(2 / 1024)
    assert mcnemar_exact(2, 8) == pytest.approx(2 * (1 + 10 + 45) / 1024)
    scipy_stats = pytest.importorskip("scipy.stats")
    for b, c in [(1, 5), (4, 15), (20, 31), (7, 0)]:
        assert mcnemar_exact(b, c) == pytest.approx(scipy_stats.binomtest(min(b, c), b + c, 0.5).pvalue)


def test_bootstrap_no_change_and_chunking():
    same = np.array([1, 0, 1, 1, 0] * 40, dtype=bool)
    assert bootstrap_delta_ci(same, same, 500, 0) == (0.0, 0.0)
    rng = np.random.default_rng(1)
    base = rng.random(3000) < 0.4
    tuned = base | (rng.random(3000) < 0.2)
    low, high = bootstrap_delta_ci(base, tuned, 1500, 0)  # several chunks of resamples
    delta = tuned.mean() - base.mean()
    assert low < delta < high and high - low < 0.05


def test_base_only_metrics_have_null_tuned_fields():
    m = paired_metrics([1, 0, 1])
    assert m["accuracy_base"] == pytest.approx(2 / 3)
    for key in ("accuracy_tuned", "delta", "delta_ci_low", "delta_ci_high", "mcnemar_p", "correct_tuned"):
        assert m[key] is None


# --- batched generation ------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["llama", "qwen2"])
def test_batched_equals_unbatched_greedy(tiny_models, kind):
    cfg = ModelConfig(model=str(tiny_models[kind]))
    tok, model = load_tokenizer(cfg), load_model(cfg)
    problems = load_problems(tiny_config(tiny_models).evaluation.data.model_copy(update={"limit": 7}))
    prompts = [prompt_token_ids(tok, p.question, "Please reason step by step.") for p in problems]
    assert len({len(p) for p in prompts}) > 1  # the batches really need padding
    batched = generate_completions(model, tok, prompts, 16, batch_size=4)
    single = generate_completions(model, tok, prompts, 16, batch_size=1)
    assert batched == single
    assert all(0 < len(c) <= 16 for c in batched)


# --- the evaluation run ------------------------------------------------------------------------------


def _make_adapter(model_dir: Path, folder: Path, target_modules=("q_proj", "v_proj"), seed: int = 0) -> Path:
    """A random (non-identity) LoRA adapter for the model in ``model_dir``, saved to ``folder``."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    base = AutoModelForCausalLM.from_pretrained(model_dir)
    lora = LoraConfig(r=4, lora_alpha=8, target_modules=list(target_modules), init_lora_weights=False)
    peft_model = get_peft_model(base, lora)
    with torch.no_grad():
        for name, param in peft_model.named_parameters():
            if "lora_B" in name:
                param.mul_(20.0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # peft: "Setting save_embedding_layers" for the lm_head adapter
        peft_model.save_pretrained(folder)
    return folder


def _make_training_folder(model_dir: Path, folder: Path, **kwargs) -> Path:
    """The stage-2 layout: ``adapter/`` and ``manifest.json`` whose ``expert`` fingerprints the base model."""
    _make_adapter(model_dir, folder / "adapter", **kwargs)
    manifest = {"stage": "train", "expert": model_fingerprint(ModelConfig(model=str(model_dir)))}
    (folder / "manifest.json").write_text(json.dumps(manifest))
    return folder


@pytest.fixture(scope="module")
def adapters(tiny_models, tmp_path_factory):
    root = tmp_path_factory.mktemp("adapters")
    return {
        "llama_training": _make_training_folder(tiny_models["llama"], root / "train-llama"),
        "qwen2_training": _make_training_folder(tiny_models["qwen2"], root / "train-qwen2"),
        "qwen2_bare": _make_adapter(tiny_models["qwen2"], root / "bare-qwen2"),
        "llama_bare": _make_adapter(tiny_models["llama"], root / "bare-llama"),
        "othertok_head": _make_adapter(tiny_models["llama_othertok"], root / "head-othertok",
                                       target_modules=("q_proj", "v_proj", "lm_head")),
    }


def _config(tiny_models, **sets):
    defaults = {"evaluation.data.limit": 5, "evaluation.batch_size": 3, "evaluation.max_new_tokens": 10,
                "evaluation.bootstrap_samples": 200}
    defaults.update(sets)
    return tiny_config(tiny_models, **defaults)


def test_evaluate_with_adapter_writes_the_contract(tiny_models, adapters, tmp_path):
    cfg = _config(tiny_models)
    out = tmp_path / "eval"
    result = evaluate(cfg, None, adapters["llama_training"], out, progress=False)
    names = {p.name for p in out.iterdir()}
    assert {"predictions_base.parquet", "predictions_tuned.parquet", "questions.parquet", "metrics.json",
            "accuracy.png", "manifest.json"} <= names
    assert not any(n.endswith(".tmp") for n in names)
    for name in ("predictions_base.parquet", "predictions_tuned.parquet"):
        table = pq.read_table(out / name)
        assert table.schema.equals(PREDICTION_SCHEMA)
        assert table.num_rows == 5
    base = pq.read_table(out / "predictions_base.parquet").to_pylist()
    tuned = pq.read_table(out / "predictions_tuned.parquet").to_pylist()
    assert [r["problem_id"] for r in base] == [r["problem_id"] for r in tuned]
    assert [r["output"] for r in base] != [r["output"] for r in tuned]  # the adapter changes the model
    for row in base + tuned:
        assert row["extracted"] == extract_answer(row["output"])
        assert row["correct"] == answers_match(row["extracted"], row["gold"])
        assert 0 < row["tokens_generated"] <= 10

    metrics = json.loads((out / "metrics.json").read_text())
    for key in ("n", "accuracy_base", "accuracy_tuned", "delta", "delta_ci_low", "delta_ci_high", "mcnemar_p",
                "correct_base", "correct_tuned", "data", "expert", "adapter", "problems_sha256"):
        assert key in metrics
    assert metrics["n"] == 5 and metrics["data"]["limit"] == 5
    assert metrics["correct_base"] == sum(r["correct"] for r in base)
    assert metrics["expert"] == model_fingerprint(cfg.expert)
    assert metrics["adapter"] == str(adapters["llama_training"])
    assert metrics == result.metrics
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["stage"] == "evaluate"
    assert manifest["config"]["evaluation"]["max_new_tokens"] == 10
    assert manifest["metrics"] == metrics and "versions" in manifest and "timing" in manifest
    assert (out / "accuracy.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    # Base outputs come from the plain Expert (adapter disabled): the same as a base-only run.
    plain = evaluate(cfg, None, None, tmp_path / "plain", progress=False)
    assert [p.output for p in plain.predictions_base] == [r["output"] for r in base]
    assert plain.metrics["problems_sha256"] == metrics["problems_sha256"]
    # The adapter folder itself is accepted too (with the training manifest above it).
    source = resolve_adapter(adapters["llama_training"] / "adapter")
    assert source.folder == adapters["llama_training"] / "adapter"
    assert source.training_manifest["expert"] == metrics["expert"]


def test_evaluate_base_only(tiny_models, tmp_path):
    cfg = _config(tiny_models)
    problems = [Problem(problem_id(q), q, a) for q, a in [("Ava has 3 apples. How many?", "3"),
                                                          ("Ben has 7 coins and finds 2. How many?", "9")]]
    out = tmp_path / "base"
    result = evaluate(cfg, str(tiny_models["qwen2"]), None, out, problems=problems, progress=False)
    assert not (out / "predictions_tuned.parquet").exists()
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["n"] == 2 and metrics["adapter"] is None
    for key in ("accuracy_tuned", "delta", "delta_ci_low", "delta_ci_high", "mcnemar_p", "correct_tuned"):
        assert metrics[key] is None
    assert metrics["expert"]["model"] == str(tiny_models["qwen2"])  # --model overrides expert.model
    assert result.manifest["adapter"] is None
    assert (out / "manifest.json").is_file() and (out / "accuracy.png").is_file()


def _assert_refused(excinfo, out: Path, *words: str):
    message = str(excinfo.value)
    assert "\n" not in message and message
    for word in words:
        assert word in message
    assert not (out / "manifest.json").exists()


def test_adapter_for_another_base_model_is_refused(tiny_models, adapters, tmp_path):
    cfg = _config(tiny_models)  # expert: tiny llama
    cases = [
        (adapters["qwen2_training"], "trained on expert"),  # training manifest: different fingerprint
        (adapters["qwen2_training"] / "adapter", "trained on expert"),
        (adapters["qwen2_bare"], "made for base model"),  # peft's base_model_name_or_path
    ]
    for adapter, words in cases:
        out = tmp_path / f"out-{adapter.name}"
        with pytest.raises(LightReasonerError) as excinfo:
            evaluate(cfg, None, adapter, out, progress=False)
        _assert_refused(excinfo, out, str(adapter), words)


def test_bare_adapter_base_check(tiny_models, adapters):
    cfg = _config(tiny_models)
    info = model_fingerprint(cfg.expert)
    check_adapter_base(resolve_adapter(adapters["llama_bare"]), cfg, info, None)  # made for this Expert
    with pytest.raises(LightReasonerError, match="made for base model"):
        check_adapter_base(resolve_adapter(adapters["qwen2_bare"]), cfg, info, None)


def test_adapter_with_other_shapes_is_refused(tiny_models, adapters, tmp_path):
    # Pretend the adapter was made for this Expert: its lm_head LoRA still has another vocabulary's shape.
    folder = adapters["othertok_head"]
    config_path = folder / "adapter_config.json"
    data = json.loads(config_path.read_text())
    data["base_model_name_or_path"] = str(tiny_models["llama"])
    config_path.write_text(json.dumps(data))
    out = tmp_path / "out"
    with pytest.raises(LightReasonerError) as excinfo:
        evaluate(_config(tiny_models), None, folder, out, progress=False)
    _assert_refused(excinfo, out, "cannot load onto expert.model", "another base model")


def test_missing_adapter_folder(tiny_models, tmp_path):
    out = tmp_path / "out"
    with pytest.raises(LightReasonerError) as excinfo:
        evaluate(_config(tiny_models), None, tmp_path / "nope", out, progress=False)
    _assert_refused(excinfo, out, "not found")
    (tmp_path / "empty").mkdir()
    with pytest.raises(LightReasonerError) as excinfo:
        evaluate(_config(tiny_models), None, tmp_path / "empty", out, progress=False)
    _assert_refused(excinfo, out, "adapter_config.json")


def test_empty_data_set_is_refused(tiny_models, tmp_path):
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    out = tmp_path / "out"
    with pytest.raises(LightReasonerError) as excinfo:
        evaluate(_config(tiny_models, **{"evaluation.data.path": str(empty)}), None, None, out, progress=False)
    _assert_refused(excinfo, out, str(empty), "empty")


def test_unknown_data_set_name_is_refused(tiny_models, tmp_path):
    out = tmp_path / "out"
    cfg = _config(tiny_models, **{"evaluation.data.path": "no-such-org/no-such-dataset"})
    with pytest.raises(LightReasonerError) as excinfo:
        evaluate(cfg, None, None, out, progress=False)
    _assert_refused(excinfo, out, "no-such-org/no-such-dataset")


def test_field_mapping_and_limit(tiny_models, tmp_path):
    rows = [{"Body": "Kira has 4 cards.", "Question": "How many cards?", "Answer": 4.0, "text": f"Kira has {i} "
             "cards. How many cards?", "n": i} for i in range(6)]
    data = tmp_path / "svamp.jsonl"
    data.write_text("\n".join(json.dumps(r) for r in rows))
    cfg = _config(tiny_models, **{"evaluation.data.path": str(data), "evaluation.data.question_field": "text",
                                  "evaluation.data.answer_field": "n"})
    result = evaluate(cfg, None, None, tmp_path / "out", limit=2, progress=False)
    assert result.metrics["n"] == 2
    assert [p.gold for p in result.predictions_base] == ["0", "1"]
    with pytest.raises(LightReasonerError, match="--limit 0"):
        evaluate(cfg, None, None, tmp_path / "out2", limit=0, progress=False)


def test_refuses_another_stages_output_folder(tiny_models, tmp_path):
    out = tmp_path / "samples"
    out.mkdir()
    (out / "manifest.json").write_text(json.dumps({"stage": "sample"}))
    with pytest.raises(LightReasonerError, match="stage 'sample'"):
        evaluate(_config(tiny_models), None, None, out, progress=False)
    assert json.loads((out / "manifest.json").read_text()) == {"stage": "sample"}


# --- CLI ---------------------------------------------------------------------------------------------


def test_cli_evaluate(tiny_models, adapters, tmp_path, capsys):
    from lightreasoner.cli import main

    sets = ["--set", "evaluation.max_new_tokens=8", "--set", "evaluation.bootstrap_samples=200",
            "--set", "tracking.enabled=false"]
    out = tmp_path / "cli-bad"
    code = main(["evaluate", *sets, "--model", str(tiny_models["llama"]), "--adapter",
                 str(adapters["qwen2_training"]), "--output", str(out), "--limit", "3"])
    err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error")]
    assert code == 2
    assert len(err) == 1 and err[0].startswith("error: adapter ") and "trained on expert" in err[0]
    assert not (out / "manifest.json").exists()

    out = tmp_path / "cli-ok"
    code = main(["evaluate", *sets, "--model", str(tiny_models["llama"]), "--adapter",
                 str(adapters["llama_training"]), "--output", str(out), "--limit", "3"])
    printed = capsys.readouterr().out
    assert code == 0
    assert "n=3 " in printed and "mcnemar_p=" in printed
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["n"] == 3 and not math.isnan(metrics["delta"])


def test_cli_evaluate_shards_and_merge(tiny_models, adapters, tmp_path, capsys):
    from lightreasoner.cli import main

    args = ["--set", "evaluation.max_new_tokens=8", "--set", "evaluation.bootstrap_samples=200", "--set",
            "evaluation.batch_size=1", "--set", "tracking.enabled=false", "--model", str(tiny_models["llama"]),
            "--limit", "3"]
    adapter = ["--adapter", str(adapters["llama_training"])]
    for index in range(2):
        assert main(["evaluate", *args, *adapter, "--output", str(tmp_path / f"s{index}"), "--shard", f"{index}/2"]) == 0
    assert "shard=1/2 sides=base,tuned problems=1 " in capsys.readouterr().out
    assert main(["evaluate-merge", str(tmp_path / "s0"), str(tmp_path / "s1"), "--output", str(tmp_path / "m")]) == 0
    assert "n=3 " in capsys.readouterr().out
    assert json.loads((tmp_path / "m" / "manifest.json").read_text())["shards"] == 2
    for argv, message in ((["--side", "base"], "error: --side: only with --shard I/N"),
                          (["--shard", "2/2"], "error: --shard 2/2: expected I/N with 0 <= I < N"),
                          (["--shard", "0/2", "--side", "tuned"], "error: --side tuned: needs --adapter")):
        assert main(["evaluate", *args, "--output", str(tmp_path / "bad"), *argv]) == 2
        assert [line for line in capsys.readouterr().err.splitlines() if line.startswith("error")] == [message]
    assert not (tmp_path / "bad" / "manifest.json").exists()


def test_answers_changed_counts_different_extracted_answers():
    from lightreasoner.evaluation import Prediction, answers_changed

    def pred(pid, extracted):
        return Prediction(pid, f"out {extracted}", extracted, "3", extracted == "3", 4)

    base = [pred("a", "3"), pred("b", "5"), pred("c", None), pred("d", "7")]
    tuned = [pred("a", "3"), pred("b", "6"), pred("c", "2"), pred("d", "7")]
    assert answers_changed(base, tuned) == 2 and answers_changed(base, None) is None


# --- sharded evaluation (the pipeline's pods) ------------------------------------------------------


def test_sharded_evaluation_merges_to_the_single_pod_run(tiny_models, adapters, tmp_path):
    from lightreasoner.evaluation import evaluate_shard, merge_evaluation

    # 7 problems in batches of 2: 4 batches, so 2 shards hold 2 batches each and 3 shards 2, 1 and 1.
    cfg = _config(tiny_models, **{"evaluation.data.limit": 7, "evaluation.batch_size": 2})
    adapter = adapters["llama_training"]
    single = evaluate(cfg, None, adapter, tmp_path / "single", progress=False)
    assert len({p.output for p in single.predictions_tuned}) > 1  # outputs that differ: a real comparison
    # The pipeline's layout: base and tuned in separate pods, 2 shards.
    dirs = []
    for index in range(2):
        for side in ("base", "tuned"):
            dirs.append(tmp_path / f"{side}-{index}")
            manifest = evaluate_shard(cfg, None, adapter if side == "tuned" else None, dirs[-1], (index, 2),
                                      sides=(side,), progress=False)
            assert manifest["stage"] == "evaluate-shard" and manifest["problems"] == {"data": 4 - index}
    merged = merge_evaluation(list(reversed(dirs)), tmp_path / "merged", config=cfg)
    assert merged.metrics == single.metrics
    for name in ("predictions_base.parquet", "predictions_tuned.parquet"):
        assert pq.read_table(tmp_path / "merged" / name).equals(pq.read_table(tmp_path / "single" / name)), name
    before, after = single.manifest, merged.manifest
    for key in ("stage", "config", "expert", "adapter", "protocol", "benchmarks", "metrics", "files"):
        assert after[key] == before[key], key
    assert after["shards"] == 2 and after["timing"]["tuned_tokens"] == before["timing"]["tuned_tokens"]
    # Both sides in one pod per shard (`lightreasoner evaluate --shard I/N`), 3 shards: the same again.
    three = [tmp_path / f"both-{i}" for i in range(3)]
    for index, folder in enumerate(three):
        evaluate_shard(cfg, None, adapter, folder, (index, 3), progress=False)
    assert merge_evaluation(three, tmp_path / "merged-3").metrics == single.metrics

    # A missing shard, a folder that is no shard, shards of another config: one line, nothing written.
    other = tmp_path / "other"
    evaluate_shard(_config(tiny_models, **{"evaluation.data.limit": 7, "evaluation.batch_size": 2,
                                           "evaluation.seed": 1}), None, None, other, (1, 2), progress=False)
    cases = [(dirs[:3], "tuned predictions cover shards [0], expected 0..1 once each"),
             ([*dirs, tmp_path / "single"], "belongs to stage 'evaluate', not to stage 'evaluate-shard'"),
             ([dirs[0], other], "evaluated with different configs"),
             ([tmp_path / "nothing"], "missing manifest.json (not a finished evaluation shard)"),
             ([dirs[0], dirs[2], three[0]], "base predictions cover shards [0, 0, 1], expected 0..1")]
    for folders, message in cases:
        out = tmp_path / "refused"
        with pytest.raises(LightReasonerError, match=re.escape(message)) as excinfo:
            merge_evaluation(folders, out)
        _assert_refused(excinfo, out)
    with pytest.raises(LightReasonerError, match="evaluated with another config"):
        merge_evaluation(dirs, tmp_path / "refused", config=_config(tiny_models))
    with pytest.raises(LightReasonerError, match=re.escape("--shard 2/2: expected I/N with 0 <= I < N")):
        evaluate_shard(cfg, None, None, tmp_path / "bad", (2, 2), progress=False)
    with pytest.raises(LightReasonerError, match="--side tuned: needs --adapter"):
        evaluate_shard(cfg, None, None, tmp_path / "bad", (0, 2), sides=("tuned",), progress=False)
    assert not (tmp_path / "bad").exists()
