"""Running the pipeline: locally through ``kfp.local``, or on a Kubeflow Pipelines endpoint (one run or a
schedule). The CLI's ``lightreasoner pipeline ...`` commands call these functions."""

from __future__ import annotations

import hashlib
import os
import re
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lightreasoner import parameters, stages
from lightreasoner.config import Config
from lightreasoner.errors import LightReasonerError, one_line, passthrough

from .lightreasoner_pipeline import COMPILED, PIPELINE_NAME, build_pipeline, compile_pipeline

TOKEN_ENV = "KFP_TOKEN"
_CRON_FIELD = re.compile(r"^(\*|\?|[0-9A-Za-z]+(-[0-9A-Za-z]+)?)(/[0-9]+)?(,(\*|[0-9A-Za-z]+(-[0-9A-Za-z]+)?)(/[0-9]+)?)*$")


def arguments_from_config(config: Config) -> dict[str, Any]:
    """Pipeline arguments equal to a config (the config-derived parameters, "not set" where it is empty,
    plus the whole config as ``config_yaml`` for the keys that are not parameters)."""
    return {**parameters.arguments_from_config(config), "config_yaml": parameters.full_yaml(config)}


def shard_list(num_shards: int) -> list[int]:
    if num_shards < 1:
        raise LightReasonerError(f"num_shards={num_shards}: must be at least 1")
    return list(range(num_shards))


def parse_params(items: list[str] | None) -> dict[str, Any]:
    """``--param name=value`` pairs, checked against the pipeline's parameters and converted to their
    declared types (``learning_rate=5e-05`` is a float, ``expert=...`` stays a string). The config
    parameters among them must also make a valid config together with the other defaults, so a bad
    value is refused here, before anything is uploaded."""
    if not items:
        return {}
    rows = parameters.by_name()
    params: dict[str, Any] = {}
    for item in items:
        if "=" not in item:
            raise LightReasonerError(f"--param {item!r}: expected name=value")
        name, raw = item.split("=", 1)
        if name == "num_shards":  # the friendly form of sampling_shards
            params["sampling_shards"] = shard_list(parameters.convert(name, raw, int))
            continue
        if name not in rows:
            raise LightReasonerError(f"--param {name!r}: unknown pipeline parameter")
        params[name] = parameters.convert(name, raw, rows[name].type)
    if params.get("method", "lightreasoner") not in stages.METHODS:
        raise LightReasonerError(f"--param method={params['method']!r}: expected one of {', '.join(stages.METHODS)}")
    check_arguments(params)
    return params


def check_arguments(params: dict[str, Any]) -> Config:
    """The Config a run with these arguments (the rest at their defaults) will use; refuses invalid ones."""
    values = {**parameters.defaults(), **params}
    return parameters.config_from_settings(values.get("config_yaml", ""), parameters.settings_text(values),
                                           "--param")


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
        if passthrough(exc):
            raise
        raise LightReasonerError(f"{host}: cannot reach Kubeflow Pipelines ({one_line(exc, 200)})") from exc


def _package(package: str | None, image: str | None, hf_cache_pvc: str | None = None,
             timeouts: dict[str, int] | None = None) -> str:
    if package:
        if not Path(package).is_file():
            raise LightReasonerError(f"--package {package}: file not found")
        return package
    if image or hf_cache_pvc or timeouts:
        return str(compile_pipeline(Path(tempfile.mkdtemp()) / "lightreasoner_pipeline.yaml", image, hf_cache_pvc,
                                    timeouts))
    return str(COMPILED)


def package_version(path: str | Path) -> str:
    """The version name of a compiled package: its content's digest (same content, same version; the
    compile is byte-stable across processes, so an unchanged pipeline never becomes a new version)."""
    return "v-" + hashlib.sha256(Path(path).read_bytes()).hexdigest()[:16]


@dataclass
class PipelineVersion:
    pipeline_id: str
    version_id: str
    version_name: str
    uploaded: bool  # False: an identical package was already there


