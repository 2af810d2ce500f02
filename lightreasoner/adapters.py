"""LoRA adapters: finding one (a training output or an adapter folder), checking it belongs to the Expert
and that its weights load, and attaching it to the Expert."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .config import Config
from .errors import LightReasonerError, passthrough
from .models import resolve_source, same_model
from .outputs import MANIFEST, read_input

ADAPTER_CONFIG = "adapter_config.json"



@dataclass
class AdapterSource:
    folder: Path  # holds adapter_config.json
    given: Path  # what the user passed
    training_manifest: dict[str, Any] | None


def resolve_adapter(path: str | Path) -> AdapterSource:
    """A training output folder (``adapter/`` + ``manifest.json``) or an adapter folder itself."""
    given = Path(path).expanduser()
    if not given.exists():
        raise LightReasonerError(f"adapter {given}: not found")
    if not given.is_dir():
        raise LightReasonerError(f"adapter {given}: expected a training output folder or an adapter folder")
    if (given / "adapter" / ADAPTER_CONFIG).is_file():
        folder, manifest_path = given / "adapter", given / MANIFEST
    elif (given / ADAPTER_CONFIG).is_file():
        folder, manifest_path = given, given.parent / MANIFEST
        if given.name != "adapter":
            manifest_path = None
    else:
        raise LightReasonerError(f"adapter {given}: no adapter_config.json (not a training output or adapter folder)")
    manifest = None
    if folder != given or (manifest_path is not None and manifest_path.is_file()):
        # a training output: taken only with its manifest (outputs.read_input), never half-written
        manifest = read_input(folder.parent, "training", given if folder != given else folder.parent)
    return AdapterSource(folder, given, manifest)


def read_adapter_config(folder: Path, given: str | Path | None = None) -> dict[str, Any]:
    """peft's ``adapter_config.json`` of an adapter folder; one-line errors name ``given`` (what the user
    passed), else the folder."""
    path = Path(folder) / ADAPTER_CONFIG
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise LightReasonerError(f"adapter {given or folder}: unreadable {ADAPTER_CONFIG} ({exc})") from exc
    if not isinstance(data, dict):
        raise LightReasonerError(f"adapter {given or folder}: {ADAPTER_CONFIG} is not a JSON object")
    return data


def adapter_base_name(folder: Path) -> str | None:
    """The base model peft recorded for an adapter (``base_model_name_or_path``), if any."""
    name = read_adapter_config(folder).get("base_model_name_or_path")
    return str(name) if name else None


def _names_same_model(recorded: str, candidates: list[str]) -> bool:
    rec_path = Path(recorded).expanduser()
    for cand in candidates:
        if not cand:
            continue
        if recorded == cand:
            return True
        cand_path = Path(cand).expanduser()
        if rec_path.exists() and cand_path.exists() and rec_path.resolve() == cand_path.resolve():
            return True
        if rec_path.name and rec_path.name == cand_path.name and not (rec_path.exists() and cand_path.exists()):
            return True  # a hub id and a local copy of it ("Org/Name" vs "/models/Name")
    return False


def check_adapter_base(source: AdapterSource, config: Config, expert_info: dict[str, Any], model) -> None:
    """Refuse an adapter made for another base model (training manifest first, else peft's record)."""
    recorded = (source.training_manifest or {}).get("expert")
    if isinstance(recorded, dict):
        if not same_model(recorded, expert_info):
            raise LightReasonerError(
                f"adapter {source.given}: trained on expert {recorded.get('model')!r}, "
                f"not on expert.model {config.expert.model!r} (different weights)"
            )
        return
    base = adapter_base_name(source.folder)
    if base is None:
        return
    src = resolve_source(config.expert)
    candidates = [config.expert.model, src.location, str(getattr(model, "name_or_path", "") or "")]
    if not _names_same_model(base, candidates):
        raise LightReasonerError(
            f"adapter {source.given}: made for base model {base!r}, not for expert.model {config.expert.model!r}"
        )


def attach_adapter(model, source: AdapterSource):
    """The Expert wrapped with the LoRA adapter; peft's loading errors become one line."""
    from peft import PeftModel

    try:
        tuned = PeftModel.from_pretrained(model, str(source.folder), is_trainable=False)
    except Exception as exc:  # noqa: BLE001 - shape mismatch, missing modules, bad files: all one line
        if passthrough(exc):
            raise
        text = str(exc).strip()
        first = text.splitlines()[0] if text else type(exc).__name__
        if "size mismatch" in text:
            first = "weight shapes differ from this Expert's (adapter made for another base model)"
        raise LightReasonerError(f"adapter {source.given}: cannot load onto expert.model ({first[:300]})") from exc
    tuned.eval()
    return tuned


def verify_adapter(adapter: Path, given: str | Path) -> None:
    """The adapter folder must load: ``adapter_config.json`` readable, ``adapter_model.safetensors`` a valid
    safetensors file (header and data) holding LoRA A/B matrices whose shapes match the configured rank."""
    cfg = read_adapter_config(adapter, given)
    weights = adapter / "adapter_model.safetensors"
    if not weights.is_file():
        raise LightReasonerError(f"{given}: missing adapter/adapter_model.safetensors (not a training output)")
    from safetensors.torch import load_file

    try:
        tensors = load_file(str(weights))
    except Exception as exc:  # noqa: BLE001 - any parse failure is a corrupt file
        if passthrough(exc):
            raise
        reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
        raise LightReasonerError(f"{given}: adapter/adapter_model.safetensors does not load ({reason})") from exc
    rank = cfg.get("r")
    pattern = cfg.get("rank_pattern") or {}
    lora = {k: t for k, t in tensors.items() if ".lora_A." in k or ".lora_B." in k}
    if not lora:
        raise LightReasonerError(f"{given}: adapter/adapter_model.safetensors holds no LoRA weights")
    for key, tensor in lora.items():
        if tensor.dim() != 2 or not bool(tensor.isfinite().all()):
            raise LightReasonerError(f"{given}: adapter weight {key} is not a finite matrix")
        r = next((v for k, v in pattern.items() if k in key), rank)
        got = tensor.shape[0] if ".lora_A." in key else tensor.shape[1]
        if isinstance(r, int) and got != r:
            raise LightReasonerError(f"{given}: adapter weight {key} has rank {got}, adapter_config.json says r={r}")
    for key in lora:
        twin = key.replace(".lora_A.", ".lora_B.") if ".lora_A." in key else key.replace(".lora_B.", ".lora_A.")
        if twin not in lora:
            raise LightReasonerError(f"{given}: adapter weight {key} has no matching {twin}")
        if ".lora_A." in key and lora[key].shape[0] != lora[twin].shape[1]:
            raise LightReasonerError(f"{given}: adapter weights {key} and {twin} have inconsistent shapes")
