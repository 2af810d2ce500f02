"""The Qwen2.5-Math evaluation toolkit's grading, reproduced: the verdicts the paper's numbers were scored with.

The toolkit (QwenLM/Qwen2.5-Math, ``evaluation/``) reads a model's answer in three steps, and this module
follows each one's behaviour (written from that behaviour, not copied):

1. :func:`extract` -- the answer text: multiple-choice benchmarks (``mmlu_stem``) take the letter after the
   last "answer is" (else the last standalone A-E); the others take Minerva's "final answer is $..$. I hope",
   else the last ``boxed`` group, else what follows "he answer is" / "final answer is", else the last number.
2. :func:`normalise` -- the toolkit's string clean-up (twice for a prediction, as the toolkit does): ``\\left``,
   ``\\!``, ``dfrac``, a trailing ``\\text{..}``, the unit words of its list (kept for ``minerva_math``),
   dollars, percent signs, word numbers, ``x=``, ``.000``, ``a/b`` -> ``\\frac{a}{b}`` ... and spaces.
3. :func:`equal` -- numbers compare with a relative tolerance of 1e-4, also against gold/100 and gold x 100;
   brackets and braces are ignored when that makes the texts equal; tuples and intervals compare element by
   element in order; ``lhs = rhs`` compares by its sides; else the two are parsed to sympy (sympy's LaTeX
   parser, which reads only the leading expression; sympy's expression parser; latex2sympy2_extended) and
   compared exactly, by simplification, then numerically.

Gold answers pass through :func:`gold_answer`, the toolkit's per-benchmark reading of its test files.
"""

from __future__ import annotations

import math
import re
import threading
from contextlib import contextmanager

CHOICE_BENCHMARKS = ("mmlu_stem", "sat_math", "aqua", "gaokao2023")
# Benchmarks whose unit words are kept (the toolkit skips its unit list for them).
KEEP_UNITS = ("carp_en", "minerva_math")
TIMEOUT_S = 3  # the toolkit's per-answer limit; an answer it cannot judge in time is wrong

# --- word numbers (the toolkit converts "twelve" -> 12 through the word2number package) ---------------

_UNITS_WORDS = ("zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen "
                "fifteen sixteen seventeen eighteen nineteen").split()
_WORD_VALUE = {w: i for i, w in enumerate(_UNITS_WORDS)}
_WORD_VALUE.update({w: 10 * (i + 2) for i, w in enumerate("twenty thirty forty fifty sixty seventy eighty ninety"
                                                          .split())})
_WORD_VALUE.update({"hundred": 100, "thousand": 1000, "million": 10**6, "billion": 10**9})
_SCALES = ("billion", "million", "thousand")


def _group_value(words: list[str]) -> int:
    """A group of number words below a scale word: word2number's rule by group size."""
    v = [_WORD_VALUE[w] for w in words]
    if not v:
        raise ValueError("empty group")
    if len(v) == 4:
        return v[0] * v[1] + v[2] + v[3]
    if len(v) == 3:
        return v[0] * v[1] + v[2]
    if len(v) == 2:
        return v[0] * v[1] if 100 in v else v[0] + v[1]
    return v[0]


