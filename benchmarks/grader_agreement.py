"""Agreement of ``answers.grade(..., grader="toolkit")`` with the Qwen2.5-Math evaluation toolkit's own grader.

It writes model-style outputs for the gold answers of the shared benchmark files (boxed, unit, percent,
fraction, expression, word-number, phrase, wrong-answer and no-answer styles), has the toolkit judge them
(its ``run_execute`` -> ``extract_answer`` + ``strip_string``, ``parse_ground_truth`` and ``math_equal``, run
by the toolkit's own interpreter from the folder given) and our grader judge them, and prints the agreement per
benchmark; the last line is the lowest agreement, a ratio.

The toolkit is not part of this project: set it up outside the repository, e.g.

    git clone https://github.com/QwenLM/Qwen2.5-Math /tmp/qwen && python -m venv /tmp/tk
    /tmp/tk/bin/pip install sympy==1.12 antlr4-python3-runtime==4.11.1 regex word2number numpy
    /tmp/tk/bin/pip install -e /tmp/qwen/evaluation/latex2sympy
    python benchmarks/grader_agreement.py --toolkit /tmp/qwen/evaluation --toolkit-python /tmp/tk/bin/python

(MATH's test file is not in ../shared; its rows are made from OlympiadBench's and Minerva's gold answers.)
"""

from __future__ import annotations

import argparse
import json
import random
import re
import subprocess
import sys
from collections import Counter, defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TYPES = {"gsm8k": "number", "svamp": "number", "asdiv": "number", "math": "latex", "minerva_math": "latex",
         "olympiadbench": "latex", "mmlu_stem": "choice"}
UNITS = ["dollars", "apples", "cm", "m", "km", "hours", "minutes", "feet", "inches", "meters", "kg", "degrees",
         "students", "pages", "miles", "cookies", "s", "mph", "units", "years"]
WORDS = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten", "eleven", "twelve",
         "thirteen", "fourteen", "fifteen", "sixteen", "seventeen", "eighteen", "nineteen", "twenty"]
PREAMBLE = ["Let's think step by step.\n", "First, we compute the total: 3 + 4 = 7.\n",
            "We have $x = 2$ and $y = 5$, so $x + y = 7$.\n", "Step 1: 12 * 3 = 36.\nStep 2: 36 - 6 = 30.\n", ""]


def load_rows(data: Path) -> dict[str, list[dict]]:
    rows: dict[str, list[dict]] = {}
    files = {"gsm8k": data / "gsm8k" / "test.jsonl"}
    for name in ("svamp", "asdiv", "minerva_math", "olympiadbench", "mmlu_stem", "math"):
        files[name] = data / "math-benchmarks" / name / "test.jsonl"
    for name, path in files.items():
        if path.exists():
            rows[name] = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    if "math" not in rows:  # MATH-style rows from the LaTeX gold answers at hand
        made = []
        for r in rows.get("olympiadbench", []):
            ans = r["final_answer"][0].strip("$")
            made.append({"problem": r["question"], "solution": f"So the answer is $\\boxed{{{ans}}}$.", "answer": ans})
        for r in rows.get("minerva_math", []):
            made.append({"problem": r["problem"], "solution": r["solution"]})
        rows["math"] = made
    return rows


def raw_gold(name: str, row: dict) -> str:
    """The gold answer as written in the row (before anyone's normalisation)."""
    if name == "gsm8k":
        return row["answer"].split("####")[-1].strip()
    if name == "svamp":
        return str(row["Answer"])
    if name == "asdiv":
        return re.sub(r"\s*\(.*?\)\s*$", "", row["answer"]).strip()
    if name == "olympiadbench":
        return row["final_answer"][0].strip("$")
    if name == "mmlu_stem":
        return "ABCD"[row["answer"]]
    if name in ("math", "minerva_math"):
        if row.get("answer"):
            return row["answer"]
        text = row["solution"].split("boxed")[-1]
        depth, out = 0, ""
        for ch in text:
            depth += (ch == "{") - (ch == "}")
            if depth == 0 and ch == "}":
                break
            out += ch
        return out[1:]
    raise KeyError(name)


def _num(text: str) -> float | None:
    try:
        return float(text.replace(",", ""))
    except ValueError:
        return None


def _fmt(x: float) -> str:
    return str(int(x)) if float(x).is_integer() and abs(x) < 1e15 else f"{x:.6g}"


