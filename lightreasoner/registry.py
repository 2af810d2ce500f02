"""The MLflow model registry: register the tuned adapter, promote it, compare runs.

Flavour: **pyfunc wrapping the PEFT adapter folder** (:class:`lightreasoner.mlflow_model.AdapterModel`), not the transformers flavour.
The transformers flavour wants the base model's weights (or a hub lookup of them) at log time to build a
pipeline and infer its environment; offline, with a GGUF or local Expert, that fails or copies gigabytes.
The pyfunc model holds only the adapter (a few MB), its tokenizer and the Expert's identity (model id /
path, revision, sha256); ``load_context`` loads the Expert (``LIGHTREASONER_EXPERT_MODEL`` overrides where
it lives) and applies the adapter with peft; ``predict`` answers a column ``question`` (or a list of
strings) with greedy generation. ``mlflow.pyfunc.load_model("models:/NAME@champion")`` serves it.

A registered version carries lineage tags (expert, amateur, alpha, beta, effective beta, samples sha256,
data set, evaluation metrics, evaluation-set hash) and gets the alias ``challenger``; the register run keeps
the per-problem correctness (``evaluation/correctness.json``) that :func:`promote` compares.

Promotion rule (:func:`promote`): the challenger becomes ``champion`` when

* there is no champion: its own evaluation beats the base Expert: delta >= min_delta and McNemar p <= max_p;
* there is one: on the same evaluation problems (paired), accuracy(challenger) - accuracy(champion) >=
  min_delta and the exact McNemar p of the two versions' discordant problems <= max_p.

Every attempt is on the record (:func:`_record_decision`): the challenger version gets tags
``promotion.decision`` (promoted / refused), ``promotion.reason``, ``promotion.delta``, ``promotion.p_value``,
``promotion.compared_to`` and the decision as a sentence in its description; the register run and the
pipeline run above it get the decision and the version they produced (``lightreasoner.model_version``, a
link in their description). A version that loses ``challenger`` to a newer one is tagged ``superseded_by``.
The version's source run (its ``run_id``) is the pipeline run when there is one, so the pipeline run's page lists
it under "Registered models": the pyfunc model is logged into that run's artifacts (``model/``; MLflow's server
accepts a version source only inside its run's artifact root); the ``register`` run (tag
``lightreasoner.register_run`` on the version) keeps the evaluation and the training manifest.

The alias is set last, after every check; the champion is re-read just before (a concurrent promotion
makes the check run again) and promotions of one model are serialised on this machine by a file lock, so
concurrent calls leave exactly one champion that passed the rule. Running it twice changes nothing.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import logging
import os
import tempfile
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import __version__, storage, tracking
from .adapters import verify_adapter
from .config import Config
from .errors import LightReasonerError, passthrough
from .outputs import folder_sha256, read_input, read_json
from .presentation import format_value
from .redaction import redact, redact_text
from .stats import mcnemar_exact

log = logging.getLogger(__name__)

CHALLENGER = "challenger"
CHAMPION = "champion"
CORRECTNESS = "evaluation/correctness.json"
REGISTRATION_KEY = "lightreasoner.registration_key"
REGISTER_RUN = "lightreasoner.register_run"  # on a version: the register run (its evaluation/correctness.json)
# The decision of every promotion attempt, on the challenger version (public: users filter on these).
DECISION = "promotion.decision"            # promoted | refused
REASON = "promotion.reason"                # the one-line reason promote prints
DELTA = "promotion.delta"                  # paired delta against the champion (or the base Expert)
P_VALUE = "promotion.p_value"              # exact McNemar p of that comparison
COMPARED_TO = "promotion.compared_to"      # the champion version judged against, or "base expert"
SUPERSEDED_BY = "superseded_by"            # on a version that lost alias challenger: the version that took it
# On the pipeline (parent) run and the register run: the version they produced.
RUN_MODEL = "lightreasoner.registered_model"
RUN_VERSION = "lightreasoner.model_version"
RUN_MODEL_URI = "lightreasoner.model_uri"
NOTE = "mlflow.note.content"               # the run's description in the MLflow UI (markdown)
BASE_EXPERT = "base expert"
METRIC_KEYS = ("n", "accuracy_base", "accuracy_tuned", "delta", "delta_ci_low", "delta_ci_high", "mcnemar_p")


# --- inputs -----------------------------------------------------------------------------------------


def _data_name(data: Mapping[str, Any] | None) -> str:
    if not data:
        return "unknown"
    text = str(data.get("path", "unknown"))
    if data.get("split"):
        text += f":{data['split']}"
    if data.get("limit"):
        text += f"[:{data['limit']}]"
    return text


def read_correctness(evaluation: Path) -> dict[str, bool] | None:
    """problem_id -> correct of the tuned model, from predictions_tuned.parquet (None when absent)."""
    path = evaluation / "predictions_tuned.parquet"
    if not path.is_file():
        return None
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(path)
    except Exception as exc:  # noqa: BLE001 - a corrupt file is bad input
        if passthrough(exc):
            raise
        reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
        raise LightReasonerError(f"{path}: not a readable Parquet file ({reason})") from exc
    if "problem_id" not in table.column_names or "correct" not in table.column_names:
        raise LightReasonerError(f"{path}: expected columns problem_id and correct")
    ids, correct = table.column("problem_id").to_pylist(), table.column("correct").to_pylist()
    return {str(i): bool(c) for i, c in zip(ids, correct, strict=True)}


def eval_set_sha256(ids) -> str:
    return hashlib.sha256("\n".join(sorted(ids)).encode()).hexdigest()


def lineage_tags(train_manifest: Mapping[str, Any], metrics: Mapping[str, Any],
                 samples_manifest: Mapping[str, Any] | None, correctness: Mapping[str, bool] | None,
                 adapter_sha: str, training: str, evaluation: str) -> dict[str, str]:
    cfg = train_manifest.get("config") or {}
    expert_cfg, amateur_cfg, sampling = cfg.get("expert") or {}, cfg.get("amateur") or {}, cfg.get("sampling") or {}
    expert_info = train_manifest.get("expert") or {}
    eval_data = metrics.get("data")
    expert = expert_cfg.get("model") or expert_info.get("model") or "unknown"
    amateur = amateur_cfg.get("model") or (
        f"{expert} (first {amateur_cfg.get('keep_layers')} layers)" if amateur_cfg.get("keep_layers") else "unknown"
    )
    tags = {
        "lightreasoner.version": __version__,
        "expert": expert,
        "expert_sha256": expert_info.get("sha256") or "",
        "expert_revision": expert_info.get("revision") or "",
        "amateur": amateur,
        "alpha": sampling.get("alpha", "unknown"),
        "beta": sampling.get("beta", "unknown"),
        "effective_beta": (samples_manifest or {}).get("effective_beta", "unknown"),
        "samples_sha256": train_manifest.get("samples_sha256") or "unknown",
        "data": _data_name(cfg.get("data")),
        "eval_data": _data_name(eval_data) if isinstance(eval_data, dict) else str(eval_data or "unknown"),
        "adapter_sha256": adapter_sha,
        "training_output": training,
        "evaluation_output": evaluation,
        "training_steps": train_manifest.get("steps", ""),
        "final_loss": train_manifest.get("final_loss", ""),
    }
    for key in METRIC_KEYS:
        if metrics.get(key) is not None:
            tags[key] = metrics[key]
    if correctness is not None:
        tags["eval_set_sha256"] = eval_set_sha256(correctness)
    protocol = metrics.get("protocol")
    if isinstance(protocol, Mapping):  # evaluations are comparable only under the same protocol
        tags["eval_protocol"] = protocol.get("name") or ""
        tags["eval_protocol_sha256"] = protocol.get("sha256") or ""
    benchmarks = [k for k in (metrics.get("benchmarks") or {}) if k != "data"]
    if benchmarks:
        tags["eval_benchmarks"] = ",".join(benchmarks)
    return {k: redact_text(format_value(v, spec=".6g", none="None", dicts_as_json=True))[:5000]
            for k, v in tags.items() if v != ""}


def save_pyfunc(path: Path, artifacts: dict[str, str], model_config: dict[str, Any], requirements: list[str],
                metadata: dict[str, Any]) -> Path:
    """Write the pyfunc model folder (MLmodel, the model's code, artifacts/adapter, artifacts/tokenizer):
    logged from code (:mod:`lightreasoner.mlflow_model`, copied in), with a signature and an input
    example, so it loads and serves where ``lightreasoner`` is not installed."""
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # type-hint advice on predict (it takes a DataFrame or a list)
        import mlflow.pyfunc
        from mlflow.models import ModelSignature
        from mlflow.types import ColSpec, ParamSchema, ParamSpec, Schema

        from . import mlflow_model

        # One text column, unnamed: a list of questions or a one-column DataFrame (``question``) both fit;
        # one parameter: the new-token budget (default: serving_config's, from the evaluation protocol).
        budget = ParamSpec("max_new_tokens", "long", int(model_config["max_new_tokens"]))
        signature = ModelSignature(inputs=Schema([ColSpec("string")]), outputs=Schema([ColSpec("string")]),
                                   params=ParamSchema([budget]))
        mlflow.pyfunc.save_model(str(path), python_model=mlflow_model.__file__, artifacts=artifacts,
                                 model_config=model_config, pip_requirements=requirements, metadata=metadata,
                                 signature=signature, input_example=[EXAMPLE_QUESTION])
    return path


EXAMPLE_QUESTION = "Natalia sold clips to 48 of her friends in April, and then half as many in May. How many clips did she sell?"
MODEL_REQUIREMENTS = "model-requirements.txt"


def model_requirements() -> list[str]:
    """The registered model's pip requirements: the versions the pipeline image runs (shipped as
    ``lightreasoner/model-requirements.txt``, kept equal to docker/requirements.lock by a test), not the
    registering machine's (a CPU build's ``torch==...+cpu`` would not install on a GPU server)."""
    from importlib import resources

    text = (resources.files("lightreasoner") / MODEL_REQUIREMENTS).read_text()
    return [line.strip() for line in text.splitlines() if line.strip() and not line.startswith("#")]


def expert_location(expert: dict[str, Any]) -> dict[str, Any]:
    """The Expert's model config plus ``location``: where its weights load from without lightreasoner (the
    demo's GGUF file is converted to a local folder once; a hub id stays a hub id)."""
    from .config import ModelConfig
    from .models import materialise_gguf, resolve_source

    cfg = ModelConfig(**{k: v for k, v in expert.items() if k in ModelConfig.model_fields})
    src = materialise_gguf(resolve_source(cfg), cfg.trust_remote_code)
    return {**expert, "location": str(src.location), "gguf_file": src.gguf_file, "revision": src.revision}