def word_number(text: str) -> int | float | None:
    """The number the number words of ``text`` spell, as word2number reads them (every other word is
    ignored: ``"x one y"`` is 1), or None when it reads none."""
    t = text.replace("-", " ").lower()
    if t.isdigit():
        try:
            return int(t)
        except ValueError:
            return None
    words = [w for w in t.split() if w in _WORD_VALUE or w == "point"]
    if not words or any(words.count(w) > 1 for w in (*_SCALES, "point")):
        return None
    decimals: list[str] = []
    if "point" in words:
        at = words.index("point")
        words, decimals = words[:at], words[at + 1:]
    b, m, k = (words.index(s) if s in words else -1 for s in _SCALES)
    if (k > -1 and (k < m or k < b)) or (m > -1 and m < b):
        return None
    last = len(words) - 1
    total: int | float = 0
    try:
        if len(words) == 1:
            total = _WORD_VALUE[words[0]]
        elif words:
            if b > -1:
                total += _group_value(words[:b]) * 10**9
            if m > -1:
                total += _group_value(words[b + 1:m] if b > -1 else words[:m]) * 10**6
            if k > -1:
                start = m + 1 if m > -1 else (b + 1 if b > -1 else 0)
                total += _group_value(words[start:k]) * 1000
            # the rest: after the first scale word (thousand, then million, then billion) that is not last
            for at in (k, m, b):
                if at > -1 and at != last:
                    total += _group_value(words[at + 1:])
                    break
            else:
                if k == m == b == -1:
                    total += _group_value(words)
    except (ValueError, IndexError):
        return None
    if decimals:
        if all(w in _UNITS_WORDS[:10] for w in decimals):
            total += float("0." + "".join(str(_WORD_VALUE[w]) for w in decimals))
    return total


# --- normalisation -------------------------------------------------------------------------------------

# The toolkit's unit words ("mainly from MathQA"), in its order; each is a regular expression removed where it
# stands alone (between non-word characters or the ends), the list applied twice, plurals after singulars.
_UNIT_WORDS = [
    "east", "degree", "mph", "kmph", "ft", "m sqaure", " m east", "sq m", "deg", "mile", "q .", "monkey", "prime",
    "ratio", "profit of rs", "rd", "o", "gm", "p . m", "lb", "tile", "per", "dm", "lt", "gain", "ab", "way", "west",
    "a .", "b .", "c .", "d .", "e .", "f .", "g .", "h .", "t", "a", "h", "no change", "men", "soldier", "pie",
    "bc", "excess", "st", "inches", "noon", "percent", "by", "gal", "kmh", "c", "acre", "rise", "a . m", "th",
    "π r 2", "sq", "mark", "l", "toy", "coin", "sq . m", "gallon", "° f", "profit", "minw", "yr", "women", "feet",
    "am", "pm", "hr", "cu cm", "square", "v â € ™", "are", "rupee", "rounds", "cubic", "cc", "mtr", "s", "ohm",
    "number", "kmph", "day", "hour", "minute", "min", "second", "man", "woman", "sec", "cube", "mt", "sq inch",
    "mp", "∏ cm ³", "hectare", "more", "sec", "unit", "cu . m", "cm 2", "rs .", "rs", "kg", "g", "month", "km",
    "m", "cm", "mm", "apple", "liter", "loss", "yard", "pure", "year", "increase", "decrease", "d", "less",
    "Surface", "litre", "pi sq m", "s .", "metre", "meter", "inch",
]
# (text that must occur for the pattern to match -- a fast check, the part before any ".", pattern)
_UNIT_PATTERNS = [(u.split(".")[0].strip(), re.compile(rf"(^|\W){u}($|\W)"))
                  for u in _UNIT_WORDS + [u + "s" for u in _UNIT_WORDS]]

_TRAILING_TEXT = re.compile(r"\\text{.*?}$")
_TEXT_GROUP = re.compile(r"\\text\{(.*?)\}")
_MBOX = re.compile(r"\\mbox{.*?}")
_ARRAY_BEGIN = re.compile(r"\\begin\{array\}\{.*?\}")
_SQRT_BARE = re.compile(r"\\sqrt(\w+)")
# (before, after) literal replacements, in order, at each stage of the clean-up.
_LATEX_SPELLING = [("\\end{array}", "\\end{pmatrix}"), ("bmatrix", "pmatrix"), ("tfrac", "frac"),
                   ("dfrac", "frac"), ("\\neq", "\\ne"), ("\\leq", "\\le"), ("\\geq", "\\ge"), ("\\left", ""),
                   ("\\right", ""), ("\\{", "{"), ("\\}", "}")]
