"""Stage-output conventions every stage shares.

A stage writes one output folder: its data files (Parquet, written under a temporary name and renamed),
then ``manifest.json`` last, so a folder with a manifest is complete and a reader never sees half a file.
This module holds those writes, the sha256 digests the manifests record, reading a manifest or metrics
file with one-line errors, the library versions every manifest records, and the one skeleton every stage
function runs (:class:`StageOutput`: prepare the folder, check the inputs, claim, work, manifest last).
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import LightReasonerError, write_errno, write_error

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


def _probe_errno(where: Path, size: int = 1 << 20) -> int | None:
    """Why writing into ``where``'s folder fails, for a library that did not say (torch.save): the errno
    of writing ``size`` bytes there (disk full, file size limit, quota), None when that succeeds."""
    folder = where if where.is_dir() else where.parent
    if not folder.is_dir():
        return None
    probe = folder / ".lightreasoner-write-probe"
    try:
        with probe.open("wb") as handle:
            handle.write(b"\0" * size)
            handle.flush()
            os.fsync(handle.fileno())
    except OSError as exc:
        return exc.errno
    finally:
        probe.unlink(missing_ok=True)
    return None


@contextmanager
def writing(where: str | Path) -> Iterator[None]:
    """The one error path of every write of a stage output (data files, manifests, checkpoints, adapters):
    a failed write, whatever library raised it (OSError, safetensors, torch.save), becomes one line naming
    the file and the cause, e.g. ``OUT/checkpoints/checkpoint-2: No space left on device (free some space
    and rerun ...)``; ``where`` is named when the error names no file. Other errors pass unchanged."""
    try:
        yield
    except Exception as exc:  # noqa: BLE001 - only failed writes are translated, the rest re-raised
        found = write_errno(exc)
        if found is None:
            raise
        code = _probe_errno(Path(where)) if found is True else None
        raise write_error(exc, where, code) from exc


def write_text_atomic(text: str, path: Path) -> None:
    """Write text under a temporary name, then rename: a reader never sees half a file."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    try:
        with writing(path):
            tmp.write_text(text)
            tmp.replace(path)
    finally:
        tmp.unlink(missing_ok=True)


def write_json_atomic(data: dict, path: Path) -> None:
    """Write JSON atomically (:func:`write_text_atomic`). Passwords in URLs (``tracking.tracking_uri`` =
    ``http://user:pw@host``) are masked: manifests never hold credentials."""
    from .redaction import redact_uris

    write_text_atomic(json.dumps(redact_uris(data), indent=2, sort_keys=True, default=str), path)


def write_table_atomic(table, path: Path) -> None:
    """Write a pyarrow Table as Parquet under a temporary name, then rename (complete or absent)."""
    import pyarrow.parquet as pq

    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    try:
        with writing(path):
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


# The outputs a stage takes as input: kind -> (the stages that write it, what it is called).
INPUTS = {
    "samples": (("sample",), "samples"),
    "training": (("train", "sft"), "a training output"),
    "evaluation": (("evaluate",), "an evaluation"),
}


def read_input(folder: str | Path, kind: str, given: str | Path | None = None) -> dict[str, Any]:
    """The one check of every stage input (samples, a training or SFT output, an evaluation): a folder is
    taken only with its manifest, which its stage writes last, so an output a kill or a failure interrupted
    (data files there, the manifest never written) is refused in one line, as are a damaged manifest and
    the output of another stage. Returns the manifest. ``given``: what the user passed (an s3:// URI), named
    in messages instead of the local ``folder``."""
    stages, noun = INPUTS[kind]
    commands = " or ".join(f"`{stage}`" for stage in stages)
    folder = Path(folder)
    shown = given if given is not None else folder
    if not folder.is_dir():
        raise LightReasonerError(f"{shown}: {kind} folder not found")
    if not (folder / MANIFEST).is_file():
        raise LightReasonerError(f"{shown}: missing {MANIFEST} (not a finished {kind} folder: {commands} did not "
                                 "finish it; run it again)")
    try:
        manifest = read_json(folder / MANIFEST, kind)
    except LightReasonerError as exc:
        raise LightReasonerError(str(exc).replace(str(folder), str(shown), 1)) from exc
    stage = manifest.get("stage", stages[0])
    if stage not in stages:
        raise LightReasonerError(f"{shown}: holds the output of stage {stage!r}, not {noun} (give the folder "
                                 f"written by {commands})")
    return manifest


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


