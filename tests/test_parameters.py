"""The pipeline's parameter table: one source for the signature, the settings, the chart and the defaults."""

from pathlib import Path

import pytest
import yaml
from lightreasoner.pipelines.lightreasoner_pipeline import COMPILED

from lightreasoner import parameters
from lightreasoner.config import load_config
from lightreasoner.errors import LightReasonerError

ROOT = Path(__file__).resolve().parents[1]
CHART = ROOT / "charts" / "lightreasoner"


def compiled_defaults() -> dict:
    ir = next(yaml.safe_load_all(COMPILED.read_text()))
    return {name: spec.get("defaultValue") for name, spec in ir["root"]["inputDefinitions"]["parameters"].items()}


def test_compiled_pipeline_defaults_are_the_table_and_make_a_valid_config():
    found = compiled_defaults()
    rows = parameters.by_name()
    assert set(found) == set(rows)
    values = {name: parameters.convert(name, found[name], rows[name].type) for name in found}
    assert values == parameters.defaults()
    cfg = parameters.config_from_settings(values["config_yaml"], parameters.settings_text(values))
    paper = parameters.paper_config()
    assert cfg.dump() == paper.dump()
    assert cfg.expert.model == "Qwen/Qwen2.5-Math-1.5B" and cfg.amateur.model == "Qwen/Qwen2.5-0.5B"
    assert cfg.sampling.alpha == 0.2 and cfg.sampling.beta == 0.4 and cfg.training.learning_rate == 5e-5


@pytest.mark.parametrize("path", sorted((ROOT / "configs").glob("*.yaml")), ids=lambda p: p.name)
def test_every_shipped_config_loads_and_round_trips_through_the_parameters(path):
    cfg = load_config(path)
    args = parameters.arguments_from_config(cfg)
    again = parameters.config_from_settings(parameters.full_yaml(cfg), parameters.settings_text(args))
    assert again.dump() == cfg.dump()


def test_a_config_with_empty_values_round_trips(tiny_models):
    cfg = load_config(None, [f"expert.model={tiny_models['llama']}", "amateur.keep_layers=1", "data.limit=null"])
    args = parameters.arguments_from_config(cfg)
    assert args["amateur"] == "" and args["num_problems"] == 0 and args["mlflow_tracking_uri"] == ""
    again = parameters.config_from_settings("", parameters.settings_text(args))
    assert again.dump() == cfg.dump()


def test_not_set_is_the_same_for_every_optional_key():
    for p in parameters.table():
        if p.optional:
            assert p.type in (str, int)
            if p.type is int:  # 0 means "not set": it must never be a real value of the key
                assert p.minimum is not None and p.minimum >= 1, p.name
    # The bug users met: the pipeline's "not set" for amateur_keep_layers reached the config as 0.
    cfg = parameters.config_from_settings("", "amateur_keep_layers=0\namateur=Qwen/Qwen2.5-0.5B\nnum_problems=0")
    assert cfg.amateur.keep_layers is None and cfg.data.limit is None
    with pytest.raises(LightReasonerError, match="set amateur.model or amateur.keep_layers"):
        parameters.config_from_settings("", "amateur_keep_layers=0\namateur=")


@pytest.mark.parametrize(
    "settings, message",
    [
        ("nope=1", "'nope=1' is not a config parameter"),
        ("method=sft", "is not a config parameter"),
        ("num_problems=many", "--param num_problems='many': expected an integer"),
        ("alpha=0", "sampling.alpha: Input should be greater than 0"),
        ("learning_rate=fast", "expected a number"),
    ],
)
def test_bad_settings_are_one_line(settings, message):
    with pytest.raises(LightReasonerError, match=message) as info:
        parameters.config_from_settings("", settings)
    assert "\n" not in str(info.value)


def test_each_stage_gets_only_its_sections():
    cfg = parameters.paper_config()
    changed = cfg.model_copy(deep=True)
    changed.evaluation.max_new_tokens = 1024
    changed.registry.max_p = 0.01
    for stage in ("prepare", "sample", "train", "sft"):
        assert parameters.stage_yaml(cfg, stage) == parameters.stage_yaml(changed, stage), stage
    assert parameters.stage_yaml(cfg, "evaluate") != parameters.stage_yaml(changed, "evaluate")
    assert set(yaml.safe_load(parameters.stage_yaml(cfg, "sample"))) == set(parameters.STAGE_SECTIONS["sample"])


def test_chart_values_and_schema_are_generated_from_the_table():
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    assert values["schedule"]["parameters"] == parameters.chart_values(), \
        "charts/lightreasoner/values.yaml is out of date: run python -m lightreasoner.parameters"
    import json

    schema = json.loads((CHART / "values.schema.json").read_text())
    assert schema["properties"]["schedule"]["properties"]["parameters"] == parameters.chart_schema(), \
        "charts/lightreasoner/values.schema.json is out of date: run python -m lightreasoner.parameters"


def test_chart_default_values_validate_against_their_schema():
    import jsonschema

    values = yaml.safe_load((CHART / "values.yaml").read_text())["schedule"]["parameters"]
    jsonschema.validate(values, parameters.chart_schema())
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate({**values, "no_such_parameter": 1}, parameters.chart_schema())
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate({**values, "num_problems": "many"}, parameters.chart_schema())