def serving_config(train_cfg: Mapping[str, Any], metrics: Mapping[str, Any], config: Config) -> dict[str, Any]:
    """How the registered model prompts and stops: as the evaluation that scored it (its ``protocol`` in
    ``metrics.json``: system prompt, chat template or literal prompt template, end tokens, stop strings), so the served model answers the way its
    accuracy was measured. Its default new-token budget (``max_new_tokens``, a request's ``params`` override
    it) is the evaluation's, but at least the protocol's own (:func:`lightreasoner.protocols.full_answer_tokens`):
    a model scored with a short budget (``run --quick``: 32 tokens) still serves whole answers;
    ``eval_max_new_tokens`` records the evaluation's. An evaluation without a recorded protocol (made before
    protocols existed) falls back to the training config's prompt."""
    from .protocols import full_answer_tokens

    protocol = metrics.get("protocol")
    if isinstance(protocol, Mapping) and "system_prompt" in protocol:
        name = protocol.get("name") or ""
        evaluated = int(protocol.get("max_new_tokens") or full_answer_tokens(name))
        return {"protocol": name, "system_prompt": protocol["system_prompt"],
                "chat_template": bool(protocol.get("chat_template", True)),
                "max_new_tokens": max(evaluated, full_answer_tokens(name)), "eval_max_new_tokens": evaluated,
                "stop_tokens": [str(t) for t in protocol.get("stop_tokens") or []],
                "prompt_template": str(protocol.get("prompt_template") or ""),
                "stop_strings": [str(t) for t in protocol.get("stop_strings") or []]}
    prompt = train_cfg.get("prompt") or {}
    evaluated = int((train_cfg.get("evaluation") or {}).get("max_new_tokens") or config.evaluation.max_new_tokens
                    or full_answer_tokens(None))
    return {"protocol": "", "system_prompt": prompt.get("system_prompt", config.prompt.system_prompt),
            "chat_template": prompt.get("chat_template", config.prompt.chat_template),
            "max_new_tokens": max(evaluated, full_answer_tokens(None)), "eval_max_new_tokens": evaluated,
            "stop_tokens": [], "prompt_template": "", "stop_strings": []}


