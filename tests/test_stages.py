"""The stage graph is described once (lightreasoner.stages): the runner walks it, and the compiled Kubeflow
pipeline runs exactly the same stages for each method."""

import ast
import re
from pathlib import Path

import pytest
import yaml
from lightreasoner.pipelines.lightreasoner_pipeline import COMPILED

from lightreasoner import stages
from lightreasoner.errors import LightReasonerError


def test_plan_orders_every_stage_after_what_it_reads():
    for method in stages.METHODS:
        names = [s.name for s in stages.plan(method)]
        assert names[0] == "prepare"
        for position, stage in enumerate(stages.plan(method)):
            assert all(i in names[:position] for i in stage.inputs), (method, stage.name)
    assert [s.name for s in stages.plan("lightreasoner")] == ["prepare", "sample", "train", "evaluate", "register"]
    assert [s.name for s in stages.plan("sft")] == ["prepare", "sft", "evaluate_sft"]
    assert stages.plan("both")[-1].name == "report"
    with pytest.raises(LightReasonerError, match="--method 'rl': expected one of lightreasoner, sft, both"):
        stages.plan("rl")


def _condition_holds(condition: str | None, method: str) -> bool:
    if not condition:
        return True
    match = re.fullmatch(r"inputs\.parameter_values\['pipelinechannel--method'\] (==|!=) '(\w+)'", condition)
    assert match, condition
    return (method == match[2]) == (match[1] == "==")


def _stage_titles(spec: dict, method: str) -> set[str]:
    """Display names of the tasks the compiled pipeline runs for ``method`` (conditions evaluated)."""
    titles: set[str] = set()

    def walk(dag: dict) -> None:
        for task in dag["tasks"].values():
            if not _condition_holds(task.get("triggerPolicy", {}).get("condition"), method):
                continue
            titles.add(task["taskInfo"]["name"])
            component = spec["components"][task["componentRef"]["name"]]
            if "dag" in component:
                walk(component["dag"])

    walk(spec["root"]["dag"])
    return titles


@pytest.mark.parametrize("method", stages.METHODS)
def test_the_compiled_pipeline_runs_the_plan(method):
    spec = next(yaml.safe_load_all(COMPILED.read_text()))
    every = {s.title for s in stages.GRAPH}
    assert _stage_titles(spec, method) & every == {s.title for s in stages.plan(method)}


def test_the_runner_has_one_function_per_stage_of_the_graph():
    from lightreasoner import runner

    assert set(runner.RUNNERS) == set(stages.STAGES)


def test_each_stage_names_the_library_function_that_runs_it_and_the_runner_calls_it():
    """``Stage.function`` ("module:name" in the package) exists, and the runner imports exactly those."""
    import importlib

    from lightreasoner import runner

    imported = set()
    for node in ast.walk(ast.parse(Path(runner.__file__).read_text())):
        if isinstance(node, ast.ImportFrom) and node.level == 1:
            imported |= {f"{node.module}:{alias.name}" for alias in node.names}
        elif isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name):
            imported.add(f"{node.value.id}:{node.attr}")  # registry.register
    for stage in stages.GRAPH:
        module, name = stage.function.split(":")
        assert callable(getattr(importlib.import_module(f"lightreasoner.{module}"), name)), stage.name
        assert stage.function in imported, stage.name


def test_each_stage_that_writes_an_output_names_its_artifact():
    for stage in stages.GRAPH:
        assert (stage.output is None) == (stage.folder is None), stage.name


def test_configure_run_writes_one_settings_slice_per_stage_that_reads_sections():
    import typing

    import components

    outputs = typing.get_type_hints(components.configure_run)["return"]._fields
    assert outputs == ("parent_run_id", "full", *stages.SLICES)
    for stage in stages.GRAPH:
        if stage.sections is not None:  # every stage that reads sections gets a slice holding them
            assert stages.STAGES[stages.slice_of(stage.name)].sections == stage.sections


