"""Final answers: extraction from what a model wrote, and grading against a gold answer by answer type.

Two graders (``extract``/``grade``'s ``grader``): ``toolkit`` gives the Qwen2.5-Math evaluation toolkit's
verdicts, per benchmark (:mod:`lightreasoner.toolkit_grader`; the paper protocol's grader); ``math-verify`` is
this project's own. Numbers (GSM8K, SVAMP, ASDiv) under ``math-verify``: ``extract_answer`` reads GSM8K's
``#### N``, ``\\boxed{...}``, "The answer is N", "Answer: N", else the last number of the text; ``answers_match``
compares numbers as exact rationals, so ``0.5`` == ``1/2`` == ``0.50`` and ``$1,000`` == ``1000``.
"""

from __future__ import annotations

import re
from decimal import Decimal, localcontext
from fractions import Fraction

import pyarrow as pa

# --- answer extraction ---------------------------------------------------------------------------

# A number: thousands-separated, plain or decimal; an optional sign and currency before it; an optional
# simple-fraction denominator and percent sign after it.
_NUMBER = re.compile(
    r"(?P<sign>[-−+])?(?:(?:\\?\$|[€£¥])\s?)?(?P<sign2>[-−])?"
    r"(?P<num>\d{1,3}(?:,\d{3})+(?:\.\d+)?|\d+(?:\.\d+)?|\.\d+)"
    r"(?:\s?/\s?(?P<den>\d+)(?![.,]?\d))?"
)
_ANSWER_PHRASE = re.compile(r"\banswer\b\s*(?:is\b|was\b|:|=)\s*[:=]?", re.IGNORECASE)
_HASHES = re.compile(r"####")
_BOXED = re.compile(r"\\(?:boxed|fbox)\s*")
_FRAC = re.compile(r"\\[dt]?frac\s*\{([^{}]*)\}\s*\{([^{}]*)\}")
_FRAC_SHORT = re.compile(r"\\[dt]?frac\s*(\d)(\d)")
_TEXT = re.compile(r"\\(?:text|textbf|mathrm|mbox)\s*\{([^{}]*)\}")
_LATEX_SPACES = re.compile(r"\\[,!;: ]|\\left|\\right")
_PLAIN_VALUE = re.compile(r"(?P<sign>[-+]?)(?P<num>\d+(?:\.\d*)?|\.\d+)(?:/(?P<den>\d+))?")


# The columns of a graded answer, in every predictions/solutions file: what was extracted, the gold answer,
# and whether they match.
GRADED_COLUMNS = [("extracted", pa.string()), ("gold", pa.string()), ("correct", pa.bool_())]


def _format(value: Fraction) -> str:
    """Canonical text: integers as ``18``, terminating fractions as decimals (``0.5``), others ``p/q``."""
    if value.denominator == 1:
        return str(value.numerator)
    den = value.denominator
    for p in (2, 5):
        while den % p == 0:
            den //= p
    if den == 1:
        with localcontext() as ctx:
            ctx.prec = 100
            text = format(Decimal(value.numerator) / Decimal(value.denominator), "f")
        return text.rstrip("0").rstrip(".") if "." in text else text
    return f"{value.numerator}/{value.denominator}"


def _numbers(text: str) -> list[tuple[Fraction, int]]:
    """Every number in ``text`` as (value, start offset). A ``-`` right after a digit, letter or closing
    bracket is an operator (``16-3``), not a sign."""
    found = []
    for m in _NUMBER.finditer(text):
        num = m.group("num").replace(",", "")
        value = Fraction(num)
        den = m.group("den")
        if den is not None:
            if int(den) == 0:
                continue
            value /= int(den)
        sign = m.group("sign") or m.group("sign2") or ""
        if m.group("sign") in ("-", "−"):
            before = text[m.start() - 1] if m.start() > 0 else " "
            if before.isalnum() or before in ")]}":
                sign = m.group("sign2") or ""
        if sign in ("-", "−"):
            value = -value
        found.append((value, m.start()))
    return found


def _first_number(text: str) -> str | None:
    nums = _numbers(text)
    return _format(nums[0][0]) if nums else None