# --- register ---------------------------------------------------------------------------------------


@dataclass
class RegisteredVersion:
    name: str
    version: str
    run_id: str
    source: str
    alias: str = CHALLENGER
    tags: dict[str, str] = field(default_factory=dict)


def _ensure_registered_model(client, name: str) -> None:
    from mlflow.exceptions import MlflowException

    try:
        client.create_registered_model(name, description="LightReasoner-tuned Expert (LoRA adapter, pyfunc)")
    except MlflowException as exc:
        if "RESOURCE_ALREADY_EXISTS" not in str(exc.error_code) and "already exists" not in str(exc).lower():
            raise


def check_binding(metrics: Mapping[str, Any], adapter_sha: str, training: str | Path, evaluation: str | Path) -> None:
    """The evaluation must have scored exactly this adapter (``metrics.json`` records its sha256)."""
    recorded = metrics.get("adapter_sha256")
    if not recorded:
        raise LightReasonerError(f"{evaluation}: metrics.json records no adapter_sha256, so it cannot be tied to "
                                 f"the adapter of {training} (evaluate that adapter with this version)")
    if recorded != adapter_sha:
        raise LightReasonerError(f"{evaluation}: scored another adapter (sha256 {str(recorded)[:12]}), not the one "
                                 f"in {training} ({adapter_sha[:12]}); evaluate this adapter")


def registration_key(name: str, adapter_sha: str, metrics_sha: str, samples_sha: str,
                     parent_run_id: str | None) -> str:
    """What makes two register calls the same registration (a retry): model, adapter, evaluation, samples
    and the pipeline run. A retry finds the version the first call made instead of creating another."""
    text = "\n".join([name, adapter_sha, metrics_sha, samples_sha, parent_run_id or ""])
    return hashlib.sha256(text.encode()).hexdigest()