def test_the_fingerprints_cover_the_sections_a_stage_reads():
    """A stage's output fingerprint changes with every section it reads (SFT reads ``data`` too)."""
    from lightreasoner import parameters

    cfg = parameters.paper_config()
    changed = cfg.model_copy(deep=True)
    changed.data.limit = (cfg.data.limit or 10) + 1
    assert "data" in stages.STAGES["sft"].sections
    assert cfg.fingerprint(*stages.STAGES["sft"].sections) != changed.fingerprint(*stages.STAGES["sft"].sections)


ROOT = Path(__file__).resolve().parents[1]


def _collections(tree: ast.AST):
    """Every tuple, list and set literal and every call's positional arguments (``fingerprint("expert",
    "training")``) as elements, and every dict literal as (keys, values)."""
    for node in ast.walk(tree):
        if isinstance(node, (ast.Tuple, ast.List, ast.Set)):
            yield node, node.elts, None
        elif isinstance(node, ast.Call):
            yield node, node.args, None
        elif isinstance(node, ast.Dict):
            yield node, [k for k in node.keys if k is not None], node.values


def _text(node: ast.AST) -> str | None:
    return node.value if isinstance(node, ast.Constant) and isinstance(node.value, str) else None


def _second_lists(source: str, where: str) -> list[str]:
    """Literals in ``source`` that list three or more stage names (a tuple, list or set, or a dict of stage
    names to data) or only config sections. A dict from stage names to functions or task outputs (a
    dispatch table: the runner's RUNNERS, the records' READERS, the report's input folders) is allowed
    when every key is a stage."""
    from lightreasoner.config import Config

    names, sections = set(stages.STAGES), set(Config.model_fields)
    found = []
    for node, elements, values in _collections(ast.parse(source)):
        texts = [_text(e) for e in elements]
        at = f"{where}:{node.lineno}"
        named = {t for t in texts if t in names}
        table = values is not None and all(_text(v) is None and not isinstance(v, ast.Tuple) for v in values)
        if len(named) >= 3 and table:
            if not set(texts) <= names:
                found.append(f"{at}: a table keyed by stages with unknown keys {sorted(set(texts) - names)}")
            continue
        if len(named) >= 3:
            found.append(f"{at}: stage names {sorted(named)}")
        if len(texts) >= 2 and all(t in sections for t in texts):
            found.append(f"{at}: config sections {texts}")
    return found


def test_the_registry_is_the_only_list_of_stages_and_their_sections():
    """No second list: outside lightreasoner/stages.py, what a stage is and reads is derived from it."""
    found = []
    for folder in ("lightreasoner", "components", "pipelines"):
        for path in sorted((ROOT / folder).rglob("*.py")):
            if path != ROOT / "lightreasoner" / "stages.py":
                found += _second_lists(path.read_text(), str(path.relative_to(ROOT)))
    assert not found, "derive these from lightreasoner.stages instead:\n" + "\n".join(found)


def test_the_guard_sees_a_second_list():
    source = ("PURE = ('prepare', 'sample', 'train')\n"
              "SECTIONS = {'prepare': ('data',), 'sample': ('expert', 'data'), 'sft': ('expert', 'sft')}\n"
              "RUNNERS = {'prepare': run_prepare, 'sample': run_sample, 'train': run_train, 'tune': tune}\n"
              "ONE = ('sft', 'both')\n"
              "digest = config.fingerprint('expert', 'training')\n"
              "TABLE = {'prepare': prepare, 'sample': sample, 'train': train}\n")
    found = _second_lists(source, "m.py")
    assert {line.split(": ", 1)[1] for line in found} == {
        "stage names ['prepare', 'sample', 'train']", "stage names ['prepare', 'sample', 'sft']",
        "config sections ['expert', 'data']", "config sections ['expert', 'sft']",
        "config sections ['expert', 'training']",
        "a table keyed by stages with unknown keys ['tune']"}, found