def _last_number(text: str) -> str | None:
    nums = _numbers(text)
    return _format(nums[-1][0]) if nums else None


def _number_of_statement(rest: str) -> str | None:
    """The number a statement like "is 3 * 4 = 12." gives: its first sentence, after its last ``=``."""
    line = rest.lstrip().split("\n", 1)[0]
    line = re.split(r"\.(?:\s|$)", line, maxsplit=1)[0]
    if "=" in line:
        line = line.rsplit("=", 1)[1]
    return _first_number(line)


def _last_boxed(text: str) -> str | None:
    """Content of the last complete ``\\boxed{...}`` (nested braces allowed) or ``\\boxed N``."""
    result = None
    for m in _BOXED.finditer(text):
        i = m.end()
        if i < len(text) and text[i] == "{":
            depth = 0
            for j in range(i, len(text)):
                if text[j] == "{":
                    depth += 1
                elif text[j] == "}":
                    depth -= 1
                    if depth == 0:
                        result = text[i + 1 : j]
                        break
        else:
            word = re.match(r"[^\s$]+", text[i:])
            if word:
                result = word.group(0)
    return result


_CLOCK = re.compile(r"\s*\d+\s*:\s*\d+\b")  # a time of day (3:30 p.m.) or a ratio (5:6)


def _from_boxed(content: str) -> str | None:
    if _CLOCK.match(content):  # a time of day or ratio (ASDiv: 3:30 p.m., 5:6) is an answer, not the number 3
        return " ".join(_TEXT.sub(r" \1 ", content).replace("\\", " ").split()) or None
    text = re.sub(r"(?<=\d)(?:\{,\}|\\[,!])(?=\d{3})", ",", content)
    text = _TEXT.sub(r" \1 ", text)
    for _ in range(3):  # nested \frac, innermost first
        text = _FRAC.sub(r"(\1)/(\2)", text)
    text = _FRAC_SHORT.sub(r"\1/\2", text)
    text = _LATEX_SPACES.sub(" ", text)
    text = re.sub(r"\((-?[\d.]+)\)/\((\d+)\)", r"\1/\2", text)
    if "=" in text:
        text = text.rsplit("=", 1)[1]
    number = _first_number(text)
    if number is not None:
        return number
    stripped = " ".join(text.replace("\\", " ").replace("{", " ").replace("}", " ").split())
    return stripped or None


def extract_answer(text: str | None) -> str | None:
    """The final answer a model wrote, normalised (``"1,000"`` -> ``"1000"``, ``"$5.00"`` -> ``"5"``,
    ``"1/2"`` -> ``"0.5"``, ``"50%"`` -> ``"50"``), or None when the text holds no answer.

    Order: the last ``\\boxed{...}``; the number after the last ``####``; the number after the last
    "answer is" / "Answer:"; the last number of the text.
    """
    if not text:
        return None
    boxed = _last_boxed(text)
    if boxed is not None:
        answer = _from_boxed(boxed)
        if answer is not None:
            return answer
    for pattern in (_HASHES, _ANSWER_PHRASE):
        for m in reversed(list(pattern.finditer(text))):
            answer = _number_of_statement(text[m.end() :])
            if answer is not None:
                return answer
    return _last_number(text)


def _value(text: str | None) -> Fraction | None:
    """The number a short answer text is, or None when it is not just a number."""
    if text is None:
        return None
    t = text.strip()
    if "####" in t:
        t = t.rsplit("####", 1)[1]
    for junk in ("\\$", "$", "\\%", "%", ",", "€", "£", "¥", " "):
        t = t.replace(junk, "")
    t = t.replace("−", "-").rstrip(".")
    m = _PLAIN_VALUE.fullmatch(t)
    if not m:
        return None
    value = Fraction(m.group("num").rstrip(".") or "0")
    if m.group("den") is not None:
        if int(m.group("den")) == 0:
            return None
        value /= int(m.group("den"))
    return -value if m.group("sign") == "-" else value


def _normalise_text(text: str) -> str:
    return " ".join(text.split()).strip().rstrip(".").lower()


