"""Stage-output conventions every stage shares.

A stage writes one output folder: its data files (Parquet, written under a temporary name and renamed),
then ``manifest.json`` last, so a folder with a manifest is complete and a reader never sees half a file.
This module holds those writes, the sha256 digests the manifests record, reading a manifest or metrics
file with one-line errors, and the library versions every manifest records.
"""

from __future__ import annotations

import hashlib
import json
import platform
from pathlib import Path
from typing import Any

from .errors import LightReasonerError

MANIFEST = "manifest.json"


def sha256_file(path: Path, chunk: int = 1 << 22) -> str:
    """Hex sha256 of a file's bytes, read in chunks."""
    digest = hashlib.sha256()
    with Path(path).open("rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def folder_sha256(folder: Path) -> str:
    """sha256 over a folder's files (relative names and contents): the identity of an adapter folder,
    recorded by ``evaluate`` and checked by ``register``."""
    folder = Path(folder)
    digest = hashlib.sha256()
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        digest.update(path.relative_to(folder).as_posix().encode())
        digest.update(sha256_file(path).encode())
    return digest.hexdigest()


def write_json_atomic(data: dict, path: Path) -> None:
    """Write JSON under a temporary name, then rename: a reader never sees half a manifest. Passwords in
    URLs (``tracking.tracking_uri`` = ``http://user:pw@host``) are masked: manifests never hold credentials."""
    from .redaction import redact_uris

    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    try:
        tmp.write_text(json.dumps(redact_uris(data), indent=2, sort_keys=True, default=str))
        tmp.replace(path)
    finally:
        tmp.unlink(missing_ok=True)


def write_table_atomic(table, path: Path) -> None:
    """Write a pyarrow Table as Parquet under a temporary name, then rename (complete or absent)."""
    import pyarrow.parquet as pq

    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    try:
        pq.write_table(table, tmp)
        tmp.replace(path)
    finally:
        tmp.unlink(missing_ok=True)


def read_json(path: Path, what: str) -> dict[str, Any]:
    """A stage's JSON file (manifest, metrics) as a dict; one-line errors name the file and say what is
    wrong: missing (the folder is not a finished ``what`` folder), not JSON, or not an object."""
    path = Path(path)
    if not path.is_file():
        raise LightReasonerError(f"{path.parent}: missing {path.name} (not a finished {what} folder)")
    try:
        data = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise LightReasonerError(f"{path}: not valid JSON ({getattr(exc, 'msg', exc)})") from exc
    if not isinstance(data, dict):
        raise LightReasonerError(f"{path}: expected a JSON object")
    return data


def read_manifest(folder: str | Path, what: str = "samples") -> dict[str, Any]:
    """``folder/manifest.json`` of a finished ``what`` folder."""
    return read_json(Path(folder) / MANIFEST, what)


def library_versions(*extra: str) -> dict[str, str]:
    """Versions of the libraries whose behaviour a manifest depends on (plus the ``extra`` packages)."""
    from importlib.metadata import PackageNotFoundError, version

    from . import __version__

    out = {"lightreasoner": __version__, "python": platform.python_version()}
    for name in ("torch", "transformers", "pyarrow", *extra):
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            continue
    return out


def plan_batches(lengths: list[int], batch_size: int, sort_by_length: bool = True) -> list[list[int]]:
    """Item indices per batch, deterministic (a resumed run makes the same batches); ``sort_by_length``
    puts prompts of similar length together (less padding), ties in input order."""
    order = sorted(range(len(lengths)), key=lambda i: (lengths[i], i)) if sort_by_length else list(range(len(lengths)))
    return [order[i : i + batch_size] for i in range(0, len(order), batch_size)]


def cut_at_stop(row: list[int], stops) -> list[int]:
    """A generated row up to and including its first stop token (the whole row when none)."""
    for i, tok in enumerate(row):
        if tok in stops:
            return row[: i + 1]
    return row
