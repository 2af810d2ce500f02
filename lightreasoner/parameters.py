"""The Kubeflow pipeline's parameters: one table, derived from the config models.

Every pipeline parameter is one row of :data:`TABLE`. A row that names a config key takes its type from
the config model's field and its default from the paper's config (``configs/paper-qwen2.5-math.yaml``,
shipped as ``lightreasoner.configs``); the other rows (the method branch, shards, Secret names, GPU
placement) are pipeline-only settings with their own type and default. The pipeline signature, the
settings the components receive, ``--param`` parsing, ``run-local``'s arguments and the Helm chart's
``schedule.parameters`` (values and schema) are all generated from this table or checked against it.

"Not set": a pipeline parameter cannot be null. For a config key whose value may be empty (None), the
empty value of the parameter's type means "not set" -- ``""`` for text, ``0`` for a count (every such
count must be at least 1, so 0 is never a real value; a test checks it) -- for every such key alike.

Each stage is handed only the config sections it reads (:data:`STAGE_SECTIONS`), so a setting of one
stage never enters another stage's cache key in Kubeflow.
"""

from __future__ import annotations

import json
import types
import typing
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel

from .config import Config, config_from_dict, load_config, load_config_text
from .errors import LightReasonerError
from .stages import METHODS, SLICES, STAGES

PAPER_CONFIG = "paper-qwen2.5-math.yaml"

# pipeline parameter -> config key (keep these names: schedules, the Helm chart and users pass them).
CONFIG_KEYS: dict[str, str] = {
    "expert": "expert.model",
    "amateur": "amateur.model",
    "amateur_keep_layers": "amateur.keep_layers",
    "dataset": "data.path",
    "dataset_split": "data.split",
    "num_problems": "data.limit",
    "system_prompt": "prompt.system_prompt",
    "alpha": "sampling.alpha",
    "beta": "sampling.beta",
    "max_new_tokens": "sampling.max_new_tokens",
    "skip_first_step": "sampling.skip_first_step",
    "sampling_batch_size": "sampling.batch_size",
    "sampling_decoding": "sampling.decoding",
    "sampling_seed": "sampling.seed",
    "lora_r": "training.lora_r",
    "lora_alpha": "training.lora_alpha",
    "learning_rate": "training.learning_rate",
    "epochs": "training.epochs",
    "max_steps": "training.max_steps",
    "train_batch_size": "training.batch_size",
    "samples_per_step": "training.samples_per_step",
    "sample_order": "training.sample_order",
    "gradient_accumulation_steps": "training.gradient_accumulation_steps",
    "lr_scheduler": "training.lr_scheduler",
    "warmup_ratio": "training.warmup_ratio",
    "holdout_fraction": "training.holdout_fraction",
    "eval_dataset": "evaluation.data.path",
    "eval_split": "evaluation.data.split",
    "eval_limit": "evaluation.data.limit",
    "eval_max_new_tokens": "evaluation.max_new_tokens",
    "eval_batch_size": "evaluation.batch_size",
    "eval_protocol": "evaluation.protocol",
    "eval_benchmarks": "evaluation.benchmarks",
    "eval_benchmark_dir": "evaluation.benchmark_dir",
    "eval_prediction_cache": "evaluation.prediction_cache",
    "eval_shards": "evaluation.shards",
    "registered_model": "registry.model_name",
    "min_delta": "registry.min_delta",
    "max_p": "registry.max_p",
    "mlflow_experiment": "tracking.experiment",
    "mlflow_tracking_uri": "tracking.tracking_uri",
    "sft_num_problems": "sft.num_problems",
    "sft_samples_per_problem": "sft.samples_per_problem",
    "sft_temperature": "sft.temperature",
    "sft_max_new_tokens": "sft.max_new_tokens",
}

# The config sections each settings slice holds (and so the only settings in its cache key): from the
# stage registry (lightreasoner.stages), one slice per stage that reads sections of its own.
STAGE_SECTIONS: dict[str, tuple[str, ...]] = {name: STAGES[name].sections for name in SLICES}


