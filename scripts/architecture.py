"""The architecture section of docs/architecture.md, generated from the code: each module of ``lightreasoner/`` with the
first sentence of its docstring, and the modules it imports (at the top or inside a function).

    python scripts/architecture.py            # print the section
    python scripts/architecture.py --update   # rewrite it in docs/architecture.md (a test checks it is current)
"""

from __future__ import annotations

import argparse
import ast
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "lightreasoner"
START, END = "<!-- architecture -->", "<!-- /architecture -->"
# The installed subpackages live in top-level folders of the repository.
SUBPACKAGES = {"components": ROOT / "components", "pipelines": ROOT / "pipelines"}

# The layers, lowest first: a module imports modules of its own layer or of a lower one, never of a higher
# one, and the imports (function-level ones included) form no cycle. A new module is added here (a test
# checks that every module is in exactly one layer).
LAYERS: list[tuple[str, str, tuple[str, ...]]] = [
    ("foundations", "errors, secrets, atomic files, statistics, answer grading, image pins",
     ("errors", "redaction", "outputs", "stats", "toolkit_grader", "answers", "images", "mlflow_model")),
    ("settings and storage", "the config, the stage graph, the pipeline parameters, local and s3:// files, plots",
     ("config", "stages", "parameters", "storage", "s3lock", "plots")),
    ("models and data", "loading models and adapters, prompts, problems and benchmarks, the prediction cache, the samples-file contract, the soft-label loss",
     ("models", "adapters", "protocols", "data", "benchmarks", "prediction_cache", "loss", "samples")),
    ("records", "what MLflow records of a stage, and MLflow itself",
     ("records", "tracking")),
    ("stages", "the stages; one imports another only for its data (tests/test_architecture.py)",
     ("trainer", "sampling", "training", "evaluation", "sft", "report", "presentation", "registry")),
    ("entry points", "the runner, the CLI, the cluster checks and the Kubeflow wrappers",
     ("runner", "doctor", "components", "pipelines", "pipelines.client", "pipelines.lightreasoner_pipeline",
      "cli")),
]


def _modules() -> dict[str, Path]:
    found = {p.stem: p for p in sorted(PACKAGE.glob("*.py")) if p.stem not in ("__init__", "__main__")}
    for name, folder in SUBPACKAGES.items():
        found[name] = folder / "__init__.py"
        found.update({f"{name}.{p.stem}": p for p in sorted(folder.glob("*.py")) if p.stem != "__init__"})
    return found


def _imports(path: Path, name: str, known: set[str]) -> set[str]:
    """The package's modules that ``path`` imports (relative or absolute, anywhere in it), itself left out."""
    package = name.split(".")[0] if (name in SUBPACKAGES or "." in name) else ""
    out: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            if node.level == 0:
                if not (node.module or "").startswith("lightreasoner"):
                    continue
                module = node.module[len("lightreasoner"):].lstrip(".")
            else:
                parts = package.split(".") if package else []
                parts = parts[: len(parts) - (node.level - 1)] if node.level > 1 else parts
                module = ".".join([*parts, node.module] if node.module else parts)
            candidates = [module] + [f"{module}.{a.name}".lstrip(".") for a in node.names]
            out.update(c for c in candidates if c in known)
        elif isinstance(node, ast.Import):
            out.update(a.name[len("lightreasoner."):] for a in node.names
                       if a.name.startswith("lightreasoner.") and a.name[len("lightreasoner."):] in known)
    out.discard(name)
    return out


def _summary(path: Path) -> str:
    doc = ast.get_docstring(ast.parse(path.read_text())) or ""
    first = " ".join(doc.split("\n\n")[0].split())
    match = re.match(r"(.+?\.)(\s|$)", first)
    return (match[1] if match else first).rstrip(".").replace("|", "\\|")


def graph() -> dict[str, set[str]]:
    modules = _modules()
    return {name: _imports(path, name, set(modules)) for name, path in modules.items()}


def layer_of() -> dict[str, int]:
    """module -> the index of its layer in :data:`LAYERS`."""
    return {module: i for i, (_, _, modules) in enumerate(LAYERS) for module in modules}


def cycle(edges: dict[str, set[str]]) -> list[str] | None:
    """One import cycle (``[a, b, ..., a]``), or None when the imports form a DAG."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for target in sorted(edges.get(node, ())):
            if state.get(target) == 1:
                return path[path.index(target):] + [target]
            if target not in state and (found := visit(target)):
                return found
        path.pop()
        state[node] = 2
        return None

    for node in sorted(edges):
        if node not in state and (found := visit(node)):
            return found
    return None


def violations() -> list[str]:
    """What breaks the layering: a module in no layer or in two, a layer naming no module, an import of a
    higher layer, an import cycle. Empty when the architecture holds."""
    edges, layers = graph(), layer_of()
    listed = [m for _, _, modules in LAYERS for m in modules]
    out = [f"{m}: in no layer of scripts/architecture.py LAYERS" for m in edges if m not in layers]
    out += [f"{m}: in two layers" for m in sorted({m for m in listed if listed.count(m) > 1})]
    out += [f"{m}: in LAYERS but no such module" for m in listed if m not in edges]
    for name, targets in edges.items():
        for target in sorted(targets):
            if name in layers and target in layers and layers[target] > layers[name]:
                out.append(f"{name} ({LAYERS[layers[name]][0]}) imports {target}, of a higher layer "
                           f"({LAYERS[layers[target]][0]})")
    found = cycle(edges)
    if found:
        out.append("import cycle: " + " -> ".join(found))
    return out


def section() -> str:
    modules, edges = _modules(), graph()
    lines = [START, "", "Generated by `python scripts/architecture.py --update` (a test checks it is current). An arrow",
             "is an import; `errors` (the one-line error every module raises) is left out of the drawing.", "",
             "```mermaid", "flowchart LR"]
    for name in modules:
        for target in sorted(edges[name] - {"errors"}):  # errors: imported by nearly every module
            lines.append(f"  {name.replace('.', '_')}[{name}] --> {target.replace('.', '_')}[{target}]")
    lines += ["```", "", "Layers, lowest first: a module imports only its own layer and lower ones, and the imports",
              "(function-level ones included) form no cycle (`LAYERS` in the script; a test checks both).", "",
              "| layer | what | modules |", "|---|---|---|"]
    for layer, what, members in LAYERS:
        lines.append(f"| {layer} | {what} | {', '.join(f'`{m}`' for m in members)} |")
    lines += ["", "| module | concern | imports |", "|---|---|---|"]
    for name, path in modules.items():
        deps = ", ".join(sorted(edges[name])) or "-"
        lines.append(f"| `{name}` | {_summary(path)} | {deps} |")
    lines += ["", END]
    return "\n".join(lines)


PAGE = ROOT / "docs" / "architecture.md"


def update(readme: Path = PAGE) -> bool:
    text = readme.read_text()
    start, end = text.index(START), text.index(END) + len(END)
    new = text[:start] + section() + text[end:]
    if new != text:
        readme.write_text(new)
    return new != text


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--update", action="store_true", help="rewrite the section in docs/architecture.md")
    args = parser.parse_args(argv)
    if args.update:
        print(f"{PAGE.relative_to(ROOT)} updated" if update() else f"{PAGE.relative_to(ROOT)} is current")
    else:
        print(section())
    return 0


if __name__ == "__main__":
    sys.exit(main())