def number_styles(g: str, rng: random.Random, other: str) -> list[tuple[str, str]]:
    """(style, answer text to put in an output) for a numeric gold answer."""
    v = _num(g)
    out = [("boxed", g), ("wrong", other)]
    if v is None:
        return out + [("text", g), ("text-lower", g.lower())]
    w = v + rng.choice([1, -1, 2, 10, 0.5])
    out += [("wrong", _fmt(w)), ("wrong", _fmt(v * 2)), ("float", f"{v:.1f}"), ("float", f"{v:.2f}"),
            ("tolerance", _fmt(v * (1 + 5e-5)) if v else "0.00001"), ("off-tolerance", f"{v * 1.001:.6g}"),
            ("percent", f"{_fmt(v)}\\%"), ("percent", f"{_fmt(v)}%"), ("percent", _fmt(v / 100)),
            ("percent", _fmt(v * 100)), ("unit", f"{_fmt(v)} \\text{{ {rng.choice(UNITS)}}}"),
            ("unit", f"{_fmt(v)} {rng.choice(UNITS)}"), ("unit", f"\\${_fmt(v)}"), ("unit", f"{_fmt(v)}^\\circ"),
            ("thousands", f"{int(v):,}" if v.is_integer() else _fmt(v)),
            ("thousands", f"{int(v):,}".replace(",", ",\\!") if v.is_integer() else _fmt(v)),
            ("e-notation", f"{v:.3e}"), ("e-notation", f"{v:e}"), ("rounded", f"{v:.3g}"),
            ("scientific", f"{v / 1000:g} \\times 10^{{3}}"), ("scientific", f"{v / 100:g} \\times 10^2"),
            ("spaces", _fmt(v).replace("", " ").strip()), ("negative", f"-{_fmt(v)}")]
    if v.is_integer():
        a = rng.randint(1, 9)
        out += [("expression", f"{_fmt(v - a)} + {a}"), ("expression", f"{_fmt(v + a)} - {a}"),
                ("expression", f"2 \\times {_fmt(v / 2)}"), ("expression", f"{_fmt(v * 3)} / 3"),
                ("expression", f"\\frac{{{_fmt(v * 2)}}}{{2}}"), ("expression", f"{_fmt(v - a)} + {a} = {_fmt(v)}"),
                ("expression", f"{_fmt(v)} \\cdot 1"), ("wrong-expression", f"{_fmt(v)} + {a}"),
                ("fraction", f"{_fmt(v * 4)}/4"), ("fraction", f"\\dfrac{{{_fmt(v * 3)}}}{{3}}")]
        if 0 <= v <= 20:
            out += [("words", WORDS[int(v)]), ("words", WORDS[int(v)].capitalize())]
    else:
        out += [("fraction", f"\\frac{{{_fmt(v * 8)}}}{{8}}"), ("rounded", f"{v:.1f}")]
    return out


def latex_styles(g: str, rng: random.Random, other: str) -> list[tuple[str, str]]:
    out = [("boxed", g), ("wrong", other), ("spaces", " ".join(g)), ("nospaces", g.replace(" ", "")),
           ("dfrac", g.replace("\\frac", "\\dfrac")), ("leftright", g.replace("(", "\\left(").replace(")", "\\right)")),
           ("var", f"x = {g}"), ("unit", f"{g} \\text{{ cm}}"), ("unit", f"{g} \\mathrm{{~m}}"),
           ("dollars", f"${g}$"), ("percent", f"{g}\\%"), ("times", g.replace("\\cdot", "\\times")),
           ("unit", f"{g}\\mathrm{{cm}}"), ("unit", f"{g}~\\mathrm{{m}}"), ("unit", f"{g} \\, \\text{{kg}}"),
           ("unit", f"{g} \\text{{ m/s}}"), ("unit", f"{g} \\mathrm{{~s}}"), ("unit", f"{g} \\mathrm{{~cm}}")]
    v = _num(g)
    if v is not None:
        out += number_styles(g, rng, other)[2:]
    if "," in g:
        parts = [p.strip() for p in g.split(",")]
        out += [("reordered", ", ".join(reversed(parts))), ("tuple", f"({', '.join(parts)})")]
    if g[:1] in "([" and g[-1:] in ")]":
        out += [("interval-swap", ("[" if g[0] == "(" else "(") + g[1:])]
    m = re.fullmatch(r"\\frac\{(-?\d+)\}\{(\d+)\}", g.replace(" ", ""))
    if m and int(m.group(2)):
        q = int(m.group(1)) / int(m.group(2))
        out += [("decimal", f"{q:.4f}"), ("decimal", f"{q:.6f}"), ("decimal", f"{q:.2f}"),
                ("slash", f"{m.group(1)}/{m.group(2)}")]
    return out