_DEGREES_DOLLARS = [("^{\\circ}", ""), ("^\\circ", ""), ("\\$", ""), ("$", ""), ("\\(", ""), ("\\)", "")]
_VARIABLES = ["x=", "y=", "z=", "x\\in", "y\\in", "z\\in", "x\\to", "y\\to", "z\\to"]


def _replace_all(text: str, pairs) -> str:
    for before, after in pairs:
        text = text.replace(before, after)
    return text


def _frac_braces(text: str) -> str:
    """``\\frac12`` -> ``\\frac{1}{2}``, ``\\frac1{72}`` -> ``\\frac{1}{72}``: the first two characters after a
    brace-less ``\\frac`` become its groups (the text is left as it was when one is missing)."""
    head, *parts = text.split("\\frac")
    out = [head]
    for part in parts:
        if part.startswith("{"):
            out.append(part)
            continue
        if len(part) < 2:
            return text
        a, b, rest = part[0], part[1], part[2:]
        out.append("{" + a + "}" + (b + rest if b == "{" else "{" + b + "}" + rest))
    return "\\frac".join(out)


def _is_int_text(s: str) -> bool:
    try:
        int(s)
        return True
    except ValueError:
        return False


def _slash_to_frac(text: str) -> str:
    """``3/4`` -> ``\\frac{3}{4}`` when both sides are integers written plainly (or hold a sqrt)."""
    parts = text.split("/")
    if len(parts) != 2:
        return text
    a, b = parts
    pieces = []
    for side in (a, b):
        if "sqrt" in side:
            pieces.append(side)
        elif _is_int_text(side):
            pieces.append(str(int(side)))
        else:
            return text
    if f"{pieces[0]}/{pieces[1]}" != text:
        return text
    return "\\frac{" + pieces[0] + "}{" + pieces[1] + "}"


def normalise(text: str, keep_units: bool = False) -> str:
    """The toolkit's clean-up of an answer string (its ``strip_string``), step for step."""
    s = str(text).strip().replace("\n", "").rstrip(".")
    s = s.replace("\\!", "")
    s = _ARRAY_BEGIN.sub(r"\\begin{pmatrix}", s)
    s = _replace_all(s, _LATEX_SPELLING)
    without = _TRAILING_TEXT.sub("", s).strip()
    if without and without != s:
        s = without
    if not keep_units:
        for _ in range(2):
            for needle, pattern in _UNIT_PATTERNS:
                if needle not in s:
                    continue
                cut = pattern.sub(r"\1\2", s)
                if cut:
                    s = cut
    s = _replace_all(s, _DEGREES_DOLLARS)
    spelled = word_number(s)
    if spelled is not None:
        s = str(spelled)
    s = _TEXT_GROUP.sub(r"\1", s)
    s = _replace_all(s, [(v, "") for v in _VARIABLES])
    s = s.replace("\\emptyset", "{}").replace("(-\\infty,\\infty)", "\\mathbb{R}")
    s = s.replace("\\%", "").replace("%", "")
    s = s.replace(" .", " 0.").replace("{.", "{0.")
    s = s.replace("infinity", "\\infty")
    if "\\infty" not in s:
        s = s.replace("inf", "\\infty")
    s = s.replace("and", "").replace("\\mathbf", "")
    s = _MBOX.sub("", s)
    if "j" in s and "i" not in s:
        s = s.replace("j", "i")
    s = re.sub(r"(\d+)\.0*([^\d])", r"\1\2", s)
    s = re.sub(r"(\d+)\.0*$", r"\1", s)
    if not s:
        return s
    if s[0] == ".":
        s = "0" + s
    sides = s.split("=")
    if len(sides) == 2 and len(sides[0]) <= 2:
        s = sides[1]
    s = _SQRT_BARE.sub(r"\\sqrt{\1}", s)
    s = s.replace(" ", "")
    s = _frac_braces(s)
    return _slash_to_frac(s)


# --- extraction ---------------------------------------------------------------------------------------

