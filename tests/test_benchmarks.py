"""The seven benchmarks: loading in their real formats, grading end to end on tiny models, one model load,
the base-prediction cache, the protocol's stop tokens, gold answers graded against themselves, bad input."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import GSM8K, build_answering_model, build_tokenizer

from lightreasoner.answers import extract, grade
from lightreasoner.benchmarks import BENCHMARKS, load_benchmark, table_markdown
from lightreasoner.config import load_config
from lightreasoner.errors import LightReasonerError

MATH_BENCHMARKS = GSM8K.parent / "math-benchmarks"

# A few rows per benchmark in its real format (the toolkit's test.jsonl; MATH as MATH-500 ships it). The
# first row of each has the gold answer 4 (what the "answering" tiny Expert says), the second does not.
FIXTURES: dict[str, list[dict]] = {
    "gsm8k": [
        {"question": "Ava has 2 apples and buys 2 more. How many apples does she have?",
         "answer": "She has 2 + 2 = <<2+2=4>>4 apples.\n#### 4"},
        {"question": "Ben has 3 coins and finds 4 more. How many coins does he have?",
         "answer": "3 + 4 = <<3+4=7>>7\n#### 7"},
    ],
    "math": [
        {"problem": "What is $\\sqrt{16}$?", "solution": "$\\sqrt{16} = \\boxed{4}$.", "answer": "4",
         "subject": "Prealgebra", "level": 1, "unique_id": "test/prealgebra/1.json"},
        {"problem": "Simplify $\\frac{2}{4}$.", "solution": "$\\frac{2}{4} = \\boxed{\\frac{1}{2}}$.",
         "answer": "\\frac{1}{2}", "subject": "Prealgebra", "level": 1, "unique_id": "test/prealgebra/2.json"},
    ],
    "svamp": [
        {"Body": "There are 8 oranges in 2 equal groups.", "Question": "How big is each group?",
         "Answer": 4.0, "Equation": "( 8.0 / 2.0 )", "Type": "Common-Division", "ID": "chal-1"},
        {"Body": "Marco has 5 pounds of strawberries.", "Question": "How much do 2 such baskets weigh?",
         "Answer": 10.0, "Equation": "( 5.0 * 2.0 )", "Type": "Multiplication", "ID": "chal-2"},
    ],
    "asdiv": [
        {"body": "Two red apples and two green apples are in the basket.", "question": "How many apples?",
         "solution_type": "Addition", "answer": "4 (apples)", "formula": "2+2=4"},
        {"body": "Ellen has six balls and gets three more.", "question": "How many balls does Ellen have?",
         "solution_type": "Addition", "answer": "9 (balls)", "formula": "6+3=9"},
    ],
    "minerva_math": [
        {"problem": "A wave has period $0.25 \\mathrm{~s}$. What is its frequency in Hz?",
         "solution": "The frequency is $1 / 0.25 = \\boxed{4} \\mathrm{~Hz}$.", "type": "Physics (8.01)"},
        {"problem": "Find $x$ if $2x = 3$.", "solution": "$x = \\boxed{\\frac{3}{2}}$.", "type": "Algebra"},
    ],
    "olympiadbench": [
        {"id": 1, "subfield": "Algebra", "context": None, "question": "Find the positive root of $x^2 = 16$.",
         "solution": ["$x = 4$."], "final_answer": ["$4$"], "is_multiple_answer": False, "unit": None,
         "answer_type": "Numerical", "error": None},
        {"id": 2, "subfield": "Algebra", "context": None, "question": "Solve $x^2 < 1$.",
         "solution": ["$(-1, 1)$."], "final_answer": ["$(-1,1)$"], "is_multiple_answer": False, "unit": None,
         "answer_type": "Interval", "error": None},
    ],
    "mmlu_stem": [
        {"question": "How many legs does a spider have?", "type": "college_biology",
         "choices": ["six", "eight", "ten", "four"], "answer": 1},
        {"question": "Which is a noble gas?", "type": "high_school_chemistry",
         "choices": ["neon", "oxygen", "iron", "carbon"], "answer": 0},
    ],
}


def write_benchmarks(root: Path, names=None) -> Path:
    for name in names or FIXTURES:
        folder = root / name
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "test.jsonl").write_text("".join(json.dumps(row) + "\n" for row in FIXTURES[name]))
    return root


def test_table_covers_the_seven_benchmarks():
    assert list(BENCHMARKS) == ["gsm8k", "math", "svamp", "asdiv", "minerva_math", "olympiadbench", "mmlu_stem"]
    assert {b.answer_type for b in BENCHMARKS.values()} == {"number", "latex", "choice"}
    assert all(f"`{name}`" in table_markdown() for name in BENCHMARKS)
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    assert table_markdown() in readme, "README's benchmark table is out of date (benchmarks.table_markdown())"


@pytest.mark.parametrize("name", list(FIXTURES))
def test_fixture_rows_load_with_their_gold_answers(name, tmp_path):
    data = load_benchmark(name, str(write_benchmarks(tmp_path, [name])))
    expected = {"gsm8k": ["4", "7"], "math": ["4", "\\frac{1}{2}"], "svamp": ["4", "10"], "asdiv": ["4", "9"],
                "minerva_math": ["4", "\\frac{3}{2}"], "olympiadbench": ["4", "(-1,1)"], "mmlu_stem": ["B", "A"]}
    assert [p.answer for p in data.problems] == expected[name]
    assert data.file_sha256 and data.problems_sha256 and data.version()["n"] == 2
    if name == "mmlu_stem":
        assert "(B) eight" in data.problems[0].question
    if name in ("svamp", "asdiv"):
        assert data.problems[0].question.endswith("?") and "." in data.problems[0].question


def test_unknown_benchmark_is_one_line(tmp_path):
    with pytest.raises(LightReasonerError, match="unknown benchmark 'gsm9k'") as info:
        load_config(None, ["evaluation.benchmarks=gsm8k,gsm9k"])
    assert "\n" not in str(info.value)
    with pytest.raises(LightReasonerError, match="benchmark 'aime': unknown") as info:
        load_benchmark("aime", str(tmp_path))
    assert "\n" not in str(info.value)


def test_file_missing_the_answer_field_is_one_line(tmp_path):
    folder = tmp_path / "svamp"
    folder.mkdir()
    rows = [dict(FIXTURES["svamp"][0]), {k: v for k, v in FIXTURES["svamp"][1].items() if k != "Answer"}]
    (folder / "test.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    with pytest.raises(LightReasonerError, match=r"svamp/test.jsonl:2: benchmark svamp: missing field 'Answer'") as info:
        load_benchmark("svamp", str(tmp_path))
    assert "\n" not in str(info.value)
    (tmp_path / "minerva_math").mkdir()
    (tmp_path / "minerva_math" / "test.jsonl").write_text(json.dumps({"problem": "p", "solution": "no box"}) + "\n")
    with pytest.raises(LightReasonerError, match="minerva_math: no gold answer"):
        load_benchmark("minerva_math", str(tmp_path))
    with pytest.raises(LightReasonerError, match=r"benchmark math: .*math/test.jsonl not found"):
        load_benchmark("math", str(tmp_path))


@pytest.fixture(scope="module")
def answering(tmp_path_factory) -> dict[str, Path]:
    """Tiny Experts that always say " The answer is 4" / " The answer is (B)" after any chat prompt."""
    root = tmp_path_factory.mktemp("answering")
    tok = build_tokenizer()
    out = {}
    for key, answer in (("four", "4"), ("letter", "(B)")):
        model = build_answering_model(tok, answer)
        model.save_pretrained(root / key)
        tok.save_pretrained(root / key)
        out[key] = root / key
    return out


def _config(model: Path, bench_dir: Path, names: list[str], tmp_path: Path, **sets):
    overrides = [f"expert.model={model}", f"evaluation.benchmarks={','.join(names)}",
                 f"evaluation.benchmark_dir={bench_dir}", "evaluation.max_new_tokens=12",
                 "evaluation.bootstrap_samples=100", "tracking.enabled=false", *[f"{k}={v}" for k, v in sets.items()]]
    return load_config(None, overrides)


@pytest.mark.slow
def test_every_benchmark_graded_end_to_end_in_one_model_load(answering, tmp_path, monkeypatch):
    from lightreasoner import evaluation

    bench_dir = write_benchmarks(tmp_path / "bench")
    loads = []
    real_load = evaluation.load_model
    monkeypatch.setattr(evaluation, "load_model", lambda *a, **k: loads.append(1) or real_load(*a, **k))
    names = [n for n in FIXTURES if n != "mmlu_stem"]
    result = evaluation.evaluate(_config(answering["four"], bench_dir, names, tmp_path), None, None,
                                 tmp_path / "out", progress=False)
    assert len(loads) == 1
    m = result.metrics
    assert list(m["benchmarks"]) == names
    for name in names:  # the first row of each is right, the second wrong
        assert m["benchmarks"][name]["n"] == 2 and m["benchmarks"][name]["accuracy_base"] == 0.5, name
        assert m["benchmarks"][name]["version"]["file_sha256"]
    assert m["n"] == 12 and m["accuracy_base"] == 0.5 and m["average"]["accuracy_base"] == 0.5
    assert m["protocol"]["name"] == "qwen25-math-cot" and "\\boxed{}" in m["protocol"]["system_prompt"]
    assert result.manifest["protocol"] == m["protocol"] and set(result.manifest["benchmarks"]) == set(names)
    rows = {(p.benchmark, p.correct) for p in result.predictions_base}
    assert ("math", True) in rows and ("olympiadbench", False) in rows
    assert all(p.problem_id.startswith(f"{p.benchmark}/") for p in result.predictions_base)
    table = (tmp_path / "out" / "benchmarks.csv").read_text().splitlines()
    assert table[0].startswith("benchmark,n,accuracy_base") and table[-1].startswith("average,12,0.5")

    letter = evaluation.evaluate(_config(answering["letter"], bench_dir, ["mmlu_stem"], tmp_path), None, None,
                                 tmp_path / "out-mmlu", progress=False)
    assert [p.extracted for p in letter.predictions_base] == ["B", "B"]
    assert [p.correct for p in letter.predictions_base] == [True, False]


@pytest.mark.slow
def test_evaluate_with_adapter_reports_per_benchmark_deltas(answering, tmp_path):
    from test_evaluation import _make_adapter

    from lightreasoner.evaluation import evaluate
    from lightreasoner.report import benchmark_markdown, benchmark_metrics

    bench_dir = write_benchmarks(tmp_path / "bench", ["gsm8k", "svamp"])
    adapter = _make_adapter(answering["four"], tmp_path / "adapter")
    result = evaluate(_config(answering["four"], bench_dir, ["gsm8k", "svamp"], tmp_path), None, adapter,
                      tmp_path / "out", progress=False)
    m = result.metrics
    for name in ("gsm8k", "svamp"):
        assert m["benchmarks"][name]["accuracy_tuned"] is not None and m["benchmarks"][name]["mcnemar_p"] is not None
    assert (tmp_path / "out" / "benchmark_deltas.png").stat().st_size > 1000
    text = benchmark_markdown(m)
    assert "| gsm8k | 2 | 50.0 |" in text and "| average | 4 |" in text
    assert {"gsm8k/accuracy_base", "svamp/delta", "average/accuracy_tuned"} <= set(benchmark_metrics(m))


@pytest.mark.slow
def test_base_predictions_are_reused_from_the_cache(answering, tmp_path, monkeypatch):
    from lightreasoner import evaluation

    bench_dir = write_benchmarks(tmp_path / "bench", ["gsm8k", "asdiv"])
    cache = tmp_path / "cache"
    cfg = _config(answering["four"], bench_dir, ["gsm8k", "asdiv"], tmp_path, **{"evaluation.prediction_cache": cache})
    first = evaluation.evaluate(cfg, None, None, tmp_path / "a", progress=False)
    assert first.manifest["base_from_cache"] == {"gsm8k": False, "asdiv": False}
    assert len(list(cache.glob("*.parquet"))) == 2
    calls = []
    monkeypatch.setattr(evaluation, "generate_completions", lambda *a, **k: calls.append(1) or [])
    second = evaluation.evaluate(cfg, None, None, tmp_path / "b", progress=False)
    assert calls == [] and second.manifest["base_from_cache"] == {"gsm8k": True, "asdiv": True}
    assert [p.output for p in second.predictions_base] == [p.output for p in first.predictions_base]
    assert second.metrics["accuracy_base"] == first.metrics["accuracy_base"]
    # Another protocol (or benchmark version) is another key: generated again.
    monkeypatch.undo()
    other = cfg.model_copy(deep=True)
    other.evaluation.protocol = "sampling-prompt"
    third = evaluation.evaluate(other, None, None, tmp_path / "c", progress=False)
    assert third.manifest["base_from_cache"] == {"gsm8k": False, "asdiv": False}
    assert third.metrics["protocol"]["sha256"] != first.metrics["protocol"]["sha256"]
    assert len(list(cache.glob("*.parquet"))) == 4


@pytest.mark.slow
def test_protocol_stops_at_every_chat_end_token():
    import torch
    from conftest import build_model

    from lightreasoner.models import generate_greedy, prompt_token_ids
    from lightreasoner.protocols import resolve_protocol, stop_token_ids

    tok = build_tokenizer(extra_special=("<|endoftext|>",))
    protocol = resolve_protocol(load_config(None, ["evaluation.protocol=qwen25-math-cot"]))
    assert protocol.max_new_tokens == 2048
    assert stop_token_ids(tok, protocol) == sorted(tok.convert_tokens_to_ids(["<|im_end|>", "<|endoftext|>"]))
    assert resolve_protocol(load_config(None, ["evaluation.protocol=sampling-prompt"])).stop_tokens == ()
    model = build_model("llama", tok, seed=5)
    model.generation_config.eos_token_id = None
    prompt = prompt_token_ids(tok, "Ava has 3 apples.", protocol.system_prompt)
    with torch.no_grad():
        full, _ = generate_greedy(model, tok, [prompt], 10, stop_at_eos=False)
        stop = full[0][3]
        cut, _ = generate_greedy(model, tok, [prompt], 10, extra_stops=[stop])
    assert cut[0] == full[0][: full[0].index(stop) + 1]


# --- the real test sets (../shared/data/math-benchmarks): gold answers grade as correct against themselves ---

REAL = ["gsm8k", "svamp", "asdiv", "minerva_math", "olympiadbench", "mmlu_stem"]


@pytest.fixture(scope="module")
def real_dir(tmp_path_factory) -> Path:
    """The shared test sets in the toolkit's layout: links to ../shared (nothing copied)."""
    if not MATH_BENCHMARKS.is_dir() or not (GSM8K / "test.jsonl").is_file():
        pytest.skip("math benchmarks not present in ../shared")
    root = tmp_path_factory.mktemp("real-benchmarks")
    (root / "gsm8k").symlink_to(GSM8K)
    for name in REAL[1:]:
        (root / name).symlink_to(MATH_BENCHMARKS / name)
    return root