@dataclass(frozen=True)
class Parameter:
    name: str
    type: type  # str, int, float, bool, list or dict: the pipeline parameter's type
    default: Any
    description: str
    key: str | None = None  # the config key it sets; None: a pipeline-only setting
    optional: bool = False  # the config value may be empty: the type's empty value means "not set"
    minimum: float | None = None  # from the config field's ge/gt (for the chart's schema)
    exclusive_minimum: bool = False
    maximum: float | None = None
    choices: tuple[str, ...] | None = None
    numeric_text: bool = False  # text that may also be a number (beta: 0.4 or auto:0.15)


# Pipeline-only settings: not config keys.
PIPELINE_ONLY: tuple[Parameter, ...] = (
    Parameter("method", str, "lightreasoner", "lightreasoner, sft (the baseline alone) or both (and the "
              "efficiency report)", choices=METHODS),
    Parameter("promote", bool, True, "Try to promote the registered version to champion."),
    Parameter("sampling_shards", list, [0, 1, 2, 3], "One sampling pod per entry (`--param num_shards=N`)."),
    Parameter("config_yaml", str, "", "A whole config file as YAML text; the parameters above override it."),
    Parameter("run_name", str, "", "MLflow name of the pipeline's parent run; empty: <method>-<UTC date-time>."),
    Parameter("s3_secret", str, "lightreasoner-s3", "Secret with the S3 keys of the pipeline's pods."),
    Parameter("mlflow_secret", str, "lightreasoner-mlflow", "Secret with the MLflow URI/credentials (optional)."),
    Parameter("hf_token_secret", str, "lightreasoner-hf", "Secret with HF_TOKEN for gated models (optional)."),
    Parameter("gpu_node_selector", dict, {"nvidia.com/gpu.present": "true"}, "Node selector of the GPU steps."),
    Parameter("gpu_tolerations", list, [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}],
              "Tolerations of the GPU steps."),
)
# Pipeline-only settings that the chart sets from its own values, never from `schedule.parameters`.
CHART_MANAGED = ("s3_secret", "mlflow_secret", "hf_token_secret", "gpu_node_selector", "gpu_tolerations",
                 "config_yaml", "run_name", "sampling_shards")


def paper_config() -> Config:
    """The paper's setting, shipped with the package: the pipeline's defaults."""
    path = resources.files("lightreasoner.configs") / PAPER_CONFIG
    with resources.as_file(path) as file:
        return load_config(file)


def _field(key: str):
    """The pydantic FieldInfo of a dotted config key."""
    model: type[BaseModel] = Config
    parts = key.split(".")
    for part in parts[:-1]:
        model = typing.get_type_hints(model)[part]
    return model.model_fields[parts[-1]]


def _pipeline_type(annotation: Any) -> tuple[type, bool]:
    """A config field's annotation -> (pipeline parameter type, may be None)."""
    args = typing.get_args(annotation)
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        members = [a for a in args if a is not type(None)]
        kind = members[0] if len(members) == 1 else str  # several kinds (beta: float | "auto:F"): text
        return _pipeline_type(kind)[0], type(None) in args
    if origin is Literal and len(args) == 1 and args[0] == "auto":
        return str, False
    if origin is list:
        return list, False
    if origin is Literal:
        return str, False
    if annotation in (str, int, float, bool):
        return annotation, False
    raise TypeError(f"no pipeline type for {annotation!r}")


def _bounds(info) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for item in info.metadata:
        if getattr(item, "ge", None) is not None:
            out["minimum"] = item.ge
        if getattr(item, "gt", None) is not None:
            out["minimum"], out["exclusive_minimum"] = item.gt, True
        if getattr(item, "le", None) is not None:
            out["maximum"] = item.le
    if typing.get_origin(info.annotation) is Literal:
        out["choices"] = tuple(typing.get_args(info.annotation))
    return out


def _get(config: Config, key: str) -> Any:
    node: Any = config
    for part in key.split("."):
        node = getattr(node, part)
    return node


def unset_value(kind: type) -> Any:
    """The value of a parameter of type ``kind`` that means "not set"."""
    return {str: "", int: 0, float: 0.0}[kind]