def answers_match(pred: str | None, gold: str) -> bool:
    """True when the predicted answer equals the gold one: numbers compared exactly as rationals
    (``0.5`` == ``1/2``, ``18.00`` == ``18``, ``$1,000`` == ``1000``), anything else as normalised text."""
    if pred is None or gold is None:
        return False
    if _CLOCK.match(str(gold)):  # times and ratios: as text, without spaces around the colon
        return _normalise_text(re.sub(r"\s*:\s*", ":", pred)) == _normalise_text(re.sub(r"\s*:\s*", ":", str(gold)))
    gold_value = _value(str(gold))
    if gold_value is None:
        gold_value = _value(extract_answer(str(gold)))
    pred_value = _value(pred)
    if pred_value is None:
        pred_value = _value(extract_answer(pred))
    if gold_value is not None and pred_value is not None:
        return pred_value == gold_value
    if gold_value is not None or pred_value is not None:
        return False
    return _normalise_text(pred) == _normalise_text(str(gold))


# --- grading by answer type --------------------------------------------------------------------------

# number: GSM8K, SVAMP, ASDiv (exact rationals, text when not a number); latex: MATH, Minerva, OlympiadBench
# (math-verify); choice: MMLU-STEM (a letter A-D).
ANSWER_TYPES = ("number", "latex", "choice")
CHOICE_LETTERS = "ABCDEFGHIJ"

_CHOICE_PHRASE = re.compile(r"\banswer\b[^A-Za-z0-9(]{0,20}(?:is\b|:)?\s*(?:option\s+)?\(?([A-J])\)?(?![A-Za-z])",
                            re.IGNORECASE)
_CHOICE_PAREN = re.compile(r"\(([A-J])\)")
_LATEX_DOLLARS = re.compile(r"^\$+|\$+$")


def _phrase_statement(text: str) -> str | None:
    """The rest of the line after the last "answer is" / "Answer:", without a closing period or dollars."""
    matches = list(_ANSWER_PHRASE.finditer(text))
    if not matches:
        return None
    line = text[matches[-1].end() :].strip().split("\n", 1)[0].strip()
    line = re.sub(r"\.\s*$", "", line).strip()
    line = _LATEX_DOLLARS.sub("", line).strip()
    return line or None


def extract_latex(text: str | None) -> str | None:
    """The final LaTeX answer: the last ``\\boxed{...}``, else the statement after the last "answer is", else
    the last number of the text."""
    if not text:
        return None
    boxed = _last_boxed(text)
    if boxed is not None and boxed.strip():
        return boxed.strip()
    return _phrase_statement(text) or _last_number(text)


def extract_choice(text: str | None) -> str | None:
    """The multiple-choice letter: in the last ``\\boxed{...}``, else after the last "answer is", else the last
    ``(X)`` of the text; None when there is none."""
    if not text:
        return None
    boxed = _last_boxed(text)
    if boxed is not None:
        inner = _TEXT.sub(r"\1", boxed).strip().strip("()").strip()
        if re.fullmatch(r"[A-Ja-j]", inner) or re.match(r"[A-J](?![A-Za-z])", inner):
            return inner[0].upper()
    phrases = list(_CHOICE_PHRASE.finditer(text))
    if phrases:
        return phrases[-1].group(1).upper()
    parens = list(_CHOICE_PAREN.finditer(text))
    if parens:
        return parens[-1].group(1)
    return None


def _main_thread() -> bool:
    import threading

    return threading.current_thread() is threading.main_thread()


_STRICT_NUMBER = re.compile(r"[-+]?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?|[-+]?\.\d+")


def _strict_value(text: str) -> Fraction | None:
    """A plain number (``-3``, ``0.50``, ``1,000``), else None (``1,3,5`` is a list, not a number)."""
    t = _LATEX_DOLLARS.sub("", text).strip()
    return Fraction(t.replace(",", "")) if _STRICT_NUMBER.fullmatch(t) else None