# --- the output-folder rule --------------------------------------------------------------------------


@dataclass
class Claim:
    """What :func:`prepare_output` found. ``finished``: the manifest of this very job, already complete
    (nothing to do); ``resume``: this job's work in progress is there to continue; ``clear``: the folder
    must be emptied when the run claims it (:func:`claim_output`)."""

    out: Path
    finished: dict[str, Any] | None = None
    resume: bool = False
    clear: bool = False


def _json_object(path: Path) -> dict[str, Any] | None:
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError, UnicodeDecodeError):
        return None
    return data if isinstance(data, dict) else None


def _holds_files(folder: Path) -> bool:
    return folder.is_dir() and any(p.is_file() for p in folder.rglob("*"))


def prepare_output(out: Path, *, stage: str, what: str, fingerprint: str | None = None, state: str | None = None,
                   resume: bool = False, overwrite: bool = False, rerun: bool = False,
                   has_work=None, work_dirs: tuple[str, ...] = (),
                   overwrite_flag: str | None = "--overwrite") -> Claim:
    """The one rule for a stage's output folder; reads, writes nothing (a refused run leaves nothing).

    ======================================  =====================  ===============  ===========
    the folder holds                        default                ``resume``       ``overwrite``
    ======================================  =====================  ===============  ===========
    nothing (absent or empty)               fresh run              fresh run        fresh run
    this job, finished (same fingerprint)   refused                returned as is   redone
    this job, in progress (``state``)       refused                continued        redone
    this stage, another config              refused                refused          redone
    another stage, a damaged manifest or    refused                refused          redone
    state, other files
    ======================================  =====================  ===============  ===========

    ``rerun`` (evaluation): the stage recomputes its own output in place, whatever it held; only another
    stage's output is refused. ``state``: the path, relative to ``out``, of the file that records the job's
    fingerprint while it runs; ``has_work(out)``: whether the work in progress holds anything worth keeping
    (a run killed before its first result, whatever its config: counts as empty, so the corrected rerun
    replaces it without ``overwrite``); ``work_dirs``: folders, relative to ``out``, that hold only that work
    in progress (besides the state file's own folder). ``what`` names the output in messages ("samples", "training"), and
    ``overwrite_flag`` the stage's option that sets ``overwrite`` (None: it has none)."""
    out = Path(out)
    hint = f"use {overwrite_flag} to replace it" if overwrite_flag and not rerun else "choose another folder"
    if out.exists() and not out.is_dir():
        raise LightReasonerError(f"{out}: output exists and is not a folder")
    if not _holds_files(out):  # absent, empty, or only empty folders (a run killed while claiming it)
        return Claim(out, clear=out.exists())
    manifest_path, state_path = out / MANIFEST, (out / state) if state else None

    def redo(problem: str) -> Claim:
        if overwrite:
            return Claim(out, clear=True)
        raise LightReasonerError(f"{problem} ({hint})")

    if manifest_path.is_file():
        data = _json_object(manifest_path)
        if data is None:
            return redo(f"{manifest_path}: not valid JSON (not a finished {what} output)")
        if data.get("stage", stage) != stage:
            return redo(f"{manifest_path}: belongs to stage {data.get('stage')!r}, not to stage {stage!r}")
        if rerun:
            return Claim(out)
        if fingerprint is None:
            return redo(f"{out}: already holds a finished {what} output")
        if data.get("fingerprint") == fingerprint:
            if overwrite:
                return Claim(out, clear=True)
            if not resume:
                raise LightReasonerError(f"{out}: already holds this {what} job, finished (use --resume to "
                                         "return it)")
            return Claim(out, finished=data)
        return redo(f"{out}: holds {what} output of a different config")
    if state_path is not None and state_path.is_file():
        if has_work is not None and not has_work(out):
            work = [out / d for d in work_dirs] + ([state_path.parent] if state_path.parent != out else [])
            others = [p for p in out.rglob("*") if p.is_file() and p != state_path
                      and not any(w in p.parents for w in work)]  # besides the work folders' own files
            return Claim(out, clear=True) if not others else redo(f"{out}: output folder is not empty and holds "
                                                                   f"no {what} output")
        data = _json_object(state_path)
        if data is None:
            return redo(f"{state_path}: not valid JSON (damaged work in progress)")
        if data.get("fingerprint") != fingerprint:
            return redo(f"{out}: holds {what} work of a different config (cannot resume)")
        if overwrite:
            return Claim(out, clear=True)
        if not resume:
            raise LightReasonerError(f"{out}: holds unfinished {what} work (use --resume to continue it)")
        return Claim(out, resume=True)
    if rerun:
        return Claim(out)
    return redo(f"{out}: output folder is not empty and holds no {what} output")