def table(defaults: Config | None = None) -> list[Parameter]:
    """Every pipeline parameter: the config-derived ones (defaults from ``defaults``, else the paper's
    config), then the pipeline-only ones."""
    defaults = defaults if defaults is not None else paper_config()
    rows = []
    for name, key in CONFIG_KEYS.items():
        info = _field(key)
        kind, optional = _pipeline_type(info.annotation)
        value = _get(defaults, key)
        if value is None:
            value = unset_value(kind)
        elif kind is str:
            value = str(value)
        members = set(typing.get_args(info.annotation))
        rows.append(Parameter(name, kind, value, info.description or "", key=key, optional=optional,
                              numeric_text=kind is str and bool(members & {int, float}), **_bounds(info)))
    return rows + list(PIPELINE_ONLY)


def by_name(rows: list[Parameter] | None = None) -> dict[str, Parameter]:
    return {p.name: p for p in (rows if rows is not None else table())}


def defaults() -> dict[str, Any]:
    """Parameter name -> default (the compiled pipeline's defaults)."""
    return {p.name: p.default for p in table()}


def arguments_from_config(config: Config) -> dict[str, Any]:
    """The config-derived parameters' values equal to ``config`` ("not set" where it is empty)."""
    return {p.name: p.default for p in table(config) if p.key is not None}


def convert(name: str, raw: Any, kind: type) -> Any:
    """A parameter value as text (a ``--param``, a KFP-rendered value) -> its declared type."""
    if not isinstance(raw, str):
        raw = json.dumps(raw) if kind in (list, dict) else str(raw)
    try:
        if kind is str:
            return raw
        if kind is int:  # Kubeflow renders every number as a float ("28.0")
            number = float(raw)
            if not number.is_integer():
                raise ValueError(raw)
            return int(number)
        if kind is float:
            return float(raw)
        if kind is bool:
            if raw.lower() not in ("true", "false", "1", "0", "yes", "no"):
                raise ValueError(raw)
            return raw.lower() in ("true", "1", "yes")
        value = json.loads(raw)
        if not isinstance(value, kind):
            raise ValueError(raw)
        return value
    except ValueError:
        expected = {int: "an integer", float: "a number", bool: "true or false", dict: "a JSON object",
                    list: "a JSON list"}[kind]
        raise LightReasonerError(f"--param {name}={raw!r}: expected {expected}") from None


def settings_text(values: dict[str, Any]) -> str:
    """``name=value`` lines of the config-derived parameters (what the pipeline hands its first step;
    values may be KFP placeholders, which Kubeflow fills in at run time)."""
    def text(value: Any) -> str:  # a list or dict (a benchmark list) as JSON, what Kubeflow renders
        return json.dumps(value) if isinstance(value, list | dict) else str(value)

    return "\n".join(f"{name}={text(values[name])}" for name in CONFIG_KEYS if name in values)


def _set(data: dict[str, Any], key: str, value: Any) -> None:
    *parents, last = key.split(".")
    node = data
    for part in parents:
        child = node.get(part)
        if not isinstance(child, dict):
            child = node[part] = {}
        node = child
    node[last] = value


def config_from_settings(config_yaml: str, settings: str, source: str = "pipeline parameters") -> Config:
    """The one validated Config of a pipeline run: ``config_yaml`` (may be empty) with the ``name=value``
    lines of :func:`settings_text` on top. Unknown names, wrong types and invalid values: one line."""
    base = load_config_text(config_yaml, None, f"{source}: config_yaml").dump() if config_yaml.strip() else {}
    rows = by_name()
    data: dict[str, Any] = {}
    for line in settings.splitlines():
        if not line.strip():
            continue
        name, sep, raw = line.partition("=")
        row = rows.get(name.strip())
        if not sep or row is None or row.key is None:
            raise LightReasonerError(f"{source}: {line[:80]!r} is not a config parameter (name=value)")
        value = convert(row.name, raw, row.type)
        if row.optional and value == unset_value(row.type):
            value = None
        _set(data, row.key, value)
    merged = _merge(base, data)
    return config_from_dict(merged, source)


