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