def _versions_with_key(client, name: str, key: str) -> list:
    found = client.search_model_versions(f"name = '{name}'")
    return sorted((v for v in found if (v.tags or {}).get(REGISTRATION_KEY) == key), key=lambda v: int(v.version))


def _fail_stale_runs(client, experiment: str, key: str, keep: set[str]) -> None:
    """Register runs of this registration left RUNNING by a killed or failed call: marked FAILED."""
    runs = client.search_runs([experiment], filter_string=f"tags.`{REGISTRATION_KEY}` = '{key}' and "
                                                          "attributes.status = 'RUNNING'", max_results=100)
    for run in runs:
        if run.info.run_id not in keep:
            client.set_terminated(run.info.run_id, "FAILED")
            log.info("marked the unfinished register run %s FAILED", run.info.run_id)


def _finish(client, name: str, version) -> None:
    """The last steps of a registration, each safe to repeat: the challenger it replaces tagged
    ``superseded_by``, alias challenger, the version written on the register and pipeline runs, run FINISHED."""
    register_run = _register_run_id(version)
    run = client.get_run(register_run) if register_run else None
    if run is not None and run.info.status == "FINISHED":
        return  # completed before: a rerun changes nothing (the alias may have moved on since)
    previous = _alias(client, name, CHALLENGER)
    if previous is not None and str(previous.version) != str(version.version):
        client.set_model_version_tag(name, previous.version, SUPERSEDED_BY, str(version.version))
    client.set_registered_model_alias(name, CHALLENGER, version.version)
    if run is not None:
        client.set_tag(register_run, "registered_version", version.version)
        for run_id in _produced_by(run):
            _record_on_run(client, run_id, name, str(version.version), None)
        client.set_terminated(register_run, "FINISHED")


def _register_run_id(version) -> str | None:
    """The register run of a version (its source run is the pipeline run when it had one)."""
    return (version.tags or {}).get(REGISTER_RUN) or version.run_id


def _produced_by(run) -> list[str]:
    """The runs that produced a version: its register run and the pipeline run above it (when there is one)."""
    parent = run.data.tags.get("mlflow.parentRunId")
    return [run.info.run_id, *([parent] if parent else [])]


def version_link(client, name: str, version: str) -> str:
    """Where the version's page is: a URL on an HTTP tracking server, else its ``models:/`` URI."""
    uri = client.tracking_uri
    if uri.startswith(("http://", "https://")):
        return f"{storage.safe_url(uri).rstrip('/')}/#/models/{name}/versions/{version}"
    return f"models:/{name}/{version}"


def _record_on_run(client, run_id: str, name: str, version: str, decision: Decision | None) -> None:
    """Tag a run with the version it produced (and the promotion decision) and describe both in its
    description (``mlflow.note.content``), so the runs list answers "which version?" and "promoted?"."""
    tags = {RUN_MODEL: name, RUN_VERSION: version, RUN_MODEL_URI: f"models:/{name}/{version}"}
    note = f"Registered model [{name} version {version}]({version_link(client, name, version)})."
    if decision is not None:
        tags.update({DECISION: decision.outcome, REASON: decision.reason[:5000]})
        note += f" {decision.sentence()}"
    for key, value in tags.items():
        client.set_tag(run_id, key, value)
    client.set_tag(run_id, NOTE, note)


def _log_model(client, run, folder: Path) -> None:
    """The pyfunc folder into the run's artifacts with ``MLmodel`` strictly last (adapter and tokenizer
    first), also through MLflow's artifact proxy, so a failed upload never leaves a folder that loads."""
    if storage.is_s3(run.info.artifact_uri):
        tracking.log_artifact(client, run, folder, "model", last="MLmodel")
        return
    with tracking.mlflow_errors(client.tracking_uri, "logging the model"):
        for entry in sorted(folder.iterdir()):
            if entry.name == "MLmodel":
                continue
            if entry.is_dir():
                client.log_artifacts(run.info.run_id, str(entry), f"model/{entry.name}")
            else:
                client.log_artifact(run.info.run_id, str(entry), "model")
        client.log_artifact(run.info.run_id, str(folder / "MLmodel"), "model")


