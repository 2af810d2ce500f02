"""Grading by answer type: numbers (exact rationals), LaTeX (math-verify), multiple-choice letters."""

from __future__ import annotations

from pathlib import Path

import pytest

from lightreasoner.answers import extract, extract_choice, extract_latex, grade, latex_match

# (prediction, gold): LaTeX answers that must be judged equal.
LATEX_EQUAL = [
    (r"\frac{1}{2}", "0.5"),
    ("0.5", r"\frac{1}{2}"),
    (r"\dfrac12", r"\frac{1}{2}"),
    (r"\sqrt{2}/2", r"\frac{\sqrt2}{2}"),
    (r"\frac{\sqrt{2}}{2}", r"\frac{1}{\sqrt{2}}"),
    (r"(1,2]", r"(1, 2]"),
    (r"(-\infty, 3)", r"(-\infty,3)"),
    (r"[0, \infty)", r"[0,\infty)"),
    (r"\{1,2,3\}", r"\{3,2,1\}"),
    ("1,3,5", "5, 3, 1"),
    ("x=3", "3"),
    ("3", "x=3"),
    (r"(x+1)^2", r"x^2+2x+1"),
    (r"2^{1009}", r"2^{1009}"),
    (r"\frac{1}{2n+2}", r"\frac{1}{2 n+2}"),
    (r"1.6 \mathrm{~cm}", "1.6"),
    ("1,000", "1000"),
    (r"10\%", "10"),
    (r"(1,8,19), (2,7,13)", r"(1,8,19), (2,7,13)"),
]
# ... and answers that must not be.
LATEX_DIFFERENT = [
    (r"\frac{1}{3}", "0.33"),
    ("[1,2)", "(1,2]"),
    ("(1,2)", "(2,1)"),
    (r"\{1,2\}", r"\{1,2,3\}"),
    ("x=4", "3"),
    (r"\sqrt{3}/2", r"\frac{\sqrt2}{2}"),
    (r"\pi", "3.14"),
    ("2", "-2"),
    ("", "3"),
    (None, "3"),
]


@pytest.mark.parametrize("pred,gold", LATEX_EQUAL)
def test_latex_answers_that_match(pred, gold):
    assert latex_match(pred, gold), (pred, gold)
    assert grade(pred, gold, "latex", grader="math-verify")


@pytest.mark.parametrize("pred,gold", LATEX_DIFFERENT)
def test_latex_answers_that_do_not_match(pred, gold):
    assert not latex_match(pred, gold), (pred, gold)


@pytest.mark.parametrize("text,expected", [
    (r"So $s = \boxed{\frac{\sqrt{2}}{2}}$ and we are done.", r"\frac{\sqrt{2}}{2}"),
    (r"\boxed{1} first, then \boxed{(1, 2]}", "(1, 2]"),
    ("The final answer is $x^2+1$.", "x^2+1"),
    ("no box, the value is 12 after 7", "7"),
    ("", None),
])
def test_extract_latex(text, expected):
    assert extract_latex(text) == expected


@pytest.mark.parametrize("text,expected", [
    (r"Thus the answer is \boxed{B}.", "B"),
    (r"\boxed{\text{(C)}}", "C"),
    (r"\boxed{D: 4 m/s}", "D"),
    ("The answer is (A).", "A"),
    ("Answer: c", "C"),
    ("(A) is wrong, (B) is wrong, so it must be (D)", "D"),
    ("I do not know", None),
])
def test_extract_choice(text, expected):
    assert extract_choice(text) == expected


def test_grade_by_type():
    assert grade(extract("#### 1,450", "number"), "1450", "number")
    assert not grade(extract("#### 1,451", "number"), "1450", "number")
    assert grade(extract(r"so \boxed{\frac{3}{4}}", "latex"), "0.75", "latex")
    assert grade(extract(r"The answer is (B).", "choice"), "B", "choice")
    assert not grade(extract(r"The answer is (B).", "choice"), "C", "choice")
    with pytest.raises(ValueError, match="answer type 'words'"):
        grade("1", "1", "words")