def choice_outputs(g: str, rng: random.Random, question: str) -> list[tuple[str, str]]:
    wrong = rng.choice([c for c in "ABCD" if c != g])
    return [
        ("phrase", f"Let's analyse each option.\nThe answer is ({g})."), ("phrase", f"The answer is {g}."),
        ("phrase-lower", f"so the answer is {g.lower()}"), ("boxed", f"Therefore the answer is $\\boxed{{{g}}}$."),
        ("boxed-text", f"The correct option is \\boxed{{\\text{{({g})}}}}"), ("boxed-only", f"\\boxed{{{g}}}"),
        ("choice-is", f"The correct choice is {g}"), ("option", f"Option ({wrong}) is wrong. Option ({g}) is right."),
        ("last-letter", f"(A) no (B) no (C) maybe. I pick {g}"), ("wrong", f"The answer is ({wrong})."),
        ("wrong-boxed", f"\\boxed{{{wrong}}}"), ("two-phrases", f"The answer is {wrong}.\n\nWait, the answer is {g}."),
        ("no-answer", "I am not sure about this one."), ("number", "The value is 42, so it is 42."),
        ("colon", f"Answer: {g}"), ("letter-text", f"The answer is ({g}) {question[:20]}"),
        ("a-article", f"This is a tricky question. The answer is {g}"), ("E", "The answer is (E)."),
    ]


def extra_styles(g: str, rng: random.Random) -> list[tuple[str, str]]:
    """Variants any gold answer can take: LaTeX spellings, text around it, degrees, periods, minus signs."""
    return [("text-box", f"\\text{{{g}}}"), ("text-box", f"\\text{{{g} {rng.choice(UNITS)}}}"),
            ("period", f"{g}."), ("tfrac", g.replace("\\frac", "\\tfrac")), ("degrees", f"{g}^{{\\circ}}"),
            ("minus", g.replace("-", "−")), ("percent-out", f"{g}\\%"), ("in", f"x \\in {g}"),
            ("sqrt", g.replace("\\sqrt{", "\\sqrt").replace("}", "", 1) if "\\sqrt{" in g else g),
            ("bold", f"\\mathbf{{{g}}}"), ("display", f"\\displaystyle {g}"), ("approx", f"\\approx {g}"),
            ("equation", f"a = {g}"), ("comma-list", f"{g}, {g}"), ("pm", f"\\pm {g}")]


def wrap(rng: random.Random, answer: str, style: str) -> str:
    pre = rng.choice(PREAMBLE)
    form = rng.randrange(10)
    if style == "no-answer":
        return pre + rng.choice(["I cannot solve this.", "The problem is unclear.", "So we get \\boxed{",
                                 "Therefore the result follows.", "We get 12 and then 15 more."])
    if form < 5:
        return f"{pre}Therefore, the final answer is $\\boxed{{{answer}}}$."
    if form == 5:
        return f"{pre}The answer is {answer}."
    if form == 6:
        return f"{pre}Final Answer: The final answer is ${answer}$. I hope it is correct."
    if form == 7:
        return f"{pre}So the total is {answer}"
    if form == 8:
        return f"{pre}\\[ \\boxed{{{answer}}} \\]\nThis is our answer." + rng.choice(["", " Check: 2 + 2 = 4."])
    return pre + rng.choice([f"The answer is: $\\boxed{{{answer}}}$", f"**Answer:** {answer}",
                             f"Final Answer: The final answer is {answer}. I hope it is correct.",
                             f"the answer is: {answer}", f"So the final answer is {answer}.",
                             f"$\\boxed{{{answer}}}$.", f"Answer: ${answer}$"])


def make_cases(rows: dict[str, list[dict]], per_benchmark: int, seed: int, extra: bool = False) -> list[dict]:
    rng = random.Random(seed)
    cases = []
    for name, brows in rows.items():
        golds = [raw_gold(name, r) for r in brows]
        made = 0
        while made < per_benchmark:
            i = rng.randrange(len(brows))
            g = golds[i]
            other = golds[rng.randrange(len(golds))]
            if name == "mmlu_stem":
                styles = choice_outputs(g, rng, brows[i]["question"])
                style, text = rng.choice(styles)
            else:
                styles = (number_styles if TYPES[name] == "number" else latex_styles)(g, rng, other)
                styles.append(("no-answer", ""))
                if extra:
                    styles += extra_styles(g, rng)
                style, ans = rng.choice(styles)
                text = wrap(rng, ans, style)
            cases.append({"benchmark": name, "row": i, "style": style, "output": text})
            made += 1
    return cases


