"""MLflow tracking: one parent run per pipeline run, one nested child run per stage.

Every stage writes its output folder (manifest last); :func:`log_stage` reads that folder and logs

* params: the full config of the stage's manifest, flattened (``sampling.alpha``), secret-looking keys
  dropped and URL passwords masked (:func:`redact`);
* metrics, named ``<stage>/<name>`` (also copied to the parent run so the runs table compares them):
  sampling problems, steps, kept_steps, kept_fraction, mean_kl, median_kl, effective_beta,
  problems_per_second; training loss per step, final_loss, tuned_tokens, wall_seconds; evaluation
  accuracy_base, accuracy_tuned, delta, delta_ci_low, delta_ci_high, mcnemar_p;
* artifacts: the manifest (redacted copy), samples, adapter, predictions and plots (KL histogram of the
  candidate steps with the beta line, kept fraction per problem, loss curve, accuracy bars), the plots
  also on the parent run (side-by-side comparison of pipeline runs); the evaluation's per-problem and
  per-benchmark tables as MLflow tables (``tables/problems.json``, ``tables/benchmarks.json``);
* tags: package version, git commit (``LIGHTREASONER_GIT_COMMIT`` or the source checkout), image
  (``LIGHTREASONER_IMAGE``), Kubeflow run id (``KFP_RUN_ID`` / ``LIGHTREASONER_KFP_RUN_ID``).

Tracking URI: ``tracking.tracking_uri``, else ``MLFLOW_TRACKING_URI``, else the embedded default
``sqlite:///<workdir>/mlflow.db`` with artifacts in ``<workdir>/mlartifacts`` (:func:`ui_command` gives
the ``mlflow ui`` command that browses it). The embedded default is for ``lightreasoner run`` and
``pipeline run-local`` on one machine; a Kubeflow component refuses to start without a URI
(:func:`require_uri`). Every client gets the URI explicitly (MLflow's public API only); the fluent API
(``mlflow.start_run``) is pointed at it for a stage's duration and restored afterwards, environment
included (:func:`_scoped_tracking_uri`).

Every process the project starts calls :func:`configure_process` first: MLflow's telemetry off and a
bounded HTTP retry budget (:data:`MLFLOW_HTTP_DEFAULTS`, each overridable by its environment variable),
so a dead tracking server fails a step in about a minute instead of hanging it. With an ``s3://`` artifact location (the server's default
artifact root or ``tracking.artifact_location``) artifacts are written with :mod:`lightreasoner.storage`
(verified, manifest last).
"""

from __future__ import annotations

import functools
import json
import logging
import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from . import __version__, storage
from .config import Config
from .errors import LightReasonerError, one_line
from .outputs import MANIFEST
from .records import LOSS_PLOT, READERS, StageInput, StageRecord, number, prepare_inputs
from .redaction import clean_tags, has_url_password, redact, redact_text
from .stages import GRAPH, LIGHTREASONER
from .stages import STAGES as GRAPH_STAGES

log = logging.getLogger(__name__)