def test_latex_match_works_outside_the_main_thread():
    """math-verify's timeout is SIGALRM-based; graded from a worker thread it must run without one."""
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(1) as pool:
        assert pool.submit(latex_match, r"\frac{\sqrt2}{2}", r"\sqrt{2}/2").result()


# (model output, gold answer, answer type, benchmark, the toolkit's verdict): each verdict is what the Qwen2.5-Math
# toolkit's run_execute + parse_ground_truth + math_equal answer for the case (measured with the toolkit itself).
TOOLKIT_CASES = [
    # percentages
    (r"So the rate is $\boxed{0.25}$.", "25", "number", "gsm8k", True),
    (r"The answer is $\boxed{2500}$.", "25", "number", "gsm8k", True),
    (r"\boxed{25\%}", "25", "number", "gsm8k", True),
    (r"\boxed{25%}", "0.25", "number", "svamp", True),
    (r"\boxed{0.26}", "25", "number", "gsm8k", False),
    (r"\boxed{250}", "25", "number", "gsm8k", False),
    # relative tolerance 1e-4
    (r"\boxed{18.0001}", "18", "number", "gsm8k", True),
    (r"\boxed{18.01}", "18", "number", "gsm8k", False),
    (r"\boxed{0.3333}", r"\frac13", "latex", "math", True),
    (r"\boxed{0.33}", r"\frac{1}{3}", "latex", "math", False),
    (r"\boxed{1000.05}", "1000", "number", "asdiv", True),
    # arithmetic inside the box
    (r"\boxed{13 + 1}", "14", "number", "gsm8k", True),
    (r"\boxed{2 \times 9}", "18", "number", "gsm8k", True),
    (r"\boxed{2 \times 9}", "19", "number", "gsm8k", False),
    (r"\boxed{\frac{36}{2}}", "18", "number", "svamp", True),
    (r"\boxed{36/2}", "18", "number", "svamp", True),
    (r"\boxed{5 \cdot 4 - 2}", "18", "number", "gsm8k", True),
    (r"\boxed{10 - 3 = 7}", "7", "number", "gsm8k", False),
    # word numbers
    ("The answer is twelve.", "12", "number", "svamp", True),
    (r"\boxed{Twelve}", "12", "number", "asdiv", True),
    (r"\boxed{seven}", "8", "number", "gsm8k", False),
    ("The answer is one hundred twenty.", "120", "number", "gsm8k", True),
    # e notation
    (r"\boxed{1.8e1}", "18", "number", "gsm8k", True),
    (r"\boxed{1.5e3}", "1500", "number", "gsm8k", True),
    (r"\boxed{1.5e4}", "1500", "number", "gsm8k", False),
    # ,\! and comma separators
    (r"\boxed{1,\!000}", "1000", "number", "gsm8k", True),
    (r"\boxed{1,000}", "1000", "number", "gsm8k", True),
    (r"\boxed{12,\!345}", "12345", "number", "asdiv", True),
    ("We sell 1,250 apples in total, 1,250", "1250", "number", "gsm8k", True),
    # intervals and tuples, in order
    (r"\boxed{(1, 2]}", "(1,2]", "latex", "olympiadbench", True),
    (r"\boxed{[1, 2)}", "(1,2]", "latex", "olympiadbench", True),
    (r"\boxed{(2, 1)}", "(1,2)", "latex", "olympiadbench", False),
    (r"\boxed{(1, 2)}", "(1,2)", "latex", "olympiadbench", True),
    (r"\boxed{\left( -\infty, 3 \right)}", r"(-\infty,3)", "latex", "math", True),
    (r"\boxed{(1,8,19), (2,7,13)}", "(1,8,19), (2,7,13)", "latex", "olympiadbench", True),
    (r"\boxed{(0.5, 3)}", r"(\frac{1}{2}, 3)", "latex", "math", True),
    # \text{} and units
    (r"\boxed{18 \text{ dollars}}", "18", "number", "gsm8k", True),
    (r"The answer is \boxed{18} dollars.", "18", "number", "gsm8k", True),
    (r"\boxed{5 \text{ cm}}", "5", "latex", "math", True),
    (r"\boxed{5 cm}", "5", "latex", "math", True),
    (r"\boxed{12 apples}", "12", "number", "asdiv", True),
    (r"\boxed{90^\circ}", "90", "number", "gsm8k", True),
    (r"\boxed{\$18.00}", "18", "number", "gsm8k", True),
    (r"\boxed{1.6 \mathrm{~cm}}", r"1.6 \mathrm{~cm}", "latex", "minerva_math", True),
    (r"\boxed{1.6}", r"1.6 \mathrm{~cm}", "latex", "minerva_math", False),
    (r"\boxed{5 m}", "5", "latex", "minerva_math", False),
    (r"\boxed{5 m}", "5", "latex", "olympiadbench", True),
    (r"\boxed{4.5 \times 10^{3}}", r"4.5 \times 10^{3}", "latex", "minerva_math", True),
    (r"\boxed{4500}", r"4.5 \times 10^{3}", "latex", "minerva_math", True),
    # "the answer is" phrases and the last number
    ("The answer is 42.", "42", "number", "gsm8k", True),
    ("The answer is $42$.", "42", "number", "svamp", True),
    ("Final Answer: The final answer is $\\frac{1}{2}$. I hope it is correct.", "0.5", "latex", "minerva_math", True),
    ("The final answer is 7", "7", "number", "gsm8k", True),
    ("She has 3 apples and buys 4 more, so 7 apples.", "7", "number", "gsm8k", True),
    ("She has 3 apples and buys 4 more, so 7 apples in the end.", "4", "number", "gsm8k", False),
    ("The answer is 42 because 6 times 7 is 42.", "42", "number", "gsm8k", False),
    ("I cannot solve this problem.", "3", "number", "gsm8k", False),
    ("", "3", "number", "gsm8k", False),
    (r"Thus \boxed{", "3", "number", "gsm8k", False),
    (r"\boxed{3} first, then \boxed{5}", "5", "number", "gsm8k", True),
    # fractions and expressions (LaTeX)
    (r"\boxed{\dfrac{3}{4}}", "0.75", "latex", "math", True),
    (r"\boxed{3/4}", r"\frac{3}{4}", "latex", "math", True),
    (r"\boxed{\frac{\sqrt{2}}{2}}", r"\frac{1}{\sqrt{2}}", "latex", "math", True),
    (r"\boxed{x = 3}", "3", "latex", "math", True),
    (r"\boxed{k=3}", "3", "latex", "olympiadbench", True),
    (r"\boxed{2n+2}", r"2 n+2", "latex", "olympiadbench", True),
    (r"\boxed{(x+1)^2}", r"x^2+2x+1", "latex", "math", True),
    (r"\boxed{\sqrt{3}/2}", r"\frac{\sqrt{2}}{2}", "latex", "math", False),
    (r"\boxed{\pi}", "3.14", "latex", "math", False),
    (r"\boxed{2^{1009}}", "2^{1009}", "latex", "olympiadbench", True),
    (r"\boxed{-2}", "2", "latex", "math", False),
    (r"\boxed{6 \sqrt{2}−2}", r"6 \sqrt{2}-2", "latex", "olympiadbench", False),  # a Unicode minus
    (r"The answer is \approx I \frac{d \omega}{d t}+2 B \omega=T.", r"I \frac{d \omega}{d t}+2 B \omega=T", "latex",
     "minerva_math", True),  # d(omega)/dt of a constant omega is 0 on both sides
    # lists: the toolkit compares the first elements only
    (r"\boxed{3, 1}", "1, 3", "latex", "olympiadbench", False),
    (r"\boxed{1, 5}", "1, 3", "latex", "olympiadbench", False),
    # multiple choice, as the toolkit reads it
    ("The answer is (B).", "B", "choice", "mmlu_stem", True),
    ("so the answer is b", "B", "choice", "mmlu_stem", True),
    (r"Therefore the answer is $\boxed{C}$.", "C", "choice", "mmlu_stem", True),
    (r"\boxed{\text{(D)}}", "D", "choice", "mmlu_stem", True),
    ("The correct choice is A", "A", "choice", "mmlu_stem", True),
    ("Option (A) is wrong. Option (C) is right.", "C", "choice", "mmlu_stem", True),
    ("Option (A) is wrong. Option (C) is right.", "A", "choice", "mmlu_stem", False),
    ("The answer is A.\n\nWait, the answer is C.", "C", "choice", "mmlu_stem", False),
    ("The answer is A.\n\nWait, the answer is C.", "A", "choice", "mmlu_stem", True),
    ("This is a tricky question. The answer is D", "D", "choice", "mmlu_stem", True),
    ("Answer: B", "B", "choice", "mmlu_stem", True),
    ("I am not sure.", "B", "choice", "mmlu_stem", False),
    ("The answer is (E).", "A", "choice", "mmlu_stem", False),
    # ASDiv's answers with units and non-numbers
    (r"\boxed{9}", "9 (apples)", "number", "asdiv", True),
    (r"\boxed{3:30 p.m.}", "3:30 p.m.", "number", "asdiv", True),
    (r"\boxed{5:6}", "5:6", "number", "asdiv", True),
    (r"The answer is Yes.", "Yes", "number", "asdiv", True),
]


