"""The architecture section of docs/architecture.md is generated from the imports, and the layering holds: the
shared foundations import no stage, no stage imports another stage only to reach a helper, every module sits in
one layer of ``LAYERS`` and imports none above it, and the imports form no cycle, function-level ones
included."""

import importlib.util
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