_LAST_NUMBER = re.compile(r"-?\d*\.?\d+")
_LETTER = re.compile(r"\b(A|B|C|D|E)\b")


def _boxed_group(text: str) -> str:
    """What follows the last ``boxed``: its brace group (to the end when unclosed), else the text up to a ``$``."""
    tail = text.split("boxed")[-1]
    if not tail:
        return ""
    if tail[0] != "{":
        return tail.split("$")[0].strip()
    depth = 1
    for i, ch in enumerate(tail[1:], start=1):
        depth += (ch == "{") - (ch == "}")
        if depth == 0:
            return tail[1:i]
    return tail[1:]


def _letter(text: str, first: bool) -> str:
    found = _LETTER.findall(text.upper())
    if found:
        pick = found[0] if first else found[-1]
    else:
        pick = text.strip().strip(".")
    return pick.rstrip(".").rstrip("/")


def _choice(text: str) -> str:
    """The toolkit's multiple-choice reading: the first standalone A-E after the last "answer is" /
    "choice is" (only the first paragraph when either phrase is written twice), else the last one."""
    t = text.strip("\n")
    if t.count("choice is") > 1 or t.count("answer is") > 1:
        t = t.split("\n\n")[0]
    pieces = re.split("choice is|answer is", t)
    after_phrase = len(pieces) > 1
    t = pieces[-1].strip("\n").rstrip(".").rstrip("/").strip(" ").lstrip(":")
    return _letter(t, first=after_phrase)


def raw_answer(text: str, benchmark: str | None) -> str:
    """The answer text the toolkit takes from a model's output, before its clean-up."""
    text = text.replace("\u043a\u0438", "")
    if benchmark in CHOICE_BENCHMARKS:
        return _choice(text)
    if "final answer is $" in text and "$. I hope" in text:
        pred = text.split("final answer is $", 1)[1].split("$. I hope", 1)[0].strip()
    elif "boxed" in text:
        pred = _boxed_group(text)
        if not text.split("boxed")[-1]:
            return ""
    elif "he answer is" in text:
        pred = text.split("he answer is")[-1].strip()
    elif "final answer is" in text:
        pred = text.split("final answer is")[-1].strip()
    elif "答案是" in text:
        pred = text.split("答案是")[1].strip().split("\n\n")[0].strip()
    else:
        numbers = _LAST_NUMBER.findall(text.replace(",", ""))
        pred = numbers[-1] if numbers else ""
    return _trim(pred)


def _trim(pred: str) -> str:
    """Line breaks out, one leading colon and one final period and slash off."""
    pred = re.sub(r"\n\s*", "", pred)
    if pred.startswith(":"):
        pred = pred[1:]
    if pred.endswith("."):
        pred = pred[:-1]
    if pred.endswith("/"):
        pred = pred[:-1]
    return pred


def extract(text: str | None, benchmark: str | None = None) -> str:
    """The toolkit's prediction for a model's output: the answer text, cleaned up as it does ("" when none)."""
    if not text or text == "error":  # the toolkit's marker of a failed generation
        return ""
    keep = benchmark in KEEP_UNITS
    pred = raw_answer(text, benchmark)
    if benchmark not in CHOICE_BENCHMARKS and pred:
        pred = normalise(pred, keep)
    return normalise(pred, keep)


def gold_answer(gold: str, benchmark: str | None = None) -> str:
    """A gold answer as the toolkit reads its test file: ASDiv's unit in parentheses dropped, the clean-up
    applied (Minerva keeps its units; MATH's boxed answer is cleaned twice, as the toolkit does)."""
    g = str(gold)
    if benchmark == "asdiv":
        g = re.sub(r"\(.*?\)", "", g)
    if benchmark in ("math", "minerva_math"):  # the boxed answer of a solution, read like a prediction
        g = normalise(_trim(g), keep_units=benchmark in KEEP_UNITS)
        return g if benchmark in KEEP_UNITS else normalise(g)
    return normalise(g, keep_units=benchmark in KEEP_UNITS)


