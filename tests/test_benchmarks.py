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
    page = (Path(__file__).resolve().parents[1] / "docs" / "evaluation.md").read_text()
    assert table_markdown() in page, "docs/evaluation.md's benchmark table is out of date (benchmarks.table_markdown())"


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
    # Each benchmark's count and digest are recorded, and a count other than the paper's is said in one line.
    for name in names:
        version = result.manifest["benchmarks"][name]
        assert version["n"] == version["rows"] == 2 and version["paper_rows"] == BENCHMARKS[name].paper_rows
        assert len(version["problems_sha256"]) == 64
    assert m["row_count_notes"][0] == "gsm8k: 2 rows, the paper's set has 1,319" and len(m["row_count_notes"]) == 6
    assert m["paper"] is None  # a tiny Expert: not one of the paper's
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
    from lightreasoner.presentation import benchmark_markdown
    from lightreasoner.records import benchmark_metrics

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
def test_sharded_benchmarks_merge_into_one_cache_entry_each(answering, tmp_path, monkeypatch):
    from test_evaluation import _make_adapter

    from lightreasoner import evaluation

    bench_dir = write_benchmarks(tmp_path / "bench", ["gsm8k", "asdiv"])
    cache = tmp_path / "cache"
    adapter = _make_adapter(answering["four"], tmp_path / "adapter")
    cfg = _config(answering["four"], bench_dir, ["gsm8k", "asdiv"], tmp_path,
                  **{"evaluation.prediction_cache": cache, "evaluation.batch_size": 1})
    dirs = [tmp_path / f"{side}-{i}" for i in range(2) for side in ("base", "tuned")]
    for folder in dirs:
        side, index = folder.name.split("-")
        evaluation.evaluate_shard(cfg, None, adapter if side == "tuned" else None, folder, (int(index), 2),
                                  sides=(side,), progress=False)
    merged = evaluation.merge_evaluation(dirs, tmp_path / "merged", config=cfg)
    assert list(merged.metrics["benchmarks"]) == ["gsm8k", "asdiv"] and merged.metrics["average"]["n"] == 4
    assert (tmp_path / "merged" / "benchmarks.csv").is_file() and (tmp_path / "merged" / "benchmark_deltas.png").is_file()
    # The slices' entries, and one per benchmark written by the merge: what a single pod reads.
    calls = []
    real = evaluation.generate_completions
    monkeypatch.setattr(evaluation, "generate_completions", lambda *a, **k: calls.append(1) or real(*a, **k))
    single = evaluation.evaluate(cfg, None, adapter, tmp_path / "single", progress=False)
    assert single.manifest["base_from_cache"] == {"gsm8k": True, "asdiv": True}
    assert single.metrics == {**merged.metrics, "benchmarks": single.metrics["benchmarks"]}
    for name in ("gsm8k", "asdiv"):
        assert single.metrics["benchmarks"][name] == {**merged.metrics["benchmarks"][name], "base_from_cache": True}
    assert len(calls) == 2  # the tuned side of each benchmark; the base came from the cache
    # Another shard count reads its slices from the whole benchmark's entry.
    calls.clear()
    again = evaluation.evaluate_shard(cfg, None, None, tmp_path / "again", (0, 3), progress=False)
    assert again["base_from_cache"] == {"gsm8k": True, "asdiv": True} and calls == []