def register(config: Config, training: str | Path, evaluation: str | Path, samples: str | Path | None = None,
             *, parent_run_id: str | None = None, key_run_id: str | None = None) -> RegisteredVersion:
    """Log the adapter (pyfunc) and its evaluation in a ``register`` run, register it under
    ``registry.model_name`` with lineage tags and point the alias ``challenger`` at the new version (set
    last). Inputs: local folders or s3://. With a pipeline run (``parent_run_id``) the model is logged into
    that run and the version's source run is it (the register run is tagged on the version).

    Every input is checked before anything is created: the evaluation must have scored this very adapter
    (its recorded sha256) and the adapter must load (safetensors header, LoRA shapes). Idempotent: a retry
    of the same registration (same model, adapter, evaluation, samples and pipeline run) finds the version
    the first call made and completes it instead of creating another; register runs a killed call left
    RUNNING are marked FAILED. Order: artifacts (MLmodel last), version, alias, run FINISHED; a failure
    deletes the version it made and marks the run FAILED (or, with the server gone, the next call resumes).
    ``key_run_id``: the pipeline run that identifies the registration when it differs from the parent
    (``lightreasoner run`` resumed: each attempt has its own parent run, the first one's id is the key)."""
    if not config.tracking.enabled:
        raise LightReasonerError("tracking.enabled is false: registering needs MLflow (set tracking.enabled=true)")
    name = config.registry.model_name
    parent_run_id = parent_run_id or os.environ.get(tracking.PARENT_ENV) or None
    with contextlib.ExitStack() as stack:
        train_dir = stack.enter_context(storage.local_input(training))
        eval_dir = stack.enter_context(storage.local_input(evaluation))
        samples_dir = stack.enter_context(storage.local_input(samples)) if samples is not None else None
        train_manifest = read_input(train_dir, "training", training)
        read_input(eval_dir, "evaluation", evaluation)  # its manifest, written last: a finished evaluation
        adapter = train_dir / "adapter"
        if not (adapter / "adapter_config.json").is_file():
            raise LightReasonerError(f"{training}: missing adapter/adapter_config.json (not a training output)")
        metrics = read_json(eval_dir / "metrics.json", "evaluation")
        missing = [k for k in ("accuracy_base", "accuracy_tuned", "delta", "mcnemar_p") if metrics.get(k) is None]
        if missing:
            raise LightReasonerError(f"{evaluation}: metrics.json has no {', '.join(missing)} (evaluate the adapter)")
        adapter_sha = folder_sha256(adapter)
        check_binding(metrics, adapter_sha, training, evaluation)
        verify_adapter(adapter, training)
        samples_manifest = read_input(samples_dir, "samples", samples) if samples_dir else None
        if samples_manifest is not None:
            recorded = train_manifest.get("samples_sha256")
            actual = (samples_manifest.get("sha256") or {}).get("samples.parquet")
            if recorded and actual and recorded != actual:
                raise LightReasonerError(f"{samples}: samples.parquet sha256 differs from the one the adapter was "
                                         f"trained on ({recorded[:12]})")
        correctness = read_correctness(eval_dir)
        tags = lineage_tags(train_manifest, metrics, samples_manifest, correctness, adapter_sha,
                            str(training), str(evaluation))
        key = registration_key(name, adapter_sha, storage.file_digests(eval_dir / "metrics.json")[0],
                               str(train_manifest.get("samples_sha256") or ""), key_run_id or parent_run_id)
        tags[REGISTRATION_KEY] = key
        client = tracking.client_for(config)
        uri = client.tracking_uri
        with tracking.mlflow_errors(uri, f"registering {name!r}"):
            done = _versions_with_key(client, name, key)
            if done:  # a retry: complete the version the first call made
                version = done[0]
                _finish(client, name, version)
                if parent_run_id:  # a resumed `run` (a new pipeline run each attempt): this one produced it too
                    _record_on_run(client, parent_run_id, name, str(version.version), None)
                register_run = _register_run_id(version)
                experiment = client.get_run(register_run).info.experiment_id if register_run else None
                if experiment:
                    _fail_stale_runs(client, experiment, key, keep={register_run})
                log.info("%s version %s was already registered for this adapter and evaluation", name,
                         version.version)
                return RegisteredVersion(name, str(version.version), register_run, version.source, CHALLENGER,
                                         dict(version.tags))
            experiment = (client.get_run(parent_run_id).info.experiment_id if parent_run_id
                          else tracking.experiment_id(client, config))
            _fail_stale_runs(client, experiment, key, keep=set())
        train_cfg = train_manifest.get("config") or config.dump()
        run = tracking.start_stage_run(client, config, "register", parent_run_id,
                                       params=tracking.config_params(train_cfg),
                                       tags={"registered_model": name, REGISTRATION_KEY: key})
        run_id = run.info.run_id
        tmp = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="lightreasoner-register-")))
        version = None
        try:
            with tracking.mlflow_errors(uri, f"registering {name!r}"):
                tracking.log_batch(client, run_id, metrics=[(f"evaluate/{k}", float(metrics[k]), 0)
                                                             for k in METRIC_KEYS if metrics.get(k) is not None])
                (tmp / "evaluation").mkdir()
                (tmp / "evaluation" / "metrics.json").write_text(
                    json.dumps(redact(metrics), indent=2, sort_keys=True, default=str))
                if correctness is not None:
                    (tmp / "evaluation" / "correctness.json").write_text(json.dumps(correctness, sort_keys=True))
                tracking.log_artifact(client, run, tmp / "evaluation", "evaluation", last="metrics.json")
                manifest_copy = tmp / "training_manifest.json"
                manifest_copy.write_text(json.dumps(redact(train_manifest), indent=2, default=str))
                tracking.log_artifact(client, run, manifest_copy)
                cfg = train_manifest.get("config") or {}
                artifacts = {"adapter": str(adapter)}
                if (train_dir / "tokenizer").is_dir():
                    artifacts["tokenizer"] = str(train_dir / "tokenizer")
                model_config = {"expert": expert_location(dict(cfg.get("expert") or config.expert.model_dump())),
                                **serving_config(cfg, metrics, config)}
                save_pyfunc(tmp / "model", artifacts, model_config, model_requirements(), {"lightreasoner": tags})
                # The version's source run is the pipeline run when there is one (its page then lists the
                # version under "Registered models"), else the register run: the model is logged there.
                source_run = client.get_run(parent_run_id) if parent_run_id else run
                _log_model(client, source_run, tmp / "model")
                source = storage.join(source_run.info.artifact_uri, "model")
                _ensure_registered_model(client, name)
                tags[REGISTER_RUN] = run_id
                version = client.create_model_version(name, source, run_id=source_run.info.run_id, tags=tags,
                                                      description=f"LightReasoner adapter on {tags['expert']}",
                                                      await_creation_for=tracking.MODEL_VERSION_WAIT)
                _finish(client, name, version)
        except BaseException:
            with contextlib.suppress(Exception):
                if version is not None:
                    client.delete_model_version(name, version.version)
            with contextlib.suppress(Exception):
                client.set_terminated(run_id, "FAILED")
            raise
    result = RegisteredVersion(name, str(version.version), run_id, source, CHALLENGER, tags)
    log.info("registered %s version %s (alias %s)", name, result.version, CHALLENGER)
    return result