def ensure_pipeline_version(client, path: str, name: str = PIPELINE_NAME, namespace: str | None = None) -> PipelineVersion:
    """Upload the compiled package as pipeline ``name`` (created when missing) and as a new version of
    it when its content changed; an unchanged package reuses the version it was uploaded as."""
    version_name = package_version(path)
    pipeline_id = client.get_pipeline_id(name)
    if pipeline_id is None:
        pipeline = client.upload_pipeline(pipeline_package_path=path, pipeline_name=name,
                                          description="LightReasoner: contrastive sampling, LoRA, evaluation, registry",
                                          namespace=namespace)
        pipeline_id = pipeline.pipeline_id
    token = ""
    while True:  # look for a version with this content's name
        page = client.list_pipeline_versions(pipeline_id=pipeline_id, page_token=token, page_size=100)
        for version in getattr(page, "pipeline_versions", None) or []:
            if version.display_name == version_name:
                return PipelineVersion(pipeline_id, version.pipeline_version_id, version_name, False)
        token = getattr(page, "next_page_token", None) or ""
        if not token:
            break
    version = client.upload_pipeline_version(pipeline_package_path=path, pipeline_version_name=version_name,
                                             pipeline_id=pipeline_id)
    return PipelineVersion(pipeline_id, version.pipeline_version_id, version_name, True)


def submit(host: str, params: dict[str, Any], *, experiment: str = "lightreasoner", run_name: str | None = None,
           namespace: str | None = None, token: str | None = None, package: str | None = None,
           image: str | None = None, hf_cache_pvc: str | None = None, factory: Callable | None = None,
           timeouts: dict[str, int] | None = None) -> str:
    """One run of the pipeline's current version (uploaded first when new); returns the run id."""
    path = _package(package, image, hf_cache_pvc, timeouts)
    client = connect(host, token, namespace, factory)
    try:
        version = ensure_pipeline_version(client, path, namespace=namespace)
        exp = client.create_experiment(name=experiment, namespace=namespace)
        run = client.run_pipeline(
            experiment_id=exp.experiment_id,
            job_name=run_name or f"{PIPELINE_NAME}-{time.strftime('%Y%m%d-%H%M%S')}",
            params=params, pipeline_id=version.pipeline_id, version_id=version.version_id)
    except Exception as exc:  # noqa: BLE001
        if passthrough(exc):
            raise
        raise LightReasonerError(f"{host}: submitting the run failed ({one_line(exc, 200)})") from exc
    return str(getattr(run, "run_id", run))


def schedule(host: str, cron: str, params: dict[str, Any], *, experiment: str = "lightreasoner",
             name: str = "lightreasoner-nightly", namespace: str | None = None, token: str | None = None,
             package: str | None = None, image: str | None = None, hf_cache_pvc: str | None = None,
             max_concurrency: int = 1, factory: Callable | None = None,
             timeouts: dict[str, int] | None = None) -> str:
    """A recurring run of the pipeline's current version in ``experiment``; returns the recurring run id.
    One schedule per name: a rerun (a Helm upgrade) replaces it instead of adding a second one."""
    cron6 = normalise_cron(cron)
    path = _package(package, image, hf_cache_pvc, timeouts)
    client = connect(host, token, namespace, factory)
    try:
        version = ensure_pipeline_version(client, path, namespace=namespace)
        exp = client.create_experiment(name=experiment, namespace=namespace)
        listing = client.list_recurring_runs(experiment_id=exp.experiment_id, page_size=200)
        for old in getattr(listing, "recurring_runs", None) or []:
            if old.display_name == name:
                client.delete_recurring_run(old.recurring_run_id)
        job = client.create_recurring_run(
            experiment_id=exp.experiment_id, job_name=name, cron_expression=cron6, params=params,
            pipeline_id=version.pipeline_id, version_id=version.version_id, max_concurrency=max_concurrency,
            no_catchup=True)
    except Exception as exc:  # noqa: BLE001
        if passthrough(exc):
            raise
        raise LightReasonerError(f"{host}: creating the schedule failed ({one_line(exc, 200)})") from exc
    return str(getattr(job, "recurring_run_id", job))


