"""The architecture section of docs/architecture.md is generated from the imports, and the layering holds: the
shared foundations import no stage, no stage imports another stage only to reach a helper, every module sits in
one layer of ``LAYERS`` and imports none above it, and the imports form no cycle, function-level ones
included; the stage skeleton (claim the output folder, write the manifest) lives in ``outputs`` alone."""

import ast
import importlib.util
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
spec = importlib.util.spec_from_file_location("architecture", ROOT / "scripts" / "architecture.py")
architecture = importlib.util.module_from_spec(spec)
spec.loader.exec_module(architecture)

FOUNDATIONS = {"errors", "redaction", "outputs", "storage", "config", "stages", "plots", "images"}
STAGES = {"data", "sampling", "training", "evaluation", "sft", "registry", "report"}


def test_readme_architecture_is_current():
    page = (ROOT / "docs" / "architecture.md").read_text()
    assert architecture.section() in page, "run: python scripts/architecture.py --update"


def test_foundations_import_no_stage():
    edges = architecture.graph()
    for module in FOUNDATIONS:
        assert not edges[module] & (STAGES | {"tracking", "runner", "cli"}), module


def test_stages_import_another_stage_only_for_its_data():
    # training reads the samples' file format, sft reuses stage 2's trainer and the answer grading,
    # evaluation reads the samples' prompt settings, the registry and report read the stages' outputs.
    allowed = {"training": {"sampling"}, "sft": {"training", "evaluation", "data"},
               "evaluation": {"data"}, "sampling": {"data"}, "registry": set(), "report": {"evaluation"},
               "data": set()}
    edges = architecture.graph()
    for stage in STAGES:
        assert edges[stage] & STAGES <= allowed[stage], (stage, edges[stage] & STAGES)


def test_modules_keep_their_layers_and_form_no_cycle():
    assert architecture.violations() == []


def test_the_graph_reads_function_level_and_relative_imports(tmp_path):
    body = ("from . import storage\n"
            "def f():\n    from .config import Config\n    import lightreasoner.data\n"
            "    from lightreasoner import stages\n")
    path = tmp_path / "m.py"
    path.write_text(body)
    known = {"storage", "config", "data", "stages", "m"}
    assert architecture._imports(path, "m", known) == {"storage", "config", "data", "stages"}


def test_a_cycle_is_named_and_a_higher_layer_refused(monkeypatch):
    assert architecture.cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert architecture.cycle({"a": {"b"}, "b": set()}) is None
    edges = {name: set(targets) for name, targets in architecture.graph().items()}
    edges["errors"].add("cli")  # a foundation reaching the top: a higher layer and a cycle
    monkeypatch.setattr(architecture, "graph", lambda: edges)
    found = architecture.violations()
    assert "errors (foundations) imports cli, of a higher layer (entry points)" in found
    assert any(v.startswith("import cycle: ") for v in found)


# a call that may write or move a file: write_json_atomic, write_text, open, shutil.copyfile, replace, upload ...
WRITES = re.compile(r"write|dump|save|open|copy|move|replace|rename|upload", re.IGNORECASE)


def _names_manifest(node: ast.AST, aliases: set[str] = frozenset()) -> bool:
    """``node`` mentions the manifest: ``MANIFEST``, ``"manifest.json"`` or a name assigned from them."""
    return any((isinstance(n, ast.Name) and (n.id == "MANIFEST" or n.id in aliases))
               or (isinstance(n, ast.Attribute) and n.attr == "MANIFEST")
               or (isinstance(n, ast.Constant) and n.value == "manifest.json") for n in ast.walk(node))


FUNCTIONS = (ast.FunctionDef, ast.AsyncFunctionDef)


def _own_nodes(scope: ast.AST):
    """The nodes of a module or function, those of the functions defined in it left out (their own scope)."""
    for child in ast.iter_child_nodes(scope):
        if not isinstance(child, FUNCTIONS):
            yield child
            yield from _own_nodes(child)