def _merge(base: dict[str, Any], top: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in top.items():
        out[key] = _merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def stage_yaml(config: Config, stage: str) -> str:
    """The sections ``stage`` reads, as YAML (the rest of the config stays at its defaults there)."""
    if stage not in STAGE_SECTIONS:
        raise LightReasonerError(f"stage {stage!r}: expected one of {', '.join(STAGE_SECTIONS)}")
    data = config.dump()
    return yaml.safe_dump({name: data[name] for name in STAGE_SECTIONS[stage]}, sort_keys=False)


def full_yaml(config: Config) -> str:
    return yaml.safe_dump(config.dump(), sort_keys=False)


# --- the Helm chart's schedule.parameters ------------------------------------------------------------


def chart_parameters() -> list[Parameter]:
    """The parameters a chart user sets under ``schedule.parameters`` (plus ``num_shards``)."""
    return [p for p in table() if p.name not in CHART_MANAGED]


def chart_values() -> dict[str, Any]:
    """``schedule.parameters`` of the chart's values.yaml: every chart parameter at its default."""
    values = {p.name: p.default for p in chart_parameters()}
    values["num_shards"] = len(by_name()["sampling_shards"].default)
    return values


def _schema(p: Parameter) -> dict[str, Any]:
    number = {"type": ["number", "string", "null"],
              "pattern": r"^-?[0-9]+(\.[0-9]*)?([eE][-+]?[0-9]+)?$",
              "description": f"{p.description} (a number; helm --set may pass it as a string)"}
    schema: dict[str, Any] = {
        str: {"type": ["string", "number", "null"] if p.numeric_text else ["string", "null"],
              "description": p.description},
        int: {"type": ["integer", "null"], "description": p.description},
        float: number,
        bool: {"type": ["boolean", "null"], "description": p.description},
        list: {"type": ["array", "null"], "description": p.description},
        dict: {"type": ["object", "null"], "description": p.description},
    }[p.type]
    if p.type in (int, float) and p.minimum is not None:
        floor = 0 if p.optional else p.minimum  # 0: "not set"
        key = "exclusiveMinimum" if p.exclusive_minimum and not p.optional else "minimum"
        schema[key] = floor
    if p.type in (int, float) and p.maximum is not None:
        schema["maximum"] = p.maximum
    if p.choices:
        schema["enum"] = [*p.choices, None]
    return schema


def chart_schema() -> dict[str, Any]:
    """JSON schema of ``schedule.parameters`` (values.schema.json holds it; a test keeps it current)."""
    props = {p.name: _schema(p) for p in chart_parameters()}
    props["num_shards"] = {"type": ["integer", "null"], "minimum": 1,
                           "description": "Sampling pods (sets sampling_shards to 0..N-1)."}
    for name in CHART_MANAGED:
        if name not in ("config_yaml", "run_name"):
            props[name] = {"not": {}, "description": "Set by the chart from its own values, not here."}
    return {"type": "object", "additionalProperties": False,
            "description": "Pipeline parameters passed as --param name=value (null: the pipeline's default).",
            "properties": props}


VALUES_BEGIN, VALUES_END = "    # <parameters: generated by lightreasoner.parameters>", "    # </parameters>"


def update_chart(chart: str | Path) -> None:
    """Write ``schedule.parameters`` into the chart's values.yaml (between the marker comments) and its
    schema into values.schema.json, from this table."""
    chart = Path(chart)
    values_path, schema_path = chart / "values.yaml", chart / "values.schema.json"
    text = values_path.read_text()
    if VALUES_BEGIN not in text or VALUES_END not in text:
        raise LightReasonerError(f"{values_path}: no {VALUES_BEGIN.strip()} ... {VALUES_END.strip()} block")
    head, rest = text.split(VALUES_BEGIN, 1)
    _, tail = rest.split(VALUES_END, 1)
    block = yaml.safe_dump({"parameters": chart_values()}, sort_keys=False, width=200)
    body = "\n".join("  " + line for line in block.splitlines())
    values_path.write_text(f"{head}{VALUES_BEGIN}\n{body}\n{VALUES_END}{tail}")
    schema = json.loads(schema_path.read_text())
    schema["properties"]["schedule"]["properties"]["parameters"] = chart_schema()
    schema_path.write_text(json.dumps(schema, indent=2) + "\n")


def main(argv: list[str] | None = None) -> int:
    import argparse

    parser = argparse.ArgumentParser(description="Regenerate the Helm chart's schedule.parameters and schema")
    parser.add_argument("--chart", default="charts/lightreasoner")
    args = parser.parse_args(argv)
    update_chart(args.chart)
    print(f"updated {args.chart}/values.yaml and values.schema.json")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