def claim_output(claim: Claim, *, fingerprint: str | None = None, state: str | None = None,
                 retire: tuple[str, ...] = ()) -> None:
    """Take the folder once every input check passed: empty it when the claim says so, drop the manifest
    (first: a failed rerun never leaves a folder that looks complete) and the files in ``retire``, record
    the job's ``fingerprint`` in ``state``."""
    out = claim.out
    with writing(out):
        if claim.clear and out.exists():
            shutil.rmtree(out)
        for name in (MANIFEST, *retire):
            (out / name).unlink(missing_ok=True)
        out.mkdir(parents=True, exist_ok=True)
        if state and fingerprint is not None:
            (out / state).parent.mkdir(parents=True, exist_ok=True)
            if not (out / state).is_file() or claim.clear or not claim.resume:
                write_json_atomic({"fingerprint": fingerprint}, out / state)


class StageOutput:
    """The skeleton of every stage function, in this order (the steps 2 and 4 are the caller's)::

        output = StageOutput(out, stage="train", what="training", fingerprint=fp, state=STATE, resume=resume)
        if output.finished is not None:    # 1. prepare: the output-folder rule (:func:`prepare_output`)
            return output.finished         #    reads only, so a refused run writes nothing
        ...                                # 2. check the inputs: a refusal still writes nothing
        output.claim()                     # 3. claim (:func:`claim_output`): the old manifest goes first
        ...                                # 4. the work: data files under ``output.out``, written atomically
        output.finish(manifest)            # 5. ``manifest.json`` (with the stage name), atomically and last

    Only step 5 makes the folder look complete: a failure before it leaves no manifest, and a failure while
    writing it leaves none either. ``fingerprint``, ``state`` and ``rule`` (``resume``, ``overwrite``,
    ``rerun``, ``has_work``, ``work_dirs``, ``overwrite_flag``) are those of :func:`prepare_output`;
    ``retire``: files of an earlier run that this one may not write again, dropped on claiming.
    ``finished``, ``resume`` and ``clear`` are what :func:`prepare_output` found (:class:`Claim`)."""

    def __init__(self, out: str | Path, *, stage: str, what: str, fingerprint: str | None = None,
                 state: str | None = None, retire: tuple[str, ...] = (), **rule: Any) -> None:
        self.found = prepare_output(Path(out), stage=stage, what=what, fingerprint=fingerprint, state=state, **rule)
        self.out, self.finished, self.resume, self.clear = (self.found.out, self.found.finished, self.found.resume,
                                                            self.found.clear)
        self.stage, self.fingerprint, self.state, self.retire = stage, fingerprint, state, retire
        self.claimed = False

    def claim(self) -> Path:
        """Step 3, once every input check passed: take the folder; returns it."""
        if self.finished is not None:
            raise RuntimeError(f"{self.out}: already finished, nothing to claim")
        claim_output(self.found, fingerprint=self.fingerprint, state=self.state, retire=self.retire)
        self.claimed = True
        return self.out

    @contextmanager
    def discard_on_failure(self) -> Iterator[Path]:
        """Around work into a folder that was empty when claimed (``sft``): a failure empties it again, so
        nothing blocks the rerun."""
        try:
            yield self.out
        except Exception:
            for path in list(self.out.iterdir()):
                if path.is_dir():
                    shutil.rmtree(path, ignore_errors=True)
                else:
                    path.unlink(missing_ok=True)
            raise

    def finish(self, manifest: dict[str, Any]) -> dict[str, Any]:
        """Step 5, after the work: write ``manifest`` (its ``stage`` set to this stage) atomically, last."""
        if not self.claimed:
            raise RuntimeError(f"{self.out}: the manifest is written after claim() and the work")
        if manifest.setdefault("stage", self.stage) != self.stage:
            raise ValueError(f"manifest of stage {manifest['stage']!r} in the output of stage {self.stage!r}")
        write_json_atomic(manifest, self.out / MANIFEST)
        return manifest