def latex_match(pred: str | None, gold: str | None) -> bool:
    """True when two LaTeX answers are mathematically equal, by Hugging Face's math-verify (``\\frac{1}{2}`` ==
    ``0.5``, ``\\sqrt{2}/2`` == ``\\frac{\\sqrt2}{2}``, intervals, sets, ``x=3`` == ``3``). Plain numbers are
    compared as exact rationals first (so ``1,000`` is a thousand, not a set)."""
    if pred is None or gold is None or not str(pred).strip() or not str(gold).strip():
        return False
    pred, gold = str(pred).strip(), str(gold).strip()
    pv, gv = _strict_value(pred), _strict_value(gold)
    if pv is not None and gv is not None:
        return pv == gv
    from math_verify import ExprExtractionConfig, LatexExtractionConfig, parse, verify

    # math-verify's timeouts use SIGALRM, which only works in the main thread.
    timeout = 5 if _main_thread() else None
    configs = [LatexExtractionConfig(), ExprExtractionConfig()]
    try:
        gold_parsed = parse(f"${_LATEX_DOLLARS.sub('', gold)}$", extraction_config=configs, parsing_timeout=timeout)
        pred_parsed = parse(f"${_LATEX_DOLLARS.sub('', pred)}$", extraction_config=configs, parsing_timeout=timeout)
        if not gold_parsed or not pred_parsed:
            return _normalise_text(pred) == _normalise_text(gold)
        return bool(verify(gold_parsed, pred_parsed, timeout_seconds=timeout))
    except Exception:  # noqa: BLE001 - an answer math-verify cannot read is not a match
        return False


# Graders: "toolkit" gives the Qwen2.5-Math evaluation toolkit's verdicts (the paper's numbers; see
# lightreasoner.toolkit_grader); "math-verify" is this project's own (exact rationals for numbers, math-verify for
# LaTeX, the letter for choices).
GRADERS = ("toolkit", "math-verify")


def _check(answer_type: str, grader: str) -> None:
    if answer_type not in ANSWER_TYPES:
        raise ValueError(f"answer type {answer_type!r}: expected one of {', '.join(ANSWER_TYPES)}")
    if grader not in GRADERS:
        raise ValueError(f"grader {grader!r}: expected one of {', '.join(GRADERS)}")


def _toolkit_benchmark(answer_type: str, benchmark: str | None) -> str | None:
    """The benchmark whose rules the toolkit applies: a choice answer is always read as a choice."""
    from .toolkit_grader import CHOICE_BENCHMARKS

    if answer_type == "choice" and benchmark not in CHOICE_BENCHMARKS:
        return "mmlu_stem"
    return benchmark


def extract(text: str | None, answer_type: str, grader: str = "toolkit", benchmark: str | None = None) -> str | None:
    """The final answer of a model's output, read as ``answer_type`` expects it under ``grader``.

    ``toolkit``: the Qwen2.5-Math toolkit's prediction (its extraction and clean-up of the raw text, with the
    rules of ``benchmark``: units kept for ``minerva_math``, letters for ``mmlu_stem``); None when it reads
    nothing. ``math-verify``: this project's extraction (numbers normalised, ``1/2`` -> ``0.5``)."""
    _check(answer_type, grader)
    if grader == "toolkit":
        from . import toolkit_grader

        return toolkit_grader.extract(text, _toolkit_benchmark(answer_type, benchmark)) or None
    if answer_type == "number":
        return extract_answer(text)
    if answer_type == "latex":
        return extract_latex(text)
    return extract_choice(text)


def grade(pred: str | None, gold: str, answer_type: str, grader: str = "toolkit",
          benchmark: str | None = None) -> bool:
    """True when the extracted answer ``pred`` (from :func:`extract` with the same grader) equals ``gold``.

    ``toolkit``: the toolkit's verdict (numbers within a relative 1e-4, also gold/100 and gold x 100; symbolic
    equality by sympy; tuples in order), ``gold`` read as the benchmark's file gives it. ``math-verify``: exact
    rationals for numbers, math-verify for LaTeX, the letter for choices."""
    _check(answer_type, grader)
    if grader == "toolkit":
        from . import toolkit_grader

        return toolkit_grader.grade(pred, gold, _toolkit_benchmark(answer_type, benchmark))
    if answer_type == "number":
        return answers_match(pred, gold)
    if answer_type == "latex":
        return latex_match(pred, gold)
    return pred is not None and pred.strip().upper() == str(gold).strip().upper()