# --- equality -----------------------------------------------------------------------------------------


def _number(text: str) -> float | None:
    """A plain number as Python's float reads it (commas ignored; ``50%`` / ``50\\%`` -> 0.5), else None."""
    t = str(text).replace(",", "")
    try:
        return float(t)
    except ValueError:
        pass
    if t.endswith("%"):
        t = t[:-1].removesuffix("\\")
        try:
            return float(t) / 100
        except ValueError:
            return None
    return None


def _close(a: float, b: float) -> bool:
    return math.isclose(b, a, rel_tol=1e-4)


def _choice_letter(text: str) -> str:
    t = text.strip("\n").rstrip(".").rstrip("/").strip(" ").lstrip(":")
    return _letter(t, first=False)


def _pmatrix_rows(text: str) -> str:
    rows = re.findall(r"\{.*,.*\}", text.strip())
    return ", ".join(r"\begin{pmatrix}" + r.strip("{}").replace(",", "\\") + r"\end{pmatrix}" for r in rows)


_BEGIN, _END = "\\begin{pmatrix}", "\\end{pmatrix}"


def _is_matrix(s: str) -> bool:
    return s.startswith(("\\begin{pmatrix}", "\\begin{bmatrix}")) and s.endswith(("\\end{pmatrix}",
                                                                                "\\end{bmatrix}"))


def _matrix_cells(s: str) -> list[list[str]]:
    return [line.strip().split("&") for line in s[len(_BEGIN):-len(_END)].split("\\\\") if line.strip()]


def equal(pred: str | None, gold: str | None) -> bool:
    """The toolkit's verdict (its ``math_equal``) on a cleaned-up prediction against a cleaned-up gold answer."""
    if pred is None or gold is None:
        return False
    if pred.strip().lower() == gold.strip().lower():
        return True
    if gold in ("A", "B", "C", "D", "E") and _choice_letter(pred) == gold:
        return True
    p_num, g_num = _number(pred), _number(gold)
    if p_num is not None and g_num is not None:
        return any(_close(p_num, g) for g in (g_num / 100, g_num, g_num * 100))
    if not pred:
        return False
    gold, pred = gold.strip(), pred.strip()
    if "pmatrix" in pred and "pmatrix" not in gold:
        gold = _pmatrix_rows(gold)
    p, g = pred, gold
    if (pred[:1] == "[" and pred.endswith("]") and not gold.startswith("(")) or (
            pred[:1] == "(" and pred.endswith(")") and not gold.startswith("[")):
        p, g = p.strip("[]()"), g.strip("[]()")
    drop = str.maketrans("", "", "{}()")
    if p.translate(drop).lower() == g.translate(drop).lower():
        return True
    bracketed = re.compile(r"[(\[].+[)\]]")
    if bracketed.match(pred) and bracketed.match(gold):
        ps, gs = pred[1:-1].split(","), gold[1:-1].split(",")
        if len(ps) == len(gs) and all(equal(a, b) for a, b in zip(ps, gs, strict=True)):
            return True
    if _is_matrix(pred) and _is_matrix(gold):
        pr, gr = _matrix_cells(pred), _matrix_cells(gold)
        if len(pr) == len(gr) and all(len(a) == len(b) and all(equal(x, y) for x, y in zip(a, b, strict=True))
                                      for a, b in zip(pr, gr, strict=True)):
            return True
    if pred.count("=") == 1 and gold.count("=") == 1:
        pl, pr_ = pred.split("=")
        gl, gr_ = gold.split("=")
        pe, ge = f"{pl.strip()} - ({pr_.strip()})", f"{gl.strip()} - ({gr_.strip()})"
        if symbolic_equal(pe, ge) or symbolic_equal(f"-({pe})", ge):
            return True
    elif pred.count("=") == 1 and len(pred.split("=")[0].strip()) <= 2 and "=" not in gold:
        if equal(pred.split("=")[1], gold):
            return True
    elif gold.count("=") == 1 and len(gold.split("=")[0].strip()) <= 2 and "=" not in pred:
        if equal(pred, gold.split("=")[1]):
            return True
    return symbolic_equal(pred, gold)


