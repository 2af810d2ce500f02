"""Grading by answer type: numbers (exact rationals), LaTeX (math-verify), multiple-choice letters."""

from __future__ import annotations

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
    assert grade(pred, gold, "latex")


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