@pytest.mark.parametrize("output,gold,kind,benchmark,expected", TOOLKIT_CASES)
def test_toolkit_grader_gives_the_toolkits_verdicts(output, gold, kind, benchmark, expected):
    pred = extract(output, kind, grader="toolkit", benchmark=benchmark)
    assert grade(pred, gold, kind, grader="toolkit", benchmark=benchmark) is expected, (pred, gold)


def test_the_paper_protocol_grades_with_the_toolkit_and_the_grader_is_in_its_hash():
    from dataclasses import replace

    from lightreasoner.config import load_config
    from lightreasoner.protocols import resolve_protocol

    paper = resolve_protocol(load_config(None, ["evaluation.protocol=qwen25-math-cot"]))
    ours = resolve_protocol(load_config(None, ["evaluation.protocol=sampling-prompt"]))
    assert paper.grader == "toolkit" and ours.grader == "math-verify"
    assert paper.as_dict()["grader"] == "toolkit"
    assert replace(paper, grader="math-verify").as_dict()["sha256"] != paper.as_dict()["sha256"]


def test_unknown_grader_is_refused():
    with pytest.raises(ValueError, match="grader 'exact'"):
        extract("1", "number", grader="exact")


SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data"
# Gold answers the toolkit itself rejects when a model writes them back (its clean-up runs twice on a prediction:
# the second pass reads "\\text{red}}/\\sqrt{2}" as a trailing unit and cuts it): the toolkit grader agrees.
TOOLKIT_REJECTS_ITS_GOLD = {"\\lambda_{\\text {red}} / \\sqrt{2}"}