# --- sympy ----------------------------------------------------------------------------------------------


_SYMPY_NAMES: dict | None = None
# What sympy's expression parser (an eval) is given: no quotes, underscores, brackets or attribute access, and
# no builtins in its namespace -- a model's output is never code.
_SAFE_EXPRESSION = re.compile(r"(?!.*__)(?!.*\.[A-Za-z])[0-9A-Za-z+\-*/^().,=<>!%&|~ ]*")


def _expression(text: str):
    global _SYMPY_NAMES
    from sympy.parsing.sympy_parser import parse_expr

    if not _SAFE_EXPRESSION.fullmatch(text) or "_" in text:
        raise ValueError("not a plain expression")
    if _SYMPY_NAMES is None:
        names: dict = {}
        exec("from sympy import *", names)  # noqa: S102 - a fixed import, sympy's namespace for parse_expr
        names["__builtins__"] = {}
        _SYMPY_NAMES = names
    return parse_expr(text, global_dict=dict(_SYMPY_NAMES))


def _latex(text: str):
    """latex2sympy2_extended standing in for the toolkit's latex2sympy, with that one's limits: an empty
    ``\\mathrm{~}``, a ``\\prime`` or a character beyond ASCII (``−``, ``π``) is an error, ``\\mathrm{~cm}`` is the unit ``cm``, a final period is
    ignored."""
    from latex2sympy2_extended import latex2sympy
    from latex2sympy2_extended.latex2sympy2 import ConversionConfig, NormalizationConfig

    norm = NormalizationConfig(basic_latex=False, units=False, malformed_operators=False, nits=False,
                               boxed="none", equations=False)
    conv = ConversionConfig(interpret_as_mixed_fractions=False, interpret_simple_eq_as_assignment=False,
                            interpret_contains_as_eq=True, lowercase_symbols=False)
    text = text.replace("\\mathrm{~", "\\mathrm{")
    if "\\mathrm{}" in text or "\\prime" in text or not text.isascii():
        raise ValueError("the toolkit's latex2sympy cannot read this")
    try:
        return latex2sympy(text, normalization_config=norm, conversion_config=conv)
    except Exception:
        if not text.endswith("."):
            raise
        return latex2sympy(text[:-1], normalization_config=norm, conversion_config=conv)


_SYMPY_LATEX: tuple | None = None
_LEADING_ZERO = re.compile(r"(?<![\d.])0\d")


def _sympy_latex(text: str):
    """sympy's ANTLR LaTeX parser, the toolkit's first reader. It reads the longest expression at the start of
    the text and ignores the rest (``1, 2`` -> 1, ``2)`` -> 2), which decides many of the toolkit's verdicts.
    sympy's ``parse_latex`` insists on the 4.11 ANTLR runtime (math-verify pins 4.13, whose runtime reads the
    same generated parser), so the parser is driven here without that gate; when sympy moves it, the toolkit's
    third reader (latex2sympy, here latex2sympy2_extended) takes over."""
    global _SYMPY_LATEX
    if _SYMPY_LATEX is None:
        import antlr4
        from sympy.parsing.latex import _parse_latex_antlr as impl
        from sympy.parsing.latex._antlr.latexlexer import LaTeXLexer
        from sympy.parsing.latex._antlr.latexparser import LaTeXParser

        class Lexer(LaTeXLexer):
            def checkVersion(self, toolVersion):  # noqa: N802 - ANTLR's name; the runtime differs, quietly
                pass

        class Parser(LaTeXParser):
            def checkVersion(self, toolVersion):  # noqa: N802
                pass

        _SYMPY_LATEX = (antlr4, impl, Lexer, Parser)
        try:
            impl.parse_latex("1")
        except ImportError:  # the gate: sympy's own d/dx fractions call it, so they get the ungated reader
            impl.parse_latex = _read_sympy_latex
    return _read_sympy_latex(text)