@pytest.mark.slow
def test_protocol_stops_at_every_chat_end_token():
    import torch
    from conftest import build_model

    from lightreasoner.models import generate_greedy, prompt_token_ids
    from lightreasoner.protocols import TOOLKIT_STOPS, resolve_protocol, stop_token_ids, text_stops

    tok = build_tokenizer(extra_special=("<|endoftext|>",))
    protocol = resolve_protocol(load_config(None, ["evaluation.protocol=qwen25-math-cot"]))
    assert protocol.max_new_tokens == 2048
    assert stop_token_ids(tok, protocol) == sorted(tok.convert_tokens_to_ids(["<|im_end|>", "<|endoftext|>"]))
    # generation watches the text only for the stop words this tokenizer has no token for
    assert text_stops(tok, protocol) == tuple(s for s in TOOLKIT_STOPS if s not in ("<|im_end|>", "<|endoftext|>"))
    assert resolve_protocol(load_config(None, ["evaluation.protocol=sampling-prompt"])).stop_tokens == ()
    model = build_model("llama", tok, seed=5)
    model.generation_config.eos_token_id = None
    prompt = prompt_token_ids(tok, "Ava has 3 apples.", protocol.system_prompt)
    with torch.no_grad():
        full, _ = generate_greedy(model, tok, [prompt], 10, stop_at_eos=False)
        stop = full[0][3]
        cut, _ = generate_greedy(model, tok, [prompt], 10, extra_stops=[stop])
    assert cut[0] == full[0][: full[0].index(stop) + 1]


@pytest.mark.slow
def test_a_stop_string_ends_generation_where_the_toolkit_stops():
    """An end token the tokenizer spells as text (DeepSeek-R1-Distill's <|im_end|>): generation stops at the
    token that completes it, in a batch the other row runs on unchanged, and the text cut there is the same
    as cutting a generation that ran to the token limit."""
    import torch
    from conftest import build_model

    from lightreasoner.models import generate_greedy, prompt_token_ids, up_to_stop_string
    from lightreasoner.protocols import Protocol, cut_output

    tok = build_tokenizer()
    model = build_model("llama", tok, seed=5)
    model.generation_config.eos_token_id = None
    prompts = [prompt_token_ids(tok, q, "") for q in ("Ava has 3 apples.", "Tom has 12 pears and 4 figs.")]
    with torch.no_grad():
        full, _ = generate_greedy(model, tok, prompts, 12, stop_at_eos=False)
        # a stop string the first row meets half-way (plain letters) and the second row never does
        text, other = tok.decode(full[0][:6]), tok.decode(full[1])
        stop = next(text[i:i + 2] for i in range(len(text) - 1)
                    if text[i:i + 2].isalpha() and text[i:i + 2] not in other)
        stopped, _ = generate_greedy(model, tok, prompts, 12, stop_at_eos=False, stop_strings=(stop,))
    assert stopped[0] == up_to_stop_string(tok, full[0], (stop,)) and len(stopped[0]) <= 6
    assert stopped[1] == full[1]
    protocol = Protocol("p", "", False, 12, (), stop_strings=(stop,))
    assert cut_output(tok.decode(stopped[0]), protocol) == cut_output(tok.decode(full[0]), protocol)
    assert up_to_stop_string(tok, [1, 2, 3], ("never there",)) == [1, 2, 3]


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
    assert len(data.problems) == data.benchmark.paper_rows  # every row: the paper counts them all
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
    assert "- svamp: 2 rows, the paper's set has 1,000" in printed and "paper LightR" not in printed


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


# --- the toolkit's sets: every row of the shared files, the hub formats through the hub loader ---------------


def test_shared_toolkit_files_give_the_papers_row_counts(real_dir):
    """Each shared toolkit file (and GSM8K) loads every row: exactly the paper's count, no de-duplication."""
    for name in REAL:
        data = load_benchmark(name, str(real_dir))
        assert len(data.problems) == data.rows == BENCHMARKS[name].paper_rows, name
        assert len({p.problem_id for p in data.problems}) == len(data.problems), name  # repeats get -2, -3 ...
        assert data.version()["paper_rows"] == BENCHMARKS[name].paper_rows and data.file_sha256
    mmlu = load_benchmark("mmlu_stem", str(real_dir)).problems[0].question
    assert "\nAnswer Choices: (A) " in mmlu and " (B) " in mmlu and mmlu.count("\n") == 1
    asdiv = load_benchmark("asdiv", str(real_dir)).problems
    assert any(p.question.endswith("? (Yes or No)") and p.answer in ("Yes", "No") for p in asdiv)


