"""Running the pipeline: locally through ``kfp.local``, or on a Kubeflow Pipelines endpoint (one run or a
schedule). The CLI's ``lightreasoner pipeline ...`` commands call these functions."""

from __future__ import annotations

import os
import re
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lightreasoner.config import Config, to_yaml
from lightreasoner.errors import LightReasonerError

from .lightreasoner_pipeline import COMPILED, PARAMETERS, PIPELINE_NAME, build_pipeline, compile_pipeline

TOKEN_ENV = "KFP_TOKEN"
_CRON_FIELD = re.compile(r"^(\*|\?|[0-9A-Za-z]+(-[0-9A-Za-z]+)?)(/[0-9]+)?(,(\*|[0-9A-Za-z]+(-[0-9A-Za-z]+)?)(/[0-9]+)?)*$")


def _get(config: Config, dotted: str) -> Any:
    node: Any = config
    for part in dotted.split("."):
        node = getattr(node, part)
    return node


def arguments_from_config(config: Config) -> dict[str, Any]:
    """Pipeline arguments equal to a config (None becomes the parameter's "not set": "" or 0)."""
    args: dict[str, Any] = {}
    for name, key in PARAMETERS.items():
        value = _get(config, key)
        if value is None:
            value = 0 if name in ("amateur_keep_layers", "num_problems", "eval_limit", "sft_num_problems") else ""
        args[name] = str(value) if name == "beta" else value
    args["config_yaml"] = to_yaml(config)
    return args


_KINDS = {"String": "STRING", "Integer": "NUMBER_INTEGER", "Float": "NUMBER_DOUBLE", "Boolean": "BOOLEAN",
          "Dict": "STRUCT", "List": "LIST"}


def parameter_types() -> dict[str, str]:
    """Pipeline parameter -> its kind (STRING, NUMBER_INTEGER, NUMBER_DOUBLE, BOOLEAN, STRUCT, LIST)."""
    inputs = build_pipeline(kubernetes=False).component_spec.inputs or {}
    return {name: _KINDS.get(spec.type, "STRING") for name, spec in inputs.items()}


def _convert(name: str, raw: str, kind: str) -> Any:
    import json

    try:
        if kind == "STRING":
            return raw
        if kind == "NUMBER_INTEGER":
            return int(raw)
        if kind == "NUMBER_DOUBLE":
            return float(raw)
        if kind == "BOOLEAN":
            if raw.lower() not in ("true", "false", "1", "0", "yes", "no"):
                raise ValueError(raw)
            return raw.lower() in ("true", "1", "yes")
        value = json.loads(raw)
        if not isinstance(value, dict if kind == "STRUCT" else list):
            raise ValueError(raw)
        return value
    except ValueError:
        expected = {"NUMBER_INTEGER": "an integer", "NUMBER_DOUBLE": "a number", "BOOLEAN": "true or false",
                    "STRUCT": "a JSON object", "LIST": "a JSON list"}[kind]
        raise LightReasonerError(f"--param {name}={raw!r}: expected {expected}") from None


def shard_list(num_shards: int) -> list[int]:
    if num_shards < 1:
        raise LightReasonerError(f"num_shards={num_shards}: must be at least 1")
    return list(range(num_shards))


def parse_params(items: list[str] | None) -> dict[str, Any]:
    """``--param name=value`` pairs, checked against the pipeline's parameters and converted to their
    declared types (``learning_rate=5e-05`` is a float, ``expert=...`` stays a string)."""
    if not items:
        return {}
    types = parameter_types()
    params: dict[str, Any] = {}
    for item in items:
        if "=" not in item:
            raise LightReasonerError(f"--param {item!r}: expected name=value")
        name, raw = item.split("=", 1)
        if name == "num_shards":  # the friendly form of sampling_shards
            params["sampling_shards"] = shard_list(_convert(name, raw, "NUMBER_INTEGER"))
            continue
        if name not in types:
            raise LightReasonerError(f"--param {name!r}: unknown pipeline parameter")
        params[name] = _convert(name, raw, types[name])
    return params


def normalise_cron(cron: str) -> str:
    """Five-field cron (as users write it) -> the six-field form Kubeflow's scheduler takes."""
    fields = cron.split()
    if len(fields) not in (5, 6) or not all(_CRON_FIELD.match(f) for f in fields):
        raise LightReasonerError(f"--cron {cron!r}: expected 5 fields like '0 3 * * *' (minute hour day month weekday)")
    return " ".join(["0", *fields]) if len(fields) == 5 else cron


def read_token(token_file: str | None) -> str | None:
    if token_file:
        path = Path(token_file)
        if not path.is_file():
            raise LightReasonerError(f"--token-file {token_file}: file not found")
        return path.read_text().strip() or None
    return os.environ.get(TOKEN_ENV) or None


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    reason = getattr(exc, "reason", None)
    if reason:
        text = " ".join(str(reason).split())
    return (text[:200] + "...") if len(text) > 200 else (text or type(exc).__name__)