def _read_sympy_latex(text: str, strict: bool = False):
    """sympy's ``parse_latex`` without its runtime-version gate (``strict``: the whole text must be read)."""
    antlr4, impl, lexer_class, parser_class = _SYMPY_LATEX
    text = text.strip()
    if _LEADING_ZERO.search(text):  # the toolkit's sympy (1.12) cannot read a number like 01 and gives up
        raise ValueError("a number with a leading zero")
    listener = impl.MathErrorListener(text)
    lexer = lexer_class(antlr4.InputStream(text))
    lexer.removeErrorListeners()
    lexer.addErrorListener(listener)
    parser = parser_class(antlr4.CommonTokenStream(lexer))
    parser.removeErrorListeners()
    parser.addErrorListener(listener)
    relation = parser.math().relation()
    if strict and (relation.start.start != 0 or relation.stop.stop != len(text) - 1):
        raise impl.LaTeXParsingError("Invalid LaTeX")
    return impl.convert_relation(relation)


def _parse(text: str):
    """``text`` as a sympy object -- sympy's LaTeX parser, sympy's expression parser, latex2sympy, in the
    toolkit's order -- else the text itself."""
    for attempt in (_sympy_latex, _expression, _latex):
        for candidate in (text.replace("\\\\", "\\"), text):
            try:
                return attempt(candidate)
            except Exception:  # noqa: BLE001,S112 - a parser that cannot read it: try the next one
                continue
    return text


def _symbolic(a_text: str, b_text: str) -> bool:
    from sympy import N, simplify

    a, b = _parse(a_text), _parse(b_text)
    checks = [
        lambda: str(a) == str(b) or a == b,
        lambda: a.equals(b) or simplify(a - b) == 0,
        lambda: abs(a.lhs - a.rhs).equals(abs(b.lhs - b.rhs)),
        lambda: _close(float(N(a)), float(N(b))),
    ]
    for check in checks:
        try:
            if check():
                return True
        except Exception:  # noqa: BLE001,S112 - a comparison sympy cannot make is not a match
            continue
    try:
        if a.shape == b.shape:
            return bool(a.applyfunc(lambda x: round(x, 3)).equals(b.applyfunc(lambda x: round(x, 3))))
    except Exception:  # noqa: BLE001
        pass
    return False


class _Timeout(Exception):
    pass


@contextmanager
def _time_limit(seconds: float):
    """SIGALRM-bounded block in the main thread; elsewhere unbounded (signals only reach the main thread)."""
    import signal

    if threading.current_thread() is not threading.main_thread() or not hasattr(signal, "setitimer"):
        yield
        return

    def _raise(signum, frame):
        raise _Timeout

    previous = signal.signal(signal.SIGALRM, _raise)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


_LOADED = False


def _load_parsers() -> None:
    global _LOADED
    if _LOADED:
        return
    import latex2sympy2_extended.latex2sympy2  # noqa: F401
    import sympy.parsing.sympy_parser  # noqa: F401

    try:
        _sympy_latex("1")
    except Exception:  # noqa: BLE001 - without it, the other readers decide
        pass
    _LOADED = True


def symbolic_equal(a: str, b: str) -> bool:
    return _symbolic(a, b)


def grade(pred: str | None, gold: str, benchmark: str | None = None) -> bool:
    """The toolkit's verdict on an extracted prediction (:func:`extract`) against a gold answer as the
    benchmark file gives it; judged within :data:`TIMEOUT_S` seconds or wrong, as the toolkit does."""
    if pred is None:
        return False
    _load_parsers()  # imports are slow: never inside the time limit (an interrupted import stays broken)
    try:
        with _time_limit(TIMEOUT_S):
            return equal(pred, gold_answer(gold, benchmark))
    except _Timeout:
        return False