@pytest.mark.slow
@pytest.mark.parametrize("grader", ["toolkit", "math-verify"])
@pytest.mark.parametrize("name", ["gsm8k", "svamp", "asdiv", "minerva_math", "olympiadbench", "mmlu_stem"])
def test_shared_gold_answers_grade_as_correct_against_themselves(name, grader, tmp_path):
    """Every gold answer of the shared benchmark files, boxed the way the protocol asks, is correct under both
    graders with the benchmark's rules."""
    from lightreasoner.benchmarks import load_benchmark

    source = SHARED / "gsm8k" if name == "gsm8k" else SHARED / "math-benchmarks" / name
    if not (source / "test.jsonl").exists():
        pytest.skip(f"{source} is absent (../shared holds the benchmark files)")
    (tmp_path / name).symlink_to(source)
    data = load_benchmark(name, str(tmp_path))
    kind = data.benchmark.answer_type
    wrong = []
    for p in data.problems:
        pred = extract(f"Step by step.\nThe final answer is $\\boxed{{{p.answer}}}$.", kind, grader=grader,
                       benchmark=name)
        if grade(pred, p.answer, kind, grader=grader, benchmark=name) is (
                grader == "toolkit" and p.answer in TOOLKIT_REJECTS_ITS_GOLD):
            wrong.append((p.answer, pred))
    assert wrong == [], wrong[:10]
