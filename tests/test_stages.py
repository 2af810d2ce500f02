"""The stage graph is described once (lightreasoner.stages): the runner walks it, and the compiled Kubeflow
pipeline runs exactly the same stages for each method."""

import re

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