# --- promote ----------------------------------------------------------------------------------------


@dataclass
class Decision:
    model: str
    promoted: bool
    reason: str
    challenger: str | None = None
    champion_before: str | None = None
    champion_after: str | None = None
    delta: float | None = None
    p_value: float | None = None

    def __str__(self) -> str:
        return f"{'promoted' if self.promoted else 'not promoted'}: {self.reason}"

    @property
    def outcome(self) -> str:
        """The value of tag ``promotion.decision``."""
        return "promoted" if self.promoted else "refused"

    @property
    def compared_to(self) -> str:
        return self.champion_before or BASE_EXPERT

    def sentence(self) -> str:
        """The decision in one sentence (the version's description)."""
        if self.promoted:
            over = f"over champion version {self.champion_before}" if self.champion_before else "(first champion)"
            return f"Promoted to champion {over}: {self.reason}."
        return f"Not promoted (champion stays {self.champion_before or 'unset'}): {self.reason}."

    def tags(self) -> dict[str, str]:
        """The tags a promotion attempt writes on the challenger version."""
        tags = {DECISION: self.outcome, REASON: self.reason[:5000], COMPARED_TO: self.compared_to}
        if self.delta is not None:
            tags[DELTA] = f"{self.delta:.6g}"
        if self.p_value is not None:
            tags[P_VALUE] = f"{self.p_value:.6g}"
        return tags


@contextlib.contextmanager
def _promotion_lock(uri: str, name: str) -> Iterator[None]:
    folder = Path(tempfile.gettempdir()) / "lightreasoner-locks"
    folder.mkdir(exist_ok=True)
    path = folder / (hashlib.sha256(f"{uri}\n{name}".encode()).hexdigest()[:24] + ".lock")
    with open(path, "a+") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _alias(client, name: str, alias: str):
    from mlflow.exceptions import MlflowException

    try:
        return client.get_model_version_by_alias(name, alias)
    except MlflowException as exc:
        if "RESOURCE_DOES_NOT_EXIST" in str(exc.error_code) or "not found" in str(exc).lower():
            return None
        raise


def _tag_float(version, key: str) -> float | None:
    try:
        return float(version.tags[key])
    except (KeyError, TypeError, ValueError):
        return None


def _correctness(client, version, tmp: Path) -> dict[str, bool] | None:
    register_run = _register_run_id(version)
    if not register_run:
        return None
    try:
        path = tracking.download_artifact(client, register_run, CORRECTNESS, tmp / f"v{version.version}")
    except LightReasonerError:
        return None
    return json.loads(Path(path).read_text())