STAGES = tuple(stage.name for stage in GRAPH)
PARENT_ENV = "LIGHTREASONER_PARENT_RUN_ID"
MAX_PARAM_VALUE = 6000
def flatten(data: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in data.items():
        name = f"{prefix}.{key}" if prefix else str(key)
        if isinstance(value, Mapping) and value:
            out.update(flatten(value, name))
        else:
            out[name] = value
    return out


def _param_value(value: Any) -> str:
    text = value if isinstance(value, str) else json.dumps(value, default=str)
    return text if len(text) <= MAX_PARAM_VALUE else text[: MAX_PARAM_VALUE - 3] + "..."


def config_params(config: Config | Mapping[str, Any]) -> dict[str, str]:
    """The full config, flattened, redacted, as MLflow param strings."""
    data = config.dump() if isinstance(config, Config) else dict(config)
    return {k: _param_value(v) for k, v in flatten(redact(data)).items()}


# --- environment tags -------------------------------------------------------------------------------


def git_commit() -> str | None:
    commit = os.environ.get("LIGHTREASONER_GIT_COMMIT") or os.environ.get("GIT_COMMIT")
    return commit.strip() if commit else _checkout_commit()


@functools.lru_cache(maxsize=1)
def _checkout_commit() -> str | None:
    source = Path(__file__).resolve().parent.parent
    if not (source / ".git").exists():
        return None
    try:
        out = subprocess.run(["git", "-C", str(source), "rev-parse", "HEAD"], capture_output=True, text=True,
                             timeout=5, check=False)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None if out.returncode == 0 else None


def run_tags() -> dict[str, str]:
    """Tags of every run: package version, git commit, image, Kubeflow run id (when known)."""
    tags = {"lightreasoner.version": __version__}
    commit = git_commit()
    if commit:
        tags["lightreasoner.git_commit"] = commit
        tags["mlflow.source.git.commit"] = commit
    image = os.environ.get("LIGHTREASONER_IMAGE")
    if image:
        tags["lightreasoner.image"] = image
    kfp = os.environ.get("LIGHTREASONER_KFP_RUN_ID") or os.environ.get("KFP_RUN_ID")
    if kfp:
        tags["kubeflow.run_id"] = kfp
    pod = os.environ.get("KFP_POD_NAME")
    if pod:
        tags["kubeflow.pod"] = pod
    return clean_tags(tags)


# --- tracking URI -----------------------------------------------------------------------------------


# --- process settings -------------------------------------------------------------------------------

# MLflow's HTTP client, unless the environment already sets them: 3 retries after 0, 2 and 4 s (plus up
# to 1 s jitter each), 30 s per request. A dead server (connection refused) fails a call in about 10 s, a
# hung one in about 2 minutes; MLflow's own defaults (7 retries, factor 2, 120 s) take 4 to 20 minutes.
MLFLOW_HTTP_DEFAULTS = {
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "3",
    "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
    "MLFLOW_HTTP_REQUEST_BACKOFF_JITTER": "1",
    "MLFLOW_HTTP_REQUEST_TIMEOUT": "30",
}
# MLflow's usage telemetry: off (clusters are often offline; its thread also edits os.environ).
TELEMETRY_OFF = {"MLFLOW_DISABLE_TELEMETRY": "true", "DO_NOT_TRACK": "true"}
# Seconds ``register`` waits for a new model version to become READY (MLflow's default: 300).
MODEL_VERSION_WAIT = 60
ENV_URI = "MLFLOW_TRACKING_URI"
_pinned: list[str | None] = []  # MLFLOW_TRACKING_URI as the entry point found it (see pinned_tracking_uri)


def configure_process() -> None:
    """What every entry point (the CLI, each Kubeflow component) does first, before MLflow is imported:
    telemetry off and MLflow's bounded HTTP retries, each unless the environment sets it already."""
    for name, value in {**TELEMETRY_OFF, **MLFLOW_HTTP_DEFAULTS}.items():
        os.environ.setdefault(name, value)


@contextmanager
def pinned_tracking_uri() -> Iterator[str | None]:
    """``MLFLOW_TRACKING_URI`` read once, at the entry point: inside the block every URI resolution uses
    that value, whatever changes the variable meanwhile. Yields it (None when unset)."""
    _pinned.append(os.environ.get(ENV_URI) or None)
    try:
        yield _pinned[-1]
    finally:
        _pinned.pop()


def env_tracking_uri() -> str | None:
    """``MLFLOW_TRACKING_URI``: the value pinned by the entry point, else the environment's now."""
    return _pinned[-1] if _pinned else os.environ.get(ENV_URI) or None


def _workdir(config: Config) -> Path:
    return Path(config.tracking.workdir).expanduser().resolve()


def tracking_uri(config: Config) -> str:
    """``tracking.tracking_uri``, else ``MLFLOW_TRACKING_URI``, else ``sqlite:///<workdir>/mlflow.db``."""
    uri = config.tracking.tracking_uri or env_tracking_uri()
    if uri:
        return uri
    return f"sqlite:///{_workdir(config) / 'mlflow.db'}"


def is_embedded(config: Config) -> bool:
    return not (config.tracking.tracking_uri or env_tracking_uri())


NO_URI = ("no MLflow tracking URI: set the pipeline parameter mlflow_tracking_uri or the environment variable "
          "MLFLOW_TRACKING_URI (e.g. in the lightreasoner-mlflow Secret), or turn tracking off "
          "(tracking.enabled=false)")


def require_uri(config: Config) -> Config:
    """A Kubeflow component's config with the tracking URI resolved once and written in (``tracking_uri``);
    refuses (one line naming both places to set it) when tracking is on and neither gives a URI: the
    embedded sqlite store inside a pod would lose every run."""
    if not config.tracking.enabled:
        return config
    if is_embedded(config):
        raise LightReasonerError(NO_URI)
    if config.tracking.tracking_uri:
        return config
    config = config.model_copy(deep=True)
    config.tracking.tracking_uri = tracking_uri(config)
    return config


def default_run_name(method: str = "lightreasoner", when: float | None = None) -> str:
    """The parent run's name when none is given: ``<method>-<YYYYmmdd-HHMMSS>`` (UTC)."""
    return f"{method}-{time.strftime('%Y%m%d-%H%M%S', time.gmtime(when))}"


def artifact_location(config: Config) -> str | None:
    """Where a new experiment keeps its artifacts: the configured one, else ``<workdir>/mlartifacts`` for
    the embedded store, else the tracking server's default artifact root (None)."""
    if getattr(config.tracking, "artifact_location", None):
        return config.tracking.artifact_location
    if is_embedded(config):
        return (_workdir(config) / "mlartifacts").as_uri()
    uri = tracking_uri(config)
    if uri.startswith("sqlite:///"):
        # Any local sqlite store: artifacts beside the database, not in ./mlruns of whatever folder this runs in.
        return (Path(uri[len("sqlite:///"):]).resolve().parent / "mlartifacts").as_uri()
    return None


def ui_command(config: Config) -> str:
    """The exact command that browses the runs: ``mlflow ui`` for local stores, the server URL otherwise."""
    uri = tracking_uri(config)
    if is_embedded(config):
        return f"mlflow ui --backend-store-uri {uri} --default-artifact-root {_workdir(config) / 'mlartifacts'}"
    return ui_command_for(uri)


def ui_command_for(uri: str) -> str:
    """``mlflow ui`` on a local store (a sqlite file: artifacts beside it, as :func:`artifact_location` puts
    them), else the server's URL (password masked)."""
    if uri.startswith(("http://", "https://")):
        return f"open {storage.safe_url(uri)} in a browser"
    cmd = f"mlflow ui --backend-store-uri {uri}"
    if uri.startswith("sqlite:///"):
        cmd += f" --default-artifact-root {Path(uri[len('sqlite:///'):]).resolve().parent / 'mlartifacts'}"
    return cmd


# --- client -----------------------------------------------------------------------------------------


@contextmanager
def mlflow_errors(uri: str, action: str) -> Iterator[None]:
    """MLflow, HTTP and S3 failures -> one-line LightReasonerError naming the tracking URI."""
    from mlflow.exceptions import MlflowException
    from requests.exceptions import RequestException

    where = storage.safe_url(uri)
    try:
        with storage.s3_errors(where, action, store="artifact store: "):
            yield
    except LightReasonerError:
        raise
    except MlflowException as exc:
        raise LightReasonerError(f"{where}: {action} failed: {one_line(exc)}") from exc
    except (RequestException, ConnectionError, TimeoutError) as exc:
        raise LightReasonerError(f"{where}: {action} failed: tracking server unreachable ({type(exc).__name__})") from exc


def check_server(uri: str, timeout: float = 5.0) -> None:
    """Fail fast (one line) when an HTTP tracking server does not answer, before anything is logged."""
    if not uri.startswith(("http://", "https://")):
        return
    import requests

    try:
        requests.get(uri.rstrip("/") + "/health", timeout=timeout)
    except requests.RequestException as exc:
        raise LightReasonerError(
            f"{storage.safe_url(uri)}: MLflow tracking server is not reachable ({type(exc).__name__}); "
            "start it or set tracking.tracking_uri / MLFLOW_TRACKING_URI"
        ) from exc


def client_for(config: Config):
    """An MlflowClient on the configured tracking URI (checked to answer)."""
    from mlflow.tracking import MlflowClient

    uri = tracking_uri(config)
    if is_embedded(config):
        _workdir(config).mkdir(parents=True, exist_ok=True)
    if has_url_password(uri):
        # MLflow prints "View run ... at: <url>" with the URI's password in it: never print those links.
        os.environ["MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT"] = "true"
    check_server(uri)
    with mlflow_errors(uri, "connecting"):
        return MlflowClient(tracking_uri=uri, registry_uri=uri)


# MLflow 3's UI opens an experiment in its GenAI (traces) view unless it is tagged as model training.
EXPERIMENT_KIND_TAG = "mlflow.experimentKind"
EXPERIMENT_KIND = "custom_model_development"


def experiment_id(client, config: Config) -> str:
    """The id of ``tracking.experiment``, created when missing; tagged ``mlflow.experimentKind`` =
    ``custom_model_development`` (a kind someone set already is left alone)."""
    from mlflow.exceptions import MlflowException

    name = config.tracking.experiment
    with mlflow_errors(client.tracking_uri, f"experiment {name!r}"):
        exp = client.get_experiment_by_name(name)
        if exp is not None:
            if exp.lifecycle_stage == "deleted":
                raise LightReasonerError(f"tracking.experiment {name!r}: experiment is deleted (restore or rename)")
            if EXPERIMENT_KIND_TAG not in (exp.tags or {}):
                client.set_experiment_tag(exp.experiment_id, EXPERIMENT_KIND_TAG, EXPERIMENT_KIND)
            return exp.experiment_id
        try:
            return client.create_experiment(name, artifact_location=artifact_location(config),
                                            tags={EXPERIMENT_KIND_TAG: EXPERIMENT_KIND})
        except MlflowException as exc:
            if "already exists" not in str(exc).lower() and "RESOURCE_ALREADY_EXISTS" not in str(exc.error_code):
                raise
            return client.get_experiment_by_name(name).experiment_id


# --- artifacts --------------------------------------------------------------------------------------


def log_artifact(client, run, local: str | Path, artifact_path: str | None = None, *,
                 last: str = MANIFEST) -> None:
    """A file or folder into a run's artifacts; s3:// artifact roots go through lightreasoner.storage
    (verified uploads, ``last`` uploaded after everything else)."""
    local = Path(local)
    root = run.info.artifact_uri
    if storage.is_s3(root):
        target = storage.join(root, artifact_path or "")
        if local.is_dir():
            storage.upload_dir(local, target, last=last)
        else:
            storage.upload_file(local, storage.join(target, local.name))
        return
    with mlflow_errors(client.tracking_uri, "logging artifacts"):
        if local.is_dir():
            client.log_artifacts(run.info.run_id, str(local), artifact_path)
        else:
            client.log_artifact(run.info.run_id, str(local), artifact_path)


def download_artifact(client, run_id: str, path: str, dest: str | Path) -> Path:
    with mlflow_errors(client.tracking_uri, f"reading artifact {path} of run {run_id}"):
        run = client.get_run(run_id)
        root = run.info.artifact_uri
        if storage.is_s3(root):
            dest = Path(dest)
            dest.mkdir(parents=True, exist_ok=True)
            return storage.download_file(storage.join(root, path), dest)
        return Path(client.download_artifacts(run_id, path, str(dest)))


def _log_redacted_json(client, run, path: Path, artifact_path: str | None, tmp: Path) -> None:
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        raise LightReasonerError(f"{path}: not valid JSON") from None
    copy = tmp / path.name
    copy.write_text(json.dumps(redact(data), indent=2, sort_keys=True, default=str))
    log_artifact(client, run, copy, artifact_path)


# --- runs -------------------------------------------------------------------------------------------


def log_batch(client, run_id: str, params: Mapping[str, str] | None = None, metrics=None, tags=None) -> None:
    from mlflow.entities import Metric, Param, RunTag

    now = int(time.time() * 1000)
    p = [Param(k[:250], v) for k, v in (params or {}).items()]
    m = [Metric(k, float(v), now, step) for k, v, step in (metrics or [])]
    t = [RunTag(k, v) for k, v in clean_tags(tags or {}).items()]
    for i in range(0, max(len(p), len(m), len(t), 1), 100):  # MLflow's per-request limits
        client.log_batch(run_id, metrics=m[i : i + 100], params=p[i : i + 100], tags=t[i : i + 100])


KFP_RUN_TAG = "kfp.run_id"


def _pipeline_run_of(client, config: Config, kfp_run_id: str):
    """The parent run made for a Kubeflow run (tag ``kfp.run_id``), or None."""
    exp = client.get_experiment_by_name(config.tracking.experiment)
    if exp is None:
        return None
    found = client.search_runs([exp.experiment_id], max_results=1,
                               filter_string=f"tags.`{KFP_RUN_TAG}` = '{kfp_run_id}' and "
                                             "tags.`lightreasoner.kind` = 'pipeline'")
    return found[0] if found else None


def start_pipeline(config: Config, run_name: str | None = None, tags: Mapping[str, str] | None = None,
                   kfp_run_id: str | None = None) -> str | None:
    """Create the parent run of a pipeline run (params: the full config); returns its id (None when
    tracking is disabled). Stages nest under it with ``parent_run_id`` (or env LIGHTREASONER_PARENT_RUN_ID).
    With ``kfp_run_id`` the run is tagged with it and found again instead of doubled when Kubeflow
    retries the step that opens it."""
    if not config.tracking.enabled:
        return None
    client = client_for(config)
    uri = client.tracking_uri
    all_tags = {**run_tags(), "lightreasoner.kind": "pipeline", **(tags or {})}
    with mlflow_errors(uri, "starting the pipeline run"):
        exp = experiment_id(client, config)
        if kfp_run_id:
            all_tags[KFP_RUN_TAG] = kfp_run_id
            existing = _pipeline_run_of(client, config, kfp_run_id)
            if existing is not None:
                log.info("MLflow run %s (Kubeflow run %s) continues", existing.info.run_id, kfp_run_id)
                return existing.info.run_id
        run = client.create_run(exp, run_name=run_name, tags=clean_tags(all_tags))
        log_batch(client, run.info.run_id, params=config_params(config))
    log.info("MLflow run %s at %s", run.info.run_id, storage.safe_url(uri))
    return run.info.run_id


def end_pipeline(config: Config, run_id: str | None, status: str = "FINISHED") -> None:
    if not config.tracking.enabled or not run_id:
        return
    client = client_for(config)
    with mlflow_errors(client.tracking_uri, f"ending run {run_id}"):
        client.set_terminated(run_id, status)


def end_pipeline_for(config: Config, kfp_run_id: str, status: str) -> str | None:
    """End the parent run of Kubeflow run ``kfp_run_id`` with ``status`` (FINISHED or FAILED); returns its
    id, or None when tracking is off or no such run was opened (the run failed before it)."""
    if not config.tracking.enabled or not kfp_run_id:
        return None
    client = client_for(config)
    with mlflow_errors(client.tracking_uri, f"ending the run of Kubeflow run {kfp_run_id}"):
        run = _pipeline_run_of(client, config, kfp_run_id)
        if run is None:
            return None
        client.set_terminated(run.info.run_id, status)
    return run.info.run_id


@contextmanager
def pipeline_run(config: Config, run_name: str | None = None) -> Iterator[str | None]:
    """``with pipeline_run(cfg) as parent:`` ... the parent run ends FINISHED, or FAILED on an exception."""
    run_id = start_pipeline(config, run_name)
    try:
        yield run_id
    except BaseException:
        try:
            end_pipeline(config, run_id, "FAILED")
        except LightReasonerError as exc:  # the run's own error matters more than its bookkeeping
            log.warning("%s; the pipeline's own error follows", exc)
        raise
    end_pipeline(config, run_id, "FINISHED")


def start_stage_run(client, config: Config, stage: str, parent_run_id: str | None = None,
                    params: Mapping[str, str] | None = None, tags: Mapping[str, str] | None = None):
    """A child run named after the stage (nested under the parent when one is given). Returns the Run."""
    if stage not in STAGES:
        raise LightReasonerError(f"stage {stage!r}: expected one of {', '.join(STAGES)}")
    parent_run_id = parent_run_id or os.environ.get(PARENT_ENV) or None
    all_tags = {**run_tags(), "lightreasoner.stage": stage, **(tags or {})}
    with mlflow_errors(client.tracking_uri, f"starting the {stage} run"):
        if parent_run_id:
            parent = client.get_run(parent_run_id)
            all_tags["mlflow.parentRunId"] = parent_run_id
            exp = parent.info.experiment_id
        else:
            exp = experiment_id(client, config)
        run = client.create_run(exp, run_name=stage, tags=clean_tags(all_tags))
        log_batch(client, run.info.run_id, params=params or config_params(config))
    return run


@contextmanager
def _scoped_tracking_uri(uri: str) -> Iterator[None]:
    """MLflow's fluent API (start_run, log_input, system metrics) on ``uri`` for the duration; afterwards
    the previous URI and the ``MLFLOW_TRACKING_URI`` variable exactly as they were (``mlflow.set_tracking_uri``
    also writes the variable: a later stage in this process must still find the user's value, or none)."""
    import mlflow

    env_before = os.environ.get(ENV_URI)
    current = mlflow.get_tracking_uri()
    # The URI set in this process before (``mlflow.set_tracking_uri``), if any; None: MLflow followed the
    # variable (or its default) and must do so again afterwards, not stay pinned to what it resolved now.
    pinned = current if (mlflow.tracking.is_tracking_uri_set() and current != env_before) else None
    mlflow.set_tracking_uri(uri)
    try:
        yield
    finally:
        mlflow.set_tracking_uri(pinned)  # None unsets MLflow's own URI (and the variable, restored below)
        if env_before is None:
            os.environ.pop(ENV_URI, None)
        else:
            os.environ[ENV_URI] = env_before


def _end_failed_run(uri: str, stage: str, status: str, error: BaseException) -> None:
    """End the active stage run as FAILED (or KILLED) with the error as its tag; never raises, so the
    stage's own error stays the one the user sees (a server that is down only gets a warning)."""
    import mlflow

    run = mlflow.active_run()
    try:
        with mlflow_errors(uri, f"ending the failed {stage} run"):
            try:
                if run is not None and status == "FAILED":
                    mlflow.set_tag("lightreasoner.error", one_line(error))
            finally:
                mlflow.end_run(status)  # leaves the active-run stack even when the server does not answer
    except LightReasonerError as exc:
        log.warning("%s; the %s run %s stays RUNNING (the stage's own error follows)", exc, stage,
                    run.info.run_id if run else "?")
    except Exception as exc:  # noqa: BLE001 - never hide the stage's error behind the bookkeeping's
        log.warning("could not end the failed %s run (%s); the stage's own error follows", stage, one_line(exc))


@contextmanager
def stage_run(client, config: Config, stage: str, parent_run_id: str | None = None,
              params: Mapping[str, str] | None = None, tags: Mapping[str, str] | None = None,
              *, log_system_metrics: bool | None = None):
    """``with stage_run(client, cfg, "train", parent) as run:`` a stage's child run through MLflow's own
    lifecycle (``mlflow.start_run(parent_run_id=...)``, the active run inside the block).

    It ends FINISHED when the block completes; FAILED (KILLED on Ctrl-C) when it raises, with the error's
    first line as tag ``lightreasoner.error``. The block's exception is always the one re-raised: when
    the run cannot be ended (tracking server down), that is a warning, not a second error."""
    import mlflow

    if stage not in STAGES:
        raise LightReasonerError(f"stage {stage!r}: expected one of {', '.join(STAGES)}")
    parent_run_id = parent_run_id or os.environ.get(PARENT_ENV) or None
    uri = client.tracking_uri
    all_tags = {**run_tags(), "lightreasoner.stage": stage, **(tags or {})}
    with _scoped_tracking_uri(uri):
        with mlflow_errors(uri, f"starting the {stage} run"):
            exp = client.get_run(parent_run_id).info.experiment_id if parent_run_id else experiment_id(client, config)
            active = mlflow.start_run(experiment_id=exp, run_name=stage, parent_run_id=parent_run_id,
                                      nested=mlflow.active_run() is not None,
                                      tags=clean_tags(all_tags), log_system_metrics=log_system_metrics)
        try:
            with mlflow_errors(uri, f"logging the {stage} run"):
                log_batch(client, active.info.run_id, params=config_params(config) if params is None else params)
            yield active
        except BaseException as exc:
            _end_failed_run(uri, stage, "KILLED" if isinstance(exc, KeyboardInterrupt) else "FAILED", exc)
            raise
        with mlflow_errors(uri, f"ending the {stage} run"):
            mlflow.end_run("FINISHED")


def log_inputs(inputs: list[StageInput]) -> None:
    """Log data sets as inputs of the active run (``mlflow.log_input``): name, source, digest, context."""
    import warnings

    import mlflow
    from mlflow.data.code_dataset_source import CodeDatasetSource
    from mlflow.data.dataset_source_registry import resolve_dataset_source
    from mlflow.data.huggingface_dataset_source import HuggingFaceDatasetSource
    from mlflow.data.meta_dataset import MetaDataset

    for item in inputs:
        if item.hub:
            source = HuggingFaceDatasetSource(path=item.source, config_name=item.hf_config, split=item.split)
        elif item.source == "synthetic":
            source = CodeDatasetSource(tags={"generator": "lightreasoner.data.synthetic_problems",
                                             "split": str(item.split)})
        else:
            location = item.source if "://" in item.source else Path(item.source).resolve().as_uri()
            with warnings.catch_warnings():  # "can be interpreted in multiple ways": all of them local files
                warnings.simplefilter("ignore")
                source = resolve_dataset_source(redact_text(location))
        dataset = MetaDataset(source, name=item.name, digest=item.digest)
        tags = {"rows": str(item.rows)} if item.rows is not None else None
        mlflow.log_input(dataset, context=item.context, tags=tags)


def _stage_sections(config: Config | Mapping[str, Any], stage: str) -> dict[str, Any]:
    """The config sections a stage reads (its run's params); all of them for other stages."""
    data = config.dump() if isinstance(config, Config) else dict(config)
    sections = GRAPH_STAGES[stage].sections if stage in GRAPH_STAGES else None
    return {k: v for k, v in data.items() if k in sections} if sections else data


def log_stage(config: Config, stage: str, output: str | Path, parent_run_id: str | None = None,
              *, artifacts: bool = True) -> str | None:
    """Log one finished stage (its output folder, local or s3://) as a child run; returns the run id.

    ``stage``: prepare, sample, train or evaluate (register logs itself, see lightreasoner.registry).
    Params come from the manifest's config when it has one (what the stage really used), else ``config``.
    Returns None when tracking is disabled.
    """
    if not config.tracking.enabled:
        return None
    if stage not in READERS:
        raise LightReasonerError(f"stage {stage!r}: expected one of {', '.join(READERS)}")
    client = client_for(config)
    parent_run_id = parent_run_id or os.environ.get(PARENT_ENV) or None
    tmp = Path(tempfile.mkdtemp(prefix="lightreasoner-track-"))
    try:
        with storage.local_input(output) as folder:
            record = READERS[stage](Path(folder), tmp)
            with stage_run(client, config, stage, parent_run_id, params={}) as run:
                run_id = run.info.run_id
                _log_record(client, config, stage, record, run, parent_run_id, tmp, artifacts=artifacts)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    log.info("logged stage %s as MLflow run %s", stage, run_id)
    return run_id


def _log_record(client, config: Config, stage: str, record: StageRecord, run, parent_run_id: str | None,
                tmp: Path, *, artifacts: bool = True) -> None:
    """A stage's folder record into its (active) run: params, metrics (also on the parent), dataset
    inputs, artifacts."""
    run_id = run.info.run_id
    stage_config = record.config or config.dump()
    inputs = prepare_inputs(record, stage_config) if stage == "prepare" else record.inputs
    with mlflow_errors(client.tracking_uri, f"logging the {stage} run"):
        log_batch(client, run_id, params=config_params(_stage_sections(stage_config, stage)))
        series = [(k, v, 0) for k, v in record.metrics.items()] + record.steps
        # The step series (training loss) is not replayed into a run that streamed it live.
        own = series if not _streamed(client, run_id, record.steps) else series[: len(record.metrics)]
        log_batch(client, run_id, metrics=own)
        if parent_run_id:
            log_batch(client, parent_run_id, metrics=series)
        log_inputs(inputs)
        if artifacts:
            for path, artifact_path in record.files:
                log_artifact(client, run, path, artifact_path)
            for path, artifact_path in record.json_files:
                _log_redacted_json(client, run, path, artifact_path, tmp)
            _log_plots(client, run, stage, record.plots, parent_run_id, tmp)
            for artifact_file, table in record.tables:  # the UI's table view; mlflow.load_table reads them
                client.log_table(run_id, table, artifact_file)


FIRST_PLOT = "0_loss_curve.png"  # the loss curve heads a training run's artifact list (sorted by name)


def _log_plots(client, run, stage: str, plots: list[Path], parent_run_id: str | None, tmp: Path) -> None:
    """A stage's plots into its run (``plots/``; a training run's loss curve first, as ``0_loss_curve.png``)
    and into the pipeline run (``plots/``, ``plots/<stage>/`` for the SFT baseline's), so that two pipeline
    runs compare their plots side by side in the MLflow UI."""
    for plot in plots:
        if plot.name == LOSS_PLOT:
            first = tmp / "first" / FIRST_PLOT
            first.parent.mkdir(exist_ok=True)
            shutil.copyfile(plot, first)
            log_artifact(client, run, first)
        else:
            log_artifact(client, run, plot, "plots")
    if parent_run_id and plots:
        parent = client.get_run(parent_run_id)
        # the LightReasoner stages' plots at the top, the others' in a folder of their own
        lightreasoner = stage in GRAPH_STAGES and GRAPH_STAGES[stage].methods == LIGHTREASONER
        folder = "plots" if lightreasoner else f"plots/{stage}"
        for plot in plots:
            log_artifact(client, parent, plot, folder)


LIVE_KEYS = {"loss": "train/loss", "learning_rate": "train/learning_rate", "grad_norm": "train/grad_norm"}
MODEL_STAGES = tuple(stage.name for stage in GRAPH if stage.gpu_memory)  # the stages that load models


def live_training_callbacks(config: Config, run_id: str | None) -> list:
    """Transformers callbacks that stream the training loss, learning rate and grad norm to the MLflow run
    ``run_id`` as the trainer logs them (every ``training.logging_steps`` updates), so a run's progress is
    visible while it trains. A failed write is a warning: tracking never stops training. Empty when
    tracking is off."""
    if not config.tracking.enabled or not run_id:
        return []
    from transformers import TrainerCallback

    client = client_for(config)

    class LiveMetrics(TrainerCallback):
        def on_log(self, args, state, control, logs=None, **kwargs):
            points = [(LIVE_KEYS[k], float(v), int(state.global_step)) for k, v in (logs or {}).items()
                      if k in LIVE_KEYS and number(v) is not None]
            if points:
                try:
                    log_batch(client, run_id, metrics=points)
                except Exception as exc:  # noqa: BLE001 - a metric lost is better than a training lost
                    log.warning("MLflow: could not stream training metrics (%s)", one_line(exc))

    return [LiveMetrics()]


def _streamed(client, run_id: str, steps: list[tuple[str, float, int]]) -> bool:
    """True when the run already holds the step series (streamed live while the stage ran)."""
    keys = {k for k, _, _ in steps}
    return bool(keys) and keys <= set(client.get_run(run_id).data.metrics)


@contextmanager
def tracked_stage(config: Config, stage: str, output: str | Path, parent_run_id: str | None = None,
                  *, artifacts: bool = True) -> Iterator[str | None]:
    """``with tracked_stage(cfg, "train", out, parent): train(...)``: the stage runs inside its MLflow run
    (the active run, see :func:`stage_run`), then its output folder is logged into it like
    :func:`log_stage`. A stage that raises leaves its run FAILED, and its own error is the one raised.
    Yields the run id (None when tracking is disabled)."""
    if not config.tracking.enabled:
        yield None
        return
    if stage not in READERS:
        raise LightReasonerError(f"stage {stage!r}: expected one of {', '.join(READERS)}")
    client = client_for(config)
    parent_run_id = parent_run_id or os.environ.get(PARENT_ENV) or None
    # System metrics (CPU/GPU memory and utilisation) for the stages that run models.
    with stage_run(client, config, stage, parent_run_id, params={}, log_system_metrics=stage in MODEL_STAGES) as run:
        yield run.info.run_id
        tmp = Path(tempfile.mkdtemp(prefix="lightreasoner-track-"))
        try:
            with storage.local_input(output) as folder:
                record = READERS[stage](Path(folder), tmp)
                _log_record(client, config, stage, record, run, parent_run_id, tmp, artifacts=artifacts)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    log.info("logged stage %s as MLflow run %s", stage, run.info.run_id)