def test_cli_benchmarks_on_the_shared_files(real_dir, capsys):
    from lightreasoner.cli import main

    assert main(["benchmarks", "--benchmark-dir", str(real_dir), "--benchmarks", ",".join(REAL)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [line.split()[0] for line in lines] == REAL and not any("the paper's set" in line for line in lines)
    assert f"  {BENCHMARKS['mmlu_stem'].paper_rows:,} rows  sha256 " in lines[-1] and lines[-1].endswith("  choice")


# Rows as the hub data sets hold them: written to local parquet files and read by the real
# datasets.load_dataset, through the same loader (lightreasoner.benchmarks.hub_rows) as a hub run.
HUB: dict[tuple[str, str | None, str], list[dict]] = {
    ("ChilleD/SVAMP", None, "train"): [
        {"ID": "chal-1", "Body": "There are 8 oranges in 2 equal groups", "Question": "How big is each group?",
         "Equation": "( 8.0 / 2.0 )", "Answer": 4.0, "Type": "Common-Division", "question_concat": "x"},
        {"ID": "chal-2", "Body": "Marco has 5 pounds of berries.", "Question": "How much do 2 baskets weigh?",
         "Equation": "( 5.0 * 2.0 )", "Answer": 10.0, "Type": "Multiplication", "question_concat": "x"}],
    ("ChilleD/SVAMP", None, "test"): [
        {"ID": "chal-3", "Body": "Ann has 7 pens.", "Question": "She gives 3 away. How many are left?",
         "Equation": "( 7.0 - 3.0 )", "Answer": 4.0, "Type": "Subtraction", "question_concat": "x"}],
    ("EleutherAI/asdiv", None, "validation"): [
        {"body": "Seven red apples and two green apples are in the basket.", "question": "How many apples?",
         "solution_type": "Addition", "answer": "9 (apples)", "formula": "7+2=9"},
        {"body": "A box has 3 red and 4 blue balls.", "question": "How many red and blue balls?",
         "solution_type": "Multi", "answer": "3 (balls); 4 (balls)", "formula": "3;4"},
        {"body": "Sam has 5 cents.", "question": "Can he buy a 4 cent sweet?",
         "solution_type": "Comparison", "answer": "Yes", "formula": "5>4"}],
    ("hails/mmlu_no_train", "all", "test"): [
        {"question": "How many legs does a spider have?", "subject": "college_biology",
         "choices": ["six", " eight", "ten", "four"], "answer": 1},
        {"question": "Who was the first US president?", "subject": "high_school_us_history",
         "choices": ["Washington", "Lincoln", "Adams", "Jefferson"], "answer": 0},
        {"question": "What is 2 + 2?", "subject": "elementary_mathematics",
         "choices": ["3", "4", "5", "6"], "answer": 1}],
    ("math-ai/minervamath", None, "test"): [
        {"question": "A wave has period $0.25$ s. What is its frequency in Hz?", "answer": "4"},
        {"question": "Find $x$ if $2x = 3$.", "answer": "\\frac{3}{2}"}],
    **{("EleutherAI/hendrycks_math", subject, "test"): [
        {"problem": f"What is $1 + {i}$?", "level": "Level 1", "type": subject,
         "solution": f"Adding, $1 + {i} = \\boxed{{{i + 1}}}$."}] for i, subject in enumerate(
        ("algebra", "counting_and_probability", "geometry", "intermediate_algebra", "number_theory",
         "prealgebra", "precalculus"))},
}


@pytest.fixture
def hub(tmp_path, monkeypatch):
    """datasets.load_dataset answering the hub names above from local parquet files (the real loader);
    any other name is unreachable, as offline."""
    import datasets
    import pyarrow as pa
    import pyarrow.parquet as pq

    real = datasets.load_dataset
    calls = []

    def load_dataset(path, name=None, split=None, **kw):
        calls.append((path, name, split))
        if (path, name, split) not in HUB:
            raise ConnectionError(f"Couldn't reach '{path}' on the Hub (LocalEntryNotFoundError)\nmore lines")
        file = tmp_path / f"{len(calls)}.parquet"
        pq.write_table(pa.Table.from_pylist(HUB[(path, name, split)]), file)
        return real("parquet", data_files=str(file), split="train", cache_dir=str(tmp_path / "cache"))

    monkeypatch.setattr(datasets, "load_dataset", load_dataset)
    return calls


def test_hub_svamp_is_train_then_test_with_the_toolkits_question(hub):
    data = load_benchmark("svamp")
    assert [p.question for p in data.problems] == [
        "There are 8 oranges in 2 equal groups. How big is each group?",
        "Marco has 5 pounds of berries. How much do 2 baskets weigh?",
        "Ann has 7 pens. She gives 3 away. How many are left?"]
    assert [p.answer for p in data.problems] == ["4", "10", "4"]
    assert hub == [("ChilleD/SVAMP", None, "train"), ("ChilleD/SVAMP", None, "test")]
    assert data.source == "ChilleD/SVAMP:train+test" and data.file_sha256 is None
    assert data.version()["n"] == 3 and data.version()["paper_rows"] == 1000


def test_hub_asdiv_drops_the_multi_answer_rows(hub):
    data = load_benchmark("asdiv")
    assert [p.answer for p in data.problems] == ["9", "Yes"]
    assert data.problems[0].question == "Seven red apples and two green apples are in the basket. How many apples?"
    assert data.problems[1].question == "Sam has 5 cents. Can he buy a 4 cent sweet? (Yes or No)"


def test_hub_mmlu_keeps_the_18_stem_subjects_with_choices_on_one_line(hub):
    data = load_benchmark("mmlu_stem")
    assert [p.answer for p in data.problems] == ["B", "B"]
    assert data.problems[0].question == ("How many legs does a spider have?\n"
                                         "Answer Choices: (A) six (B) eight (C) ten (D) four")


def test_hub_minerva_question_answer_fields(hub):
    data = load_benchmark("minerva_math")
    assert [p.answer for p in data.problems] == ["4", "\\frac{3}{2}"]
    assert data.problems[1].question == "Find $x$ if $2x = 3$."


def test_hub_math_is_the_5000_problem_set_by_subject(hub):
    data = load_benchmark("math")
    assert [p.answer for p in data.problems] == [str(i + 1) for i in range(7)]
    assert {name for _, name, _ in hub} == set(BENCHMARKS["math"].hf_config) and len(hub) == 7


def test_unreachable_hub_is_one_line(hub):
    with pytest.raises(LightReasonerError, match=r"benchmark gsm8k: cannot load Hugging Face data set openai/gsm8k "
                                                 r"\(Couldn't reach .*offline, set evaluation.benchmark_dir") as info:
        load_benchmark("gsm8k")
    assert "\n" not in str(info.value)


def test_row_count_note_names_the_papers_count():
    from lightreasoner.benchmarks import row_count_note

    assert row_count_note("svamp", {"n": 300}) == "svamp: 300 rows, the paper's set has 1,000"
    assert row_count_note("svamp", {"n": 1000}) is None and row_count_note("data", {"n": 5}) is None


def test_cli_benchmarks_lists_what_would_be_evaluated(tmp_path, capsys, hub):
    from lightreasoner.cli import main

    bench_dir = write_benchmarks(tmp_path / "bench", ["gsm8k", "svamp"])
    assert main(["benchmarks", "--benchmark-dir", str(bench_dir), "--benchmarks", "gsm8k,svamp"]) == 0
    lines = capsys.readouterr().out.splitlines()
    svamp = load_benchmark("svamp", str(bench_dir))
    assert len(lines) == 2 and lines[0].startswith(f"gsm8k  {bench_dir / 'gsm8k' / 'test.jsonl'}  2 rows  sha256 ")
    assert lines[1] == (f"svamp  {bench_dir / 'svamp' / 'test.jsonl'}  2 rows  sha256 {svamp.problems_sha256}  number"
                        "  (the paper's set has 1,000)")
    # From the hub (here the hub-format fixtures), and a hub set that cannot be reached: one line, exit 2.
    assert main(["benchmarks", "--benchmarks", "asdiv"]) == 0
    assert capsys.readouterr().out.startswith("asdiv  EleutherAI/asdiv:validation  2 rows  sha256 ")
    assert main(["benchmarks", "--benchmarks", "gsm8k"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: benchmark gsm8k: cannot load Hugging Face data set openai/gsm8k")
    assert main(["benchmarks", "--benchmarks", "gsm9k"]) == 2
    assert "unknown benchmark 'gsm9k'" in capsys.readouterr().err


# A DeepSeek-R1-Distill-style chat template: its own role markers, and the generation prompt opens <think>.
DEEPSEEK_TEMPLATE = (
    "{{ bos_token }}{% for m in messages %}{% if m['role'] == 'system' %}{{ m['content'] }}"
    "{% elif m['role'] == 'user' %}<｜User｜>{{ m['content'] }}{% else %}<｜Assistant｜>{{ m['content'] }}"
    "{% endif %}{% endfor %}{% if add_generation_prompt %}<｜Assistant｜><think>\n{% endif %}"
)


def test_paper_protocol_gives_every_model_the_toolkits_literal_prompt():
    from lightreasoner.models import prompt_token_ids
    from lightreasoner.protocols import QWEN25_MATH_COT_TEMPLATE, cut_output, prompt_ids, resolve_protocol

    assert QWEN25_MATH_COT_TEMPLATE == (
        "<|im_start|>system\nPlease reason step by step, and put your final answer within \\boxed{}.<|im_end|>\n"
        "<|im_start|>user\n{input}<|im_end|>\n<|im_start|>assistant\n")
    tok = build_tokenizer()
    tok.chat_template = DEEPSEEK_TEMPLATE
    question = "Ava has 3 apples and buys 2 more. How many apples does she have?"
    paper = resolve_protocol(load_config(None, ["evaluation.protocol=qwen25-math-cot"]))
    ids = prompt_ids(tok, question, paper)
    literal = QWEN25_MATH_COT_TEMPLATE.replace("{input}", question)
    assert ids == tok(literal, add_special_tokens=True)["input_ids"]
    assert tok.decode(ids) == literal and "<think>" not in tok.decode(ids)
    # The other protocol keeps the model's own chat template (here DeepSeek's, ending in <think>).
    other = resolve_protocol(load_config(None, ["evaluation.protocol=sampling-prompt"]))
    own = prompt_ids(tok, question, other)
    assert own == prompt_token_ids(tok, question, other.system_prompt, other.chat_template)
    assert tok.decode(own).endswith("<｜Assistant｜><think>\n")
    # The toolkit's stop words end the output where the tokenizer has no single token for them.
    assert paper.stop_strings == ("</s>", "<|im_end|>", "<|endoftext|>") and "stop_strings" in paper.as_dict()
    assert cut_output("x = 4. \\boxed{4}</s>Question: next", paper) == "x = 4. \\boxed{4}"
    assert cut_output("\\boxed{4}<|endoftext|>a<|im_end|>", paper) == "\\boxed{4}"
    assert cut_output("\\boxed{4}</s>", other) == "\\boxed{4}</s>"


def test_paper_configs_evaluate_the_seven_benchmarks_under_the_papers_protocol():
    configs = sorted((Path(__file__).resolve().parents[1] / "configs").glob("paper-*.yaml"))
    assert len(configs) == 5
    for path in configs:
        ecfg = load_config(path).evaluation
        assert ecfg.benchmarks == list(BENCHMARKS) and ecfg.protocol == "qwen25-math-cot", path.name
    assert sum(b.paper_rows for b in BENCHMARKS.values()) == 13499


def test_reference_answers_are_taken_as_the_toolkit_takes_them():
    from lightreasoner.benchmarks import last_boxed

    assert last_boxed("so $x = \\boxed{\\frac{1}{2}}$ and \\boxed{3}.") == "3"
    assert last_boxed("nested \\boxed{\\sqrt{\\frac{a}{b}}} end") == "\\sqrt{\\frac{a}{b}}"
    assert last_boxed("$\\boxed 5$ units") == "5" and last_boxed("\\boxed{e^{x}\n}") == "e^{x}"
    assert last_boxed("\\boxed{3.}") == "3" and last_boxed("no box") is None