def _judge(client, name: str, challenger, champion, min_delta: float, max_p: float):
    """(passes, delta, p, reason) of the challenger against the champion (or the base Expert)."""
    c = f"version {challenger.version}"
    if champion is None:
        delta, p = _tag_float(challenger, "delta"), _tag_float(challenger, "mcnemar_p")
        if delta is None or p is None:
            return False, delta, p, f"{c} has no delta/mcnemar_p tags (register it with lightreasoner register)"
        against = "the base Expert (no champion yet)"
    else:
        a, b = challenger.tags.get("eval_set_sha256"), champion.tags.get("eval_set_sha256")
        if not a or not b:
            return False, None, None, (f"{c} or champion version {champion.version} has no per-problem results "
                                       "(predictions_tuned.parquet); cannot compare them")
        if a != b:
            return False, None, None, (f"{c} and champion version {champion.version} were evaluated on different "
                                       "problems; evaluate both on the same set")
        pa_, pb_ = challenger.tags.get("eval_protocol_sha256"), champion.tags.get("eval_protocol_sha256")
        if pa_ and pb_ and pa_ != pb_:
            return False, None, None, (
                f"{c} and champion version {champion.version} were evaluated under different protocols "
                f"({challenger.tags.get('eval_protocol', '?')} {pa_[:12]} vs {champion.tags.get('eval_protocol', '?')} "
                f"{pb_[:12]}); evaluate both under the same evaluation.protocol")
        with tempfile.TemporaryDirectory(prefix="lightreasoner-promote-") as tmp:
            mine, theirs = _correctness(client, challenger, Path(tmp)), _correctness(client, champion, Path(tmp))
        if mine is None or theirs is None:
            return False, None, None, f"cannot read {CORRECTNESS} of {c} or of champion version {champion.version}"
        ids = sorted(mine)
        wins = sum(1 for i in ids if mine[i] and not theirs[i])
        losses = sum(1 for i in ids if theirs[i] and not mine[i])
        delta = (wins - losses) / len(ids) if ids else 0.0
        p = mcnemar_exact(wins, losses)
        against = (f"champion version {champion.version} on {len(ids)} shared problems "
                   f"({wins} won, {losses} lost)")
    ok = delta >= min_delta and p <= max_p
    verdict = "beats" if ok else "does not beat"
    reason = (f"{c} {verdict} {against}: delta {delta:+.4f} ({'>=' if delta >= min_delta else '<'} {min_delta:g}), "
              f"McNemar p {p:.4g} ({'<=' if p <= max_p else '>'} {max_p:g})")
    return ok, delta, p, reason


def _record_decision(client, version, decision: Decision, parent_run_id: str | None = None) -> None:
    """A promotion attempt on the record: ``promotion.*`` tags and a sentence in the challenger version's
    description, and the decision on the runs that produced it (register run, pipeline run, and
    ``parent_run_id``: the pipeline run that asked, when it is another one, e.g. a resumed ``run``)."""
    name = decision.model
    for key, value in decision.tags().items():
        client.set_model_version_tag(name, version.version, key, value)
    expert = (version.tags or {}).get("expert")
    base = f"LightReasoner adapter on {expert}." if expert else "LightReasoner adapter."
    client.update_model_version(name, version.version, description=f"{base} {decision.sentence()}")
    runs = _produced_by(client.get_run(_register_run_id(version))) if _register_run_id(version) else []
    for run_id in dict.fromkeys([*runs, *([parent_run_id] if parent_run_id else [])]):
        _record_on_run(client, run_id, name, str(version.version), decision)


def promote(config: Config, model_name: str | None = None, min_delta: float | None = None,
            max_p: float | None = None, *, echo: bool = True, parent_run_id: str | None = None) -> Decision:
    """Move alias ``champion`` to the ``challenger`` version when it passes the rule (module docstring).
    Prints (``echo``) and returns the decision with its reason, recorded on the version and on the runs
    that produced it (and on ``parent_run_id``). Raises when there is no challenger."""
    name = model_name or config.registry.model_name
    min_delta = config.registry.min_delta if min_delta is None else float(min_delta)
    max_p = config.registry.max_p if max_p is None else float(max_p)
    if not 0.0 < max_p <= 1.0:
        raise LightReasonerError(f"--max-p {max_p}: must be in (0, 1]")
    client = tracking.client_for(config)
    uri = client.tracking_uri
    with _promotion_lock(uri, name), tracking.mlflow_errors(uri, f"promoting {name!r}"):
        if not list(client.search_registered_models(filter_string=f"name = '{name}'")):
            raise LightReasonerError(f"model {name!r}: not registered at {storage.safe_url(uri)}")
        for _attempt in range(5):
            challenger = _alias(client, name, CHALLENGER)
            if challenger is None:
                raise LightReasonerError(f"model {name!r}: no version has alias {CHALLENGER!r} (run lightreasoner register)")
            champion = _alias(client, name, CHAMPION)
            before = champion.version if champion else None
            if champion is not None and champion.version == challenger.version:
                decision = Decision(name, False, f"version {challenger.version} is already the champion; nothing to do",
                                    challenger.version, before, before)
                break  # its promotion is already on the record
            ok, delta, p, reason = _judge(client, name, challenger, champion, min_delta, max_p)
            if not ok:
                decision = Decision(name, False, reason, challenger.version, before, before, delta, p)
                _record_decision(client, challenger, decision, parent_run_id)
                break
            now = _alias(client, name, CHAMPION)
            if (now.version if now else None) != before:
                continue  # someone promoted meanwhile: judge again against the new champion
            decision = Decision(name, True, reason, challenger.version, before, challenger.version, delta, p)
            client.set_model_version_tag(name, challenger.version, "promoted_over", before or BASE_EXPERT)
            client.set_model_version_tag(name, challenger.version, "promotion_delta", f"{delta:.6g}")
            client.set_model_version_tag(name, challenger.version, "promotion_p", f"{p:.6g}")
            _record_decision(client, challenger, decision, parent_run_id)
            client.set_registered_model_alias(name, CHAMPION, challenger.version)  # the last step
            break
        else:
            raise LightReasonerError(f"model {name!r}: the champion kept changing during promotion; retry")
    if echo:
        print(f"{name}: {decision}")
    return decision


