"""Content-addressed store of the base Expert's evaluation predictions (``evaluation.prediction_cache``).

The key is the sha256 of everything that decides the base Expert's greedy outputs and their grades: the
Expert's identity (weights sha256, else hub id and revision), its dtype, the evaluation protocol (prompt,
length, stop tokens), the benchmark version (its problems' ids and gold answers), the answer type and the
grader's version. A scheduled run of the same Expert on the same benchmarks then reads the base predictions
instead of generating them again. Entries are Parquet files ``<key>.parquet`` in a folder or under an s3://
prefix, written atomically; a missing or unreadable entry is a miss.
"""

from __future__ import annotations

import hashlib
import json
import logging
import tempfile
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from . import __version__
from .outputs import write_table_atomic

log = logging.getLogger(__name__)


def _grader_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("math-verify")
    except PackageNotFoundError:
        return "absent"


def cache_key(expert: dict[str, Any], dtype: str, protocol: dict[str, Any], benchmark: dict[str, Any]) -> str:
    identity = {"sha256": expert["sha256"]} if expert.get("sha256") else {
        k: expert.get(k) for k in ("model", "revision", "gguf_file")}
    data = {
        "expert": identity,
        "dtype": dtype,
        "protocol": {k: v for k, v in protocol.items() if k != "sha256"},
        "benchmark": {k: benchmark.get(k) for k in ("problems_sha256", "answer_type")},
        "grader": {"lightreasoner": __version__, "math-verify": _grader_version()},
    }
    return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()


def _uri(cache: str, key: str) -> str:
    from . import storage

    name = f"{key}.parquet"
    return storage.join(cache, name) if cache.startswith("s3://") else str(Path(cache).expanduser() / name)


def load(cache: str, key: str) -> list[dict[str, Any]] | None:
    """The rows stored under ``key``, or None (a miss)."""
    if not cache:
        return None
    from . import storage

    uri = _uri(cache, key)
    try:
        if cache.startswith("s3://"):
            if not storage.exists(uri):
                return None
            path = storage.download_file(uri)
        else:
            path = Path(uri)
            if not path.is_file():
                return None
        return pq.read_table(path).to_pylist()
    except Exception as exc:  # noqa: BLE001 - a broken entry is regenerated, never trusted
        log.warning("prediction cache %s: unreadable entry (%s); generating again", uri,
                    (str(exc).splitlines() or [""])[0])
        return None


def store(cache: str, key: str, rows: list[dict[str, Any]], schema: pa.Schema) -> str | None:
    """Write ``rows`` under ``key`` (atomically); returns the entry's location, or None when the cache is off
    or cannot be written (a warning: the cache only saves time, the evaluation goes on)."""
    if not cache:
        return None
    try:
        return _store(cache, key, rows, schema)
    except Exception as exc:  # noqa: BLE001 - an unwritable cache never fails the evaluation
        log.warning("prediction cache %s: cannot store %s (%s)", cache, key[:12], (str(exc).splitlines() or [""])[0])
        return None


def _store(cache: str, key: str, rows: list[dict[str, Any]], schema: pa.Schema) -> str:
    from . import storage

    uri = _uri(cache, key)
    table = pa.Table.from_pylist(rows, schema=schema)
    if cache.startswith("s3://"):
        with tempfile.TemporaryDirectory(prefix="lightreasoner-cache-") as tmp:
            local = Path(tmp) / f"{key}.parquet"
            pq.write_table(table, local)
            storage.upload_file(local, uri)
        return uri
    path = Path(uri)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_table_atomic(table, path)
    return str(path)