def unschedule(host: str, *, experiment: str = "lightreasoner", name: str = "lightreasoner-nightly",
               namespace: str | None = None, token: str | None = None, factory: Callable | None = None) -> int:
    """Delete the recurring runs named ``name`` in ``experiment`` (the chart's pre-delete hook); returns how
    many. Nothing to delete (no such experiment or recurring run) is not an error: uninstall goes on."""
    client = connect(host, token, namespace, factory)
    try:
        try:
            exp = client.get_experiment(experiment_name=experiment, namespace=namespace)
        except ValueError:  # kfp: "No experiment is found with name ..."
            return 0
        deleted, page = 0, ""
        while True:
            listing = client.list_recurring_runs(experiment_id=exp.experiment_id, page_size=200, page_token=page)
            for old in getattr(listing, "recurring_runs", None) or []:
                if old.display_name == name:
                    client.delete_recurring_run(old.recurring_run_id)
                    deleted += 1
            page = getattr(listing, "next_page_token", None) or ""
            if not page:
                return deleted
    except Exception as exc:  # noqa: BLE001
        if passthrough(exc):
            raise
        raise LightReasonerError(f"{host}: deleting the schedule failed ({one_line(exc, 200)})") from exc


@dataclass
class LocalRun:
    root: Path
    outputs: dict[str, Path]  # task/output name -> local folder
    tracking_uri: str | None = None  # where its MLflow runs are (None: tracking off)


def run_local(config: Config | None, workdir: str | Path, *, shards: int = 1, promote: bool = True,
              method: str = "lightreasoner", params: dict[str, Any] | None = None, cache: bool = False) -> LocalRun:
    """The same pipeline end to end through ``kfp.local`` (SubprocessRunner, this environment);
    ``method``: lightreasoner, sft or both (the pipeline's ``dsl.If`` branches, which kfp.local runs).

    The arguments are the pipeline's defaults, then ``config``'s values (None: none), then ``params``.
    ``cache``: kfp.local's task cache (under the workdir), so a rerun reuses the pure steps' outputs.
    The tracking URI is always passed explicitly (the components refuse to guess one): the config's, else
    ``MLFLOW_TRACKING_URI``, else a store of this run's own, ``sqlite:///<workdir>/mlflow.db`` (artifacts in
    ``<workdir>/mlartifacts``); ``params`` may still set ``mlflow_tracking_uri``."""
    from kfp import local

    from lightreasoner import tracking

    if method not in stages.METHODS:
        raise LightReasonerError(f"method {method!r}: expected one of {', '.join(stages.METHODS)}")
    workdir = Path(workdir).resolve()
    root = workdir / "kfp"
    root.mkdir(parents=True, exist_ok=True)
    args = arguments_from_config(config) if config is not None else {}
    enabled = config.tracking.enabled if config is not None else True
    if enabled:
        explicit = (config.tracking.tracking_uri if config is not None else None) or tracking.env_tracking_uri()
        args["mlflow_tracking_uri"] = explicit or f"sqlite:///{workdir / 'mlflow.db'}"
    args.update(sampling_shards=shard_list(shards), promote=promote, method=method, **(params or {}))
    used = check_arguments(args)
    local.init(runner=local.SubprocessRunner(use_venv=False), pipeline_root=str(root), raise_on_error=True,
               enable_caching=cache, cache_root=str(workdir / "kfp-cache"))
    before = set(root.iterdir())
    pipeline = build_pipeline(kubernetes=False)
    try:
        pipeline(**args)
    except RuntimeError as exc:
        raise LightReasonerError(f"local pipeline run failed ({one_line(exc, 200)}); logs above") from exc
    runs = sorted(set(root.iterdir()) - before, key=lambda p: p.stat().st_mtime)
    if not runs:
        raise LightReasonerError(f"{root}: the local run left no output")
    run_dir = runs[-1]
    outputs = {f"{p.parent.name}/{p.name}": p for p in run_dir.glob("*/*") if p.is_dir()}
    return LocalRun(run_dir, outputs, tracking.tracking_uri(used) if used.tracking.enabled else None)