def _skeleton_bypasses(source: str, where: str) -> list[str]:
    """Calls of ``claim_output`` and writes of the manifest (directly, or through a name assigned from it in
    the same function) outside :class:`lightreasoner.outputs.StageOutput`."""
    tree = ast.parse(source)
    found = []
    for scope in [tree, *(n for n in ast.walk(tree) if isinstance(n, FUNCTIONS))]:
        nodes = list(_own_nodes(scope))
        aliases = {t.id for a in nodes if isinstance(a, ast.Assign) and _names_manifest(a.value)
                   for t in a.targets if isinstance(t, ast.Name)}
        for call in (c for c in nodes if isinstance(c, ast.Call)):
            func = call.func
            name = func.id if isinstance(func, ast.Name) else func.attr if isinstance(func, ast.Attribute) else ""
            operands = [*call.args, *(k.value for k in call.keywords),
                        *([func.value] if isinstance(func, ast.Attribute) else [])]
            if name == "claim_output":
                found.append(f"{where}:{call.lineno}: calls claim_output")
            elif WRITES.search(name) and any(_names_manifest(o, aliases) for o in operands):
                found.append(f"{where}:{call.lineno}: {name}() writes the manifest")
    return sorted(set(found))


def test_only_outputs_claims_an_output_folder_or_writes_a_manifest():
    """Every stage function goes through outputs.StageOutput (prepare, claim, manifest last)."""
    found = []
    for path in sorted((ROOT / "lightreasoner").rglob("*.py")):
        if path != ROOT / "lightreasoner" / "outputs.py":
            found += _skeleton_bypasses(path.read_text(), str(path.relative_to(ROOT)))
    assert not found, "use lightreasoner.outputs.StageOutput (claim(), finish(manifest)) instead:\n" + "\n".join(found)


def test_the_skeleton_guard_sees_a_bypass():
    source = ("from .outputs import MANIFEST, claim_output, write_json_atomic\n"
              "def stage(out, claim, manifest):\n"
              "    claim_output(claim)\n"
              "    write_json_atomic(manifest, out / MANIFEST)\n"
              "def other(out, manifest):\n"
              "    (out / 'manifest.json').write_text('{}')\n"
              "    path = out / MANIFEST\n"
              "    path.write_text('{}')\n"
              "def reader(folder, path):\n"
              "    return (folder / MANIFEST).read_text(), path.write_text('{}')\n")
    assert _skeleton_bypasses(source, "m.py") == ["m.py:3: calls claim_output", "m.py:4: write_json_atomic() writes "
                                                  "the manifest", "m.py:6: write_text() writes the manifest",
                                                  "m.py:8: write_text() writes the manifest"]


def _calls(function: ast.AST) -> set[str]:
    """The names a function calls (``f(...)``, ``obj.f(...)``)."""
    return {c.func.id if isinstance(c.func, ast.Name) else c.func.attr for c in ast.walk(function)
            if isinstance(c, ast.Call) and isinstance(c.func, (ast.Name, ast.Attribute))}


def _builds_stage_output(source: str, name: str) -> bool:
    """The module function ``name``, or a function of the same module it calls (directly or through others),
    calls ``StageOutput``."""
    functions = {n.name: n for n in ast.walk(ast.parse(source)) if isinstance(n, FUNCTIONS)}
    seen, todo = set(), [name]
    while todo:
        current = todo.pop()
        if current in seen or current not in functions:
            continue
        seen.add(current)
        calls = _calls(functions[current])
        if "StageOutput" in calls:
            return True
        todo += sorted(calls & functions.keys())
    return False


def test_every_stage_that_writes_a_folder_runs_the_skeleton():
    """Every stage of the graph that writes an output folder (``Stage.folder``; register writes none) builds
    an outputs.StageOutput in its library function (``Stage.function``) or a function it calls."""
    from lightreasoner.stages import GRAPH

    missing = []
    for stage in GRAPH:
        if stage.folder is None:
            continue
        module, name = stage.function.split(":")
        source = (ROOT / "lightreasoner" / f"{module.replace('.', '/')}.py").read_text()
        if not _builds_stage_output(source, name):
            missing.append(f"{stage.name}: {stage.function}")
    assert not missing, "these stages do not run outputs.StageOutput:\n" + "\n".join(missing)
    assert {s.name for s in GRAPH if s.folder is None} == {"register"}


def test_the_stage_output_check_follows_calls_in_the_module():
    source = ("def stage(out):\n    return helper(out)\n"
              "def helper(out):\n    return StageOutput(out, stage='x', what='x')\n"
              "def bare(out):\n    other(out)\n    out.mkdir()\n"
              "def loop(out):\n    return loop(out)\n")
    assert _builds_stage_output(source, "stage") and _builds_stage_output(source, "helper")
    assert not _builds_stage_output(source, "bare") and not _builds_stage_output(source, "loop")