@pytest.mark.slow
@pytest.mark.parametrize("name", REAL)
def test_real_gold_answers_grade_as_correct(name, real_dir):
    """Each gold answer, written by a model the way the protocol asks (in \\boxed{}), goes through the real
    loading, extraction and grading path and is correct."""
    data = load_benchmark(name, str(real_dir))
    sizes = {"gsm8k": 1319, "svamp": 1000, "asdiv": 2214, "minerva_math": 272, "olympiadbench": 675,
             "mmlu_stem": 3006}
    assert len(data.problems) == sizes[name]  # after dropping duplicate questions (ASDiv 1, MMLU-STEM 12)
    kind = data.benchmark.answer_type
    wrong = [p.answer for p in data.problems
             if not grade(extract(f"Step by step.\nThe final answer is $\\boxed{{{p.answer}}}$.", kind,
                                  grader="math-verify"), p.answer, kind, grader="math-verify")]
    assert wrong == [], wrong[:10]


@pytest.mark.slow
def test_cli_evaluate_benchmarks(answering, tmp_path, capsys):
    from lightreasoner.cli import main

    bench_dir = write_benchmarks(tmp_path / "bench", ["gsm8k", "svamp"])
    sets = ["--set", "evaluation.max_new_tokens=12", "--set", "evaluation.bootstrap_samples=100",
            "--set", "tracking.enabled=false", "--model", str(answering["four"])]
    out = tmp_path / "bad"
    code = main(["evaluate", *sets, "--benchmarks", "gsm8k,gsm9k", "--output", str(out)])
    err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error")]
    assert code == 2 and len(err) == 1 and "unknown benchmark 'gsm9k'" in err[0]
    assert not out.exists()
    code = main(["evaluate", *sets, "--benchmarks", "gsm8k,svamp", "--benchmark-dir", str(bench_dir),
                 "--protocol", "sampling-prompt", "--output", str(tmp_path / "ok")])
    printed = capsys.readouterr().out
    assert code == 0 and "n=4 " in printed and "protocol sampling-prompt" in printed
    assert "| gsm8k | 2 | 50.0 |" in printed and "| svamp | 2 | 50.0 |" in printed and "| average | 4 | 50.0 |" in printed