# --- compare ----------------------------------------------------------------------------------------

KEY_PARAMS = ("expert.model", "amateur.model", "amateur.keep_layers", "data.path", "data.limit", "sampling.alpha",
              "sampling.beta", "sampling.max_new_tokens", "training.layout", "training.lora_r",
              "training.learning_rate", "training.epochs", "training.max_steps", "evaluation.data.path",
              "evaluation.data.split")
KEY_METRICS = ("evaluate/accuracy_base", "evaluate/accuracy_tuned", "evaluate/delta", "evaluate/delta_ci_low",
               "evaluate/delta_ci_high", "evaluate/mcnemar_p", "evaluate/n", "sample/problems", "sample/steps",
               "sample/kept_steps", "sample/kept_fraction", "sample/mean_kl", "sample/median_kl",
               "sample/effective_beta", "sample/problems_per_second", "train/final_loss", "train/tuned_tokens",
               "train/steps", "train/wall_seconds")


@dataclass
class Comparison:
    run_ids: list[str]
    rows: list[tuple[str, list[str]]]

    def as_dict(self) -> dict[str, dict[str, str]]:
        return {label: dict(zip(self.run_ids, values, strict=True)) for label, values in self.rows}

    def render(self) -> str:
        header = ["", *[r[:12] for r in self.run_ids]]
        table = [header] + [[("* " if len(set(v)) > 1 else "  ") + label, *v] for label, v in self.rows]
        widths = [max(len(row[i]) for row in table) for i in range(len(header))]
        lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip() for row in table]
        lines.insert(1, "-" * len(lines[0]))
        return "\n".join(lines + ["(* values differ)"])


def compare(config: Config, run_ids: list[str], *, echo: bool = True) -> Comparison:
    """Side by side: the model version a run registered and its promotion decision, key params, every stage
    metric (a pipeline run includes its stage runs) and tags."""
    if not run_ids:
        raise LightReasonerError("compare: give at least one run id")
    client = tracking.client_for(config)
    uri = client.tracking_uri
    infos, produced = [], []
    with tracking.mlflow_errors(uri, "reading runs"):
        from mlflow.exceptions import MlflowException

        for run_id in run_ids:
            try:
                run = client.get_run(run_id)
            except MlflowException:
                raise LightReasonerError(f"run {run_id}: not found at {storage.safe_url(uri)}") from None
            children = client.search_runs([run.info.experiment_id],
                                          filter_string=f"tags.mlflow.parentRunId = '{run_id}'", max_results=100)
            params, metrics, tags = {}, {}, {}
            for r in [*children, run]:  # the run's own values win
                params.update(r.data.params)
                metrics.update(r.data.metrics)
                tags.update({k: v for k, v in r.data.tags.items() if k in (RUN_MODEL, RUN_VERSION, DECISION)})
            stages = sorted(c.data.tags.get("lightreasoner.stage", "?") for c in children)
            infos.append((run, params, metrics, stages))
            produced.append(tags)
    rows: list[tuple[str, list[str]]] = [
        ("run name", [format_value(r.info.run_name) for r, *_ in infos]),
        ("status", [r.info.status for r, *_ in infos]),
        ("stages", [",".join(s) or "-" for *_, s in infos]),
        ("model version", [f"{t[RUN_MODEL]} v{t[RUN_VERSION]}" if t.get(RUN_VERSION) else "-" for t in produced]),
        ("promotion", [t.get(DECISION) or "-" for t in produced]),
        ("version", [format_value(r.data.tags.get("lightreasoner.version")) for r, *_ in infos]),
        ("git commit", [format_value((r.data.tags.get("lightreasoner.git_commit") or "")[:10] or None) for r, *_ in infos]),
    ]
    rows += [(k, [format_value(p.get(k)) for _, p, _, _ in infos]) for k in KEY_PARAMS]
    all_metrics = sorted({k for _, _, m, _ in infos for k in m})
    ordered = [k for k in KEY_METRICS if k in all_metrics] + [k for k in all_metrics if k not in KEY_METRICS]
    rows += [(k, [format_value(m.get(k)) for _, _, m, _ in infos]) for k in ordered]
    other = sorted({k for _, p, _, _ in infos for k in p} - set(KEY_PARAMS))
    rows += [(k, [format_value(p.get(k)) for _, p, _, _ in infos]) for k in other
             if len({p.get(k) for _, p, _, _ in infos}) > 1]
    result = Comparison(list(run_ids), rows)
    if echo:
        print(result.render())
    return result