def toolkit_side(toolkit: str, cases_path: str, data: str) -> None:
    """Run under the toolkit's interpreter: its verdict for every case, a JSON line each."""
    import signal

    sys.path.insert(0, toolkit)
    from grader import math_equal  # the toolkit's own modules, from the folder given
    from parser import STRIP_EXCEPTIONS, parse_ground_truth, run_execute

    rows = load_rows(Path(data))

    def _alarm(signum, frame):
        raise TimeoutError

    signal.signal(signal.SIGALRM, _alarm)
    for line in Path(cases_path).read_text().splitlines():
        case = json.loads(line)
        name = case["benchmark"]
        row = dict(rows[name][case["row"]])
        _, gt = parse_ground_truth(row, name)
        pred, _ = run_execute(None, case["output"], "qwen25-math-cot", name)
        signal.setitimer(signal.ITIMER_REAL, 3)
        try:
            verdict = bool(math_equal(pred, gt))
        except TimeoutError:
            verdict = False
        except Exception:  # noqa: BLE001 - the toolkit's pool would count it as wrong
            verdict = False
        finally:
            signal.setitimer(signal.ITIMER_REAL, 0)
        print(json.dumps({"pred": pred, "gt": gt, "correct": verdict}), flush=True)
    del STRIP_EXCEPTIONS


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--toolkit", required=True, help="the toolkit's evaluation/ folder (parser.py, grader.py)")
    ap.add_argument("--toolkit-python", default=sys.executable, help="an interpreter with the toolkit's needs")
    ap.add_argument("--data", default=str(ROOT.parent / "shared" / "data"))
    ap.add_argument("--per-benchmark", type=int, default=2000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--gold", choices=["project", "raw"], default="project",
                    help="gold answers given to our grader: the project's benchmark table, or the rows' raw text")
    ap.add_argument("--extra", action="store_true", help="add the harder variants (\\text{}, degrees, ...)")
    ap.add_argument("--cases", help="keep the generated cases and verdicts in this folder")
    ap.add_argument("--show", type=int, default=5, help="disagreements shown per benchmark")
    ap.add_argument("--toolkit-side", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--cases-file", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.toolkit_side:
        toolkit_side(args.toolkit, args.cases_file, args.data)
        return

    import tempfile

    from tqdm import tqdm

    from lightreasoner import answers
    from lightreasoner.benchmarks import BENCHMARKS

    rows = load_rows(Path(args.data))
    cases = make_cases(rows, args.per_benchmark, args.seed, args.extra)
    folder = Path(args.cases or tempfile.mkdtemp(prefix="grader-agreement-"))
    folder.mkdir(parents=True, exist_ok=True)
    cases_file = folder / "cases.jsonl"
    text = "".join(json.dumps(c) + "\n" for c in cases)
    verdicts_file = folder / "toolkit.jsonl"
    if cases_file.exists() and cases_file.read_text() == text and verdicts_file.exists():
        verdicts = [json.loads(line) for line in verdicts_file.read_text().splitlines()]  # same cases: reuse
    else:
        cases_file.write_text(text)
        proc = subprocess.run([args.toolkit_python, __file__, "--toolkit", args.toolkit, "--toolkit-side",
                               "--cases-file", str(cases_file), "--data", args.data],
                              cwd=args.toolkit, capture_output=True, text=True, check=False)
        verdicts = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
        if proc.returncode or len(verdicts) != len(cases):
            sys.exit(f"toolkit side failed ({len(verdicts)}/{len(cases)} verdicts): {proc.stderr[-2000:]}")
        verdicts_file.write_text("".join(json.dumps(v) + "\n" for v in verdicts))
    agree: Counter = Counter()
    total: Counter = Counter()
    correct: Counter = Counter()
    shown: dict = defaultdict(list)
    for case, tk in tqdm(list(zip(cases, verdicts, strict=True)), desc="grade", unit="case"):
        name = case["benchmark"]
        row = rows[name][case["row"]]
        gold = raw_gold(name, row) if args.gold == "raw" or name == "math" else BENCHMARKS[name].gold(row)
        kind = TYPES[name]
        pred = answers.extract(case["output"], kind, grader="toolkit", benchmark=name)
        ours = answers.grade(pred, gold, kind, grader="toolkit", benchmark=name)
        total[name] += 1
        correct[name] += tk["correct"]
        if ours == tk["correct"]:
            agree[name] += 1
        else:
            shown[name].append((case["style"], case["output"][-80:], pred, tk["pred"], gold, tk["gt"], ours,
                                tk["correct"]))
    (folder / "disagreements.json").write_text(json.dumps(shown, indent=1, ensure_ascii=False))
    worst = 1.0
    for name in total:
        ratio = agree[name] / total[name]
        worst = min(worst, ratio)
        print(f"{name:14s} {agree[name]:5d}/{total[name]:5d} agree ({100 * ratio:.2f}%), "
              f"toolkit correct {correct[name]}")
        for d in shown[name][: args.show]:
            print("   ", d)
    print(f"cases and disagreements: {folder}")
    print(f"lowest agreement: {worst:.4f}")


if __name__ == "__main__":
    main()