def connect(host: str, token: str | None, namespace: str | None, factory: Callable | None = None):
    """A kfp.Client for ``host``; errors (unreachable, refused, unauthorised) become one line."""
    if not re.match(r"^https?://", host):
        raise LightReasonerError(f"--host {host!r}: expected an http(s):// URL")
    if factory is None:
        import kfp

        factory = kfp.Client
    import logging
    import warnings

    for name in ("urllib3", "urllib3.connectionpool"):  # retry chatter would bury the one-line error
        logging.getLogger(name).setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            return factory(host=host, existing_token=token, namespace=namespace or "kubeflow")
    except Exception as exc:  # noqa: BLE001
        raise LightReasonerError(f"{host}: cannot reach Kubeflow Pipelines ({_one_line(exc)})") from None


def _package(package: str | None, image: str | None) -> str:
    if package:
        if not Path(package).is_file():
            raise LightReasonerError(f"--package {package}: file not found")
        return package
    if image:
        return str(compile_pipeline(Path(tempfile.mkdtemp()) / "lightreasoner_pipeline.yaml", image))
    return str(COMPILED)


def submit(host: str, params: dict[str, Any], *, experiment: str = "lightreasoner", run_name: str | None = None,
           namespace: str | None = None, token: str | None = None, package: str | None = None,
           image: str | None = None, factory: Callable | None = None) -> str:
    """One run of the compiled pipeline; returns the run id."""
    client = connect(host, token, namespace, factory)
    path = _package(package, image)
    try:
        run = client.create_run_from_pipeline_package(
            pipeline_file=path, arguments=params, run_name=run_name or f"{PIPELINE_NAME}-{time.strftime('%Y%m%d-%H%M%S')}",
            experiment_name=experiment, namespace=namespace)
    except Exception as exc:  # noqa: BLE001
        raise LightReasonerError(f"{host}: submitting the run failed ({_one_line(exc)})") from None
    return str(getattr(run, "run_id", run))


def schedule(host: str, cron: str, params: dict[str, Any], *, experiment: str = "lightreasoner",
             name: str = "lightreasoner-nightly", namespace: str | None = None, token: str | None = None,
             package: str | None = None, image: str | None = None, max_concurrency: int = 1,
             factory: Callable | None = None) -> str:
    """A recurring run of the compiled pipeline in ``experiment``; returns the recurring run id."""
    cron6 = normalise_cron(cron)
    client = connect(host, token, namespace, factory)
    path = _package(package, image)
    try:
        exp = client.create_experiment(name=experiment, namespace=namespace)
        # One schedule per name: a re-run (a Helm upgrade) replaces it instead of adding a second one.
        listing = client.list_recurring_runs(experiment_id=exp.experiment_id, page_size=200)
        for old in getattr(listing, "recurring_runs", None) or []:
            if old.display_name == name:
                client.delete_recurring_run(old.recurring_run_id)
        job = client.create_recurring_run(
            experiment_id=exp.experiment_id, job_name=name, cron_expression=cron6, params=params,
            pipeline_package_path=path, max_concurrency=max_concurrency, no_catchup=True)
    except Exception as exc:  # noqa: BLE001
        raise LightReasonerError(f"{host}: creating the schedule failed ({_one_line(exc)})") from None
    return str(getattr(job, "recurring_run_id", job))


@dataclass
class LocalRun:
    root: Path
    outputs: dict[str, Path]  # task/output name -> local folder


def run_local(config: Config, workdir: str | Path, *, shards: int = 1, promote: bool = True,
              method: str = "lightreasoner") -> LocalRun:
    """The same pipeline end to end through ``kfp.local`` (SubprocessRunner, this environment);
    ``method``: lightreasoner, sft or both (the pipeline's ``dsl.If`` branches, which kfp.local runs)."""
    from kfp import local

    from lightreasoner import tracking

    from .lightreasoner_pipeline import METHODS

    if method not in METHODS:
        raise LightReasonerError(f"method {method!r}: expected one of {', '.join(METHODS)}")
    workdir = Path(workdir).resolve()
    root = workdir / "kfp"
    root.mkdir(parents=True, exist_ok=True)
    args = arguments_from_config(config)
    if config.tracking.enabled:
        args["mlflow_tracking_uri"] = tracking.tracking_uri(config)
    local.init(runner=local.SubprocessRunner(use_venv=False), pipeline_root=str(root), raise_on_error=True)
    before = set(root.iterdir())
    pipeline = build_pipeline(kubernetes=False)
    try:
        pipeline(**args, sampling_shards=shard_list(shards), promote=promote, method=method)
    except RuntimeError as exc:
        raise LightReasonerError(f"local pipeline run failed ({_one_line(exc)}); logs above") from None
    runs = sorted(set(root.iterdir()) - before, key=lambda p: p.stat().st_mtime)
    if not runs:
        raise LightReasonerError(f"{root}: the local run left no output")
    run_dir = runs[-1]
    outputs = {f"{p.parent.name}/{p.name}": p for p in run_dir.glob("*/*") if p.is_dir()}
    return LocalRun(run_dir, outputs)
