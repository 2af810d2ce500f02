"""The architecture section of docs/architecture.md is generated from the imports, and the layering holds: the shared
foundations import no stage, and no stage imports another stage only to reach a helper."""

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