def test_pipeline_parameter_sets_the_benchmark_list():
    from lightreasoner import parameters

    cfg = parameters.config_from_settings("", 'eval_benchmarks=["gsm8k", "mmlu_stem"]\neval_protocol=sampling-prompt')
    assert cfg.evaluation.benchmarks == ["gsm8k", "mmlu_stem"] and cfg.evaluation.protocol == "sampling-prompt"
    assert {"eval_benchmarks", "eval_protocol", "eval_benchmark_dir", "eval_prediction_cache"} <= {
        p.name for p in parameters.table()}
    with pytest.raises(LightReasonerError, match="unknown benchmark 'gsm9k'") as info:
        parameters.config_from_settings("", 'eval_benchmarks=["gsm9k"]')
    assert "\n" not in str(info.value)


def test_prediction_cache_entries(tmp_path, caplog):
    from lightreasoner import prediction_cache
    from lightreasoner.evaluation import PREDICTION_SCHEMA

    expert = {"model": "m", "revision": "r", "sha256": "s" * 64}
    protocol = {"name": "qwen25-math-cot", "max_new_tokens": 2048, "sha256": "x"}
    bench = {"problems_sha256": "p" * 64, "answer_type": "number"}
    key = prediction_cache.cache_key(expert, "auto", protocol, bench)
    assert key != prediction_cache.cache_key(expert, "auto", {**protocol, "max_new_tokens": 512}, bench)
    assert key != prediction_cache.cache_key(expert, "auto", protocol, {**bench, "problems_sha256": "q" * 64})
    assert key != prediction_cache.cache_key({**expert, "sha256": "t" * 64}, "auto", protocol, bench)
    assert key != prediction_cache.cache_key(expert, "float32", protocol, bench)
    row = {"problem_id": "gsm8k/1", "output": "4", "extracted": "4", "gold": "4", "correct": True,
           "tokens_generated": 3, "benchmark": "gsm8k", "answer_type": "number"}
    assert prediction_cache.load(str(tmp_path / "c"), key) is None  # a miss
    assert prediction_cache.store(str(tmp_path / "c"), key, [row], PREDICTION_SCHEMA)
    assert prediction_cache.load(str(tmp_path / "c"), key) == [row]
    (tmp_path / "c" / f"{key}.parquet").write_bytes(b"not parquet")  # a broken entry is a miss, never trusted
    assert prediction_cache.load(str(tmp_path / "c"), key) is None
    (tmp_path / "file").write_text("x")  # an unwritable cache: a warning, the evaluation goes on
    assert prediction_cache.store(str(tmp_path / "file"), key, [row], PREDICTION_SCHEMA) is None
    assert "cannot store" in caplog.text
    assert prediction_cache.load("", key) is None and prediction_cache.store("", key, [row], PREDICTION_SCHEMA) is None
