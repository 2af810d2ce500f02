"""Local paths and s3:// URIs, one interface for every stage.

* boto3 with the transfer manager (multipart above ``LIGHTREASONER_S3_MULTIPART_MB``, default 8 MiB,
  parallel parts) and botocore retries (``AWS_RETRY_MODE`` standard/adaptive, default standard;
  ``AWS_MAX_ATTEMPTS``, default 5) that cover throttling and 5xx answers.
* Endpoint override for S3-compatible stores (MinIO, Ceph, moto): ``AWS_ENDPOINT_URL_S3``,
  ``AWS_ENDPOINT_URL`` or ``MLFLOW_S3_ENDPOINT_URL``, first one set wins.
* Integrity: every upload records the file's sha256 in the object metadata and is checked after the
  upload (size, the ETag against the local MD5 / multipart MD5 when the store computes plain ETags, and
  the recorded sha256); every download is checked against the size and the recorded sha256.
* ``upload_dir`` removes the destination's ``manifest.json`` first and uploads the new one LAST, after every
  other file is verified, so a failed upload never leaves a folder that a reader takes as complete.
* ``local_input`` / ``local_output`` let a stage work on a local folder whatever its argument was; an
  s3:// output's work in progress (batches, checkpoints) is uploaded under ``<uri>/_work/`` as it is made
  (``save_progress``), so a rerun on any machine resumes it.

Errors become one-line :class:`LightReasonerError` messages naming the URI; credentials never appear.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import shutil
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from . import s3lock
from .errors import LightReasonerError
from .outputs import MANIFEST

log = logging.getLogger(__name__)

WORK_PREFIX = "_work"  # <output>/_work/: work in progress of an s3:// output (reserved name, never downloaded)
LOCK_NAME = WORK_PREFIX + ".lock"  # <output>/_work.lock: the output's lock across machines (s3lock.py)
SHA256_META = "sha256"
_MB = 1024 * 1024
_MAX_PARTS = 10000
_MIN_PART = 5 * _MB
_CLIENTS_LOCK = threading.Lock()


# --- URIs -------------------------------------------------------------------------------------------


def is_s3(uri: str | os.PathLike | None) -> bool:
    return isinstance(uri, str) and uri.startswith("s3://")


def split_s3(uri: str) -> tuple[str, str]:
    """``s3://bucket/some/key`` -> ("bucket", "some/key")."""
    if not is_s3(uri):
        raise LightReasonerError(f"{uri}: not an s3:// URI")
    rest = uri[len("s3://") :]
    bucket, _, key = rest.partition("/")
    if not bucket or not re.fullmatch(r"[a-z0-9][a-z0-9.\-]{1,61}[a-z0-9]", bucket):
        raise LightReasonerError(f"{uri}: invalid bucket name {bucket!r}")
    return bucket, key


def join(uri: str, *parts: str) -> str:
    base = uri.rstrip("/")
    return "/".join([base, *(p.strip("/") for p in parts if p)])


def endpoint_url() -> str | None:
    for name in ("AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL", "MLFLOW_S3_ENDPOINT_URL"):
        value = os.environ.get(name)
        if value:
            return value
    return None


def safe_url(url: str | None) -> str:
    """A URL without the password of its userinfo part (``http://user:***@host``)."""
    if not url:
        return ""
    try:
        parts = urlsplit(url)
    except ValueError:
        return "<url>"
    if parts.password is None and "@" not in parts.netloc:
        return url
    host = parts.hostname or ""
    if parts.port:
        host = f"{host}:{parts.port}"
    user = parts.username or ""
    return urlunsplit((parts.scheme, f"{user}:***@{host}" if user else host, parts.path, parts.query, ""))


# --- client -----------------------------------------------------------------------------------------


def _env_number(name: str, default: float) -> float:
    raw = os.environ.get(name)
    if not raw:
        return default
    try:
        return float(raw)
    except ValueError:
        raise LightReasonerError(f"environment {name}={raw!r}: expected a number") from None


_CLIENT_ENV = ("AWS_RETRY_MODE", "AWS_MAX_ATTEMPTS", "LIGHTREASONER_S3_CONNECT_TIMEOUT", "LIGHTREASONER_S3_READ_TIMEOUT",
               "LIGHTREASONER_S3_ADDRESSING", "AWS_REGION", "AWS_DEFAULT_REGION", "AWS_ENDPOINT_URL_S3",
               "AWS_ENDPOINT_URL", "MLFLOW_S3_ENDPOINT_URL", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY",
               "AWS_SESSION_TOKEN", "AWS_PROFILE", "AWS_SHARED_CREDENTIALS_FILE", "AWS_CONFIG_FILE",
               "AWS_WEB_IDENTITY_TOKEN_FILE", "AWS_ROLE_ARN")
_CLIENTS: dict[tuple, Any] = {}


def client():
    """A boto3 S3 client with retries, timeouts and the endpoint override; cached per relevant environment
    (a change of credentials, endpoint or retry settings gets a new client)."""
    key = tuple(os.environ.get(name) for name in _CLIENT_ENV)
    with _CLIENTS_LOCK:
        if key not in _CLIENTS:
            if len(_CLIENTS) > 16:
                _CLIENTS.clear()
            _CLIENTS[key] = _new_client()
        return _CLIENTS[key]


def _new_client():
    import boto3
    from botocore.config import Config

    mode = os.environ.get("AWS_RETRY_MODE", "standard")
    if mode not in ("standard", "adaptive", "legacy"):
        raise LightReasonerError(f"environment AWS_RETRY_MODE={mode!r}: expected standard or adaptive")
    config = Config(
        retries={"mode": mode, "max_attempts": int(_env_number("AWS_MAX_ATTEMPTS", 5))},
        connect_timeout=_env_number("LIGHTREASONER_S3_CONNECT_TIMEOUT", 10),
        read_timeout=_env_number("LIGHTREASONER_S3_READ_TIMEOUT", 60),
        s3={"addressing_style": os.environ.get("LIGHTREASONER_S3_ADDRESSING", "auto")},
    )
    region = os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION") or "us-east-1"
    return boto3.session.Session().client("s3", endpoint_url=endpoint_url(), region_name=region, config=config)


def part_size() -> int:
    return max(_MIN_PART, int(_env_number("LIGHTREASONER_S3_MULTIPART_MB", 8) * _MB))


def transfer_config():
    from boto3.s3.transfer import TransferConfig

    size = part_size()
    return TransferConfig(multipart_threshold=size, multipart_chunksize=size,
                          max_concurrency=int(_env_number("LIGHTREASONER_S3_CONCURRENCY", 4)), use_threads=True)


# --- errors -----------------------------------------------------------------------------------------


def describe_error(exc: BaseException) -> str:
    """A short reason for a boto3/botocore failure, without credentials."""
    from boto3.exceptions import S3UploadFailedError
    from botocore import exceptions as bx

    if isinstance(exc, bx.ClientError):
        error = exc.response.get("Error", {})
        code = str(error.get("Code", ""))
        status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
        if code == "NoSuchBucket":
            return "bucket does not exist"
        if code in ("NoSuchKey", "404", "NotFound"):
            return "no such object"
        if code in ("InvalidAccessKeyId", "SignatureDoesNotMatch", "AccessDenied", "403", "Forbidden",
                    "InvalidToken", "ExpiredToken", "AllAccessDisabled") or status == 403:
            return f"access denied ({code or status}: check the AWS credentials and permissions)"
        return f"S3 error {code or status}"
    if isinstance(exc, bx.NoCredentialsError | bx.PartialCredentialsError):
        return ("no AWS credentials found (set AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, in Kubeflow through the "
                "s3_secret Secret, or a profile, or an IRSA/Workload Identity role on the pod's ServiceAccount)")
    if isinstance(exc, bx.EndpointConnectionError | bx.ConnectionClosedError):
        return f"cannot reach the S3 endpoint {safe_url(endpoint_url()) or 'of AWS'}"
    if isinstance(exc, bx.ConnectTimeoutError | bx.ReadTimeoutError):
        return f"the S3 endpoint {safe_url(endpoint_url()) or 'of AWS'} timed out"
    if isinstance(exc, S3UploadFailedError):
        text = str(exc)
        if "NoSuchBucket" in text:
            return "bucket does not exist"
        if any(c in text for c in ("InvalidAccessKeyId", "SignatureDoesNotMatch", "AccessDenied", "403")):
            return "access denied (check the AWS credentials and permissions)"
        return "upload failed"
    if isinstance(exc, bx.BotoCoreError):
        return f"S3 client error ({type(exc).__name__})"
    return f"{type(exc).__name__}"


@contextmanager
def s3_errors(where: str, action: str, *, store: str = "") -> Iterator[None]:
    """boto3/botocore failures -> one-line LightReasonerError ``{where}: {action} failed: {store}{reason}``
    (the reason from :func:`describe_error`); the one S3 error translation, also used by the tracking client."""
    from boto3.exceptions import Boto3Error
    from botocore.exceptions import BotoCoreError, ClientError

    try:
        yield
    except LightReasonerError:
        raise
    except (ClientError, BotoCoreError, Boto3Error) as exc:
        raise LightReasonerError(f"{where}: {action} failed: {store}{describe_error(exc)}") from exc


# --- integrity --------------------------------------------------------------------------------------


def file_digests(path: Path, part: int | None = None) -> tuple[str, str, str]:
    """(sha256, md5, multipart ETag for parts of ``part`` bytes) of a file, in one read."""
    sha, md5 = hashlib.sha256(), hashlib.md5(usedforsecurity=False)
    part = part or part_size()
    part_md5s: list[bytes] = []
    current, filled = hashlib.md5(usedforsecurity=False), 0
    with open(path, "rb") as fh:
        while True:
            block = fh.read(min(1 << 20, part - filled))
            if not block:
                break
            sha.update(block)
            md5.update(block)
            current.update(block)
            filled += len(block)
            if filled == part:
                part_md5s.append(current.digest())
                current, filled = hashlib.md5(usedforsecurity=False), 0
    if filled:
        part_md5s.append(current.digest())
    multipart = hashlib.md5(b"".join(part_md5s), usedforsecurity=False).hexdigest() + f"-{len(part_md5s)}"
    return sha.hexdigest(), md5.hexdigest(), multipart


def _upload_part_size(size: int) -> int:
    chunk = part_size()
    while -(-size // chunk) > _MAX_PARTS:
        chunk *= 2
    return chunk


def _verify_object(uri: str, head: dict, size: int, sha256: str, md5: str, multipart: str) -> None:
    if head.get("ContentLength") != size:
        raise LightReasonerError(
            f"{uri}: integrity check failed (stored {head.get('ContentLength')} bytes, local file has {size})"
        )
    recorded = (head.get("Metadata") or {}).get(SHA256_META)
    if recorded is not None and recorded != sha256:
        raise LightReasonerError(f"{uri}: integrity check failed (sha256 differs)")
    etag = str(head.get("ETag", "")).strip('"')
    if head.get("ServerSideEncryption") == "aws:kms" or not etag:
        return
    if re.fullmatch(r"[0-9a-f]{32}", etag):
        if etag != md5:
            raise LightReasonerError(f"{uri}: integrity check failed (MD5 differs)")
    elif re.fullmatch(r"[0-9a-f]{32}-\d+", etag) and etag.split("-")[1] == multipart.split("-")[1]:
        if etag != multipart:
            raise LightReasonerError(f"{uri}: integrity check failed (multipart MD5 differs)")


# --- files ------------------------------------------------------------------------------------------


def upload_file(local: str | Path, uri: str, *, s3=None) -> str:
    """Upload one file to ``uri`` (multipart when large) and verify it; returns the URI."""
    path = Path(local)
    if not path.is_file():
        raise LightReasonerError(f"{path}: file not found")
    bucket, key = split_s3(uri)
    if not key or key.endswith("/"):
        raise LightReasonerError(f"{uri}: needs an object key, not a bucket or folder")
    size = path.stat().st_size
    sha256, md5, multipart = file_digests(path, _upload_part_size(size))
    s3 = s3 or client()
    with s3_errors(uri, "upload"):
        s3.upload_file(str(path), bucket, key, ExtraArgs={"Metadata": {SHA256_META: sha256}},
                       Config=transfer_config())
        head = s3.head_object(Bucket=bucket, Key=key)
    _verify_object(uri, head, size, sha256, md5, multipart)
    return uri


def _cache_dir() -> Path:
    """``<cache>/s3``: downloads; ``<cache>/outputs``: work folders of s3:// outputs (:func:`work_dir`)."""
    root = os.environ.get("LIGHTREASONER_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "lightreasoner"
    )
    return Path(root) / "s3"


def _download_verified(s3, uri: str, bucket: str, key: str, target: Path, head: dict | None = None) -> Path:
    with s3_errors(uri, "download"):
        head = head or s3.head_object(Bucket=bucket, Key=key)
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_name(f".{target.name}.part-{os.getpid()}")
        try:
            s3.download_file(bucket, key, str(tmp), Config=transfer_config())
            size = tmp.stat().st_size
            sha256, md5, multipart = file_digests(tmp, _upload_part_size(size))
            _verify_object(uri, head, size, sha256, md5, multipart)
            tmp.replace(target)
        finally:
            tmp.unlink(missing_ok=True)
    return target


def download_file(uri: str, dest: str | Path | None = None) -> Path:
    """Download one object; returns the local path. ``dest`` None: a cache folder (reused while the ETag
    is unchanged); an existing folder: the object's name inside it; else the file path to write."""
    bucket, key = split_s3(uri)
    if not key or key.endswith("/"):
        raise LightReasonerError(f"{uri}: needs an object key, not a bucket or folder")
    s3 = client()
    with s3_errors(uri, "download"):
        head = s3.head_object(Bucket=bucket, Key=key)
    etag = str(head.get("ETag", "")).strip('"')
    if dest is None:
        target = _cache_dir() / bucket / key
        stamp = target.with_name(target.name + ".etag")
        if target.is_file() and stamp.is_file() and stamp.read_text() == etag and etag:
            return target
        _download_verified(s3, uri, bucket, key, target, head)
        stamp.write_text(etag)
        return target
    target = Path(dest)
    if target.is_dir():
        target = target / Path(key).name
    return _download_verified(s3, uri, bucket, key, target, head)


# --- directories ------------------------------------------------------------------------------------


def list_objects(uri: str, *, s3=None) -> list[dict]:
    """Objects under a prefix (``uri`` names a folder); each dict has Key and Size."""
    bucket, prefix = split_s3(uri)
    if prefix and not prefix.endswith("/"):
        prefix += "/"
    s3 = s3 or client()
    out: list[dict] = []
    with s3_errors(uri, "listing"):
        for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
            out.extend(page.get("Contents", []))
    return out


def download_dir(uri: str, dest: str | Path) -> Path:
    """Download every object under the folder ``uri`` into ``dest`` (verified); returns ``dest``."""
    bucket, prefix = split_s3(uri)
    if prefix and not prefix.endswith("/"):
        prefix += "/"
    s3 = client()
    objects = [o for o in list_objects(uri, s3=s3) if not o["Key"].endswith("/")
               and not o["Key"][len(prefix):].startswith((WORK_PREFIX + "/", LOCK_NAME))]
    if not objects:
        raise LightReasonerError(f"{uri}: no objects under this prefix")
    root = Path(dest)
    root.mkdir(parents=True, exist_ok=True)
    for obj in objects:
        rel = obj["Key"][len(prefix) :]
        if not rel or any(part in ("..", "") for part in rel.split("/")):
            raise LightReasonerError(f"{join(uri, rel)}: unsafe object name")
        _download_verified(s3, f"s3://{bucket}/{obj['Key']}", bucket, obj["Key"], root / rel)
    return root


def upload_dir(local: str | Path, uri: str, *, on_file: Callable[[str], None] | None = None,
               last: str = MANIFEST) -> list[str]:
    """Upload a folder to the prefix ``uri``; returns the object URIs.

    The destination's old ``manifest.json`` is deleted first; every other file is uploaded and verified;
    the top-level ``manifest.json`` goes last. A failure in between leaves no manifest, so readers (which
    require it) never take a partial upload for a finished one. ``on_file`` is called after each file;
    ``last`` names another completion marker (an MLflow model folder: ``MLmodel``).
    """
    root = Path(local)
    if not root.is_dir():
        raise LightReasonerError(f"{root}: folder not found")
    bucket, prefix = split_s3(uri)
    files = sorted(p for p in root.rglob("*") if p.is_file())
    manifest = root / last
    ordered = [p for p in files if p != manifest] + ([manifest] if manifest in files else [])
    s3 = client()
    with s3_errors(join(uri, last), "removing the old manifest"):
        s3.delete_object(Bucket=bucket, Key="/".join(p for p in (prefix.rstrip("/"), last) if p))
    done = []
    for path in ordered:
        target = join(f"s3://{bucket}/{prefix}" if prefix else f"s3://{bucket}", path.relative_to(root).as_posix())
        upload_file(path, target, s3=s3)
        done.append(target)
        if on_file is not None:
            on_file(target)
    return done


# --- stage inputs and outputs -----------------------------------------------------------------------


@contextmanager
def local_input(uri_or_path: str | Path) -> Iterator[Path]:
    """A local path for a stage input: local paths as they are; s3:// objects or folders downloaded into
    a temporary folder (removed afterwards)."""
    if not is_s3(str(uri_or_path)):
        path = Path(uri_or_path)
        if not path.exists():
            raise LightReasonerError(f"{path}: not found")
        yield path
        return
    uri = str(uri_or_path)
    bucket, key = split_s3(uri)
    tmp = Path(tempfile.mkdtemp(prefix="lightreasoner-in-"))
    try:
        s3 = client()
        is_object = False
        if key and not key.endswith("/"):
            from botocore.exceptions import BotoCoreError, ClientError

            try:
                s3.head_object(Bucket=bucket, Key=key)
                is_object = True
            except ClientError as exc:
                if describe_error(exc) != "no such object":
                    raise LightReasonerError(f"{uri}: lookup failed: {describe_error(exc)}") from exc
            except BotoCoreError as exc:
                raise LightReasonerError(f"{uri}: lookup failed: {describe_error(exc)}") from exc
        if is_object:
            yield download_file(uri, tmp / Path(key).name)
        else:
            name = Path(key.rstrip("/")).name or bucket
            yield download_dir(uri, tmp / name)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


_HELD_LOCKS: dict[str, int] = {}
_HELD_LOCKS_GUARD = threading.Lock()


def _lock_dir() -> Path:
    folder = Path(tempfile.gettempdir()) / "lightreasoner-locks"
    folder.mkdir(exist_ok=True)
    return folder


@contextmanager
def output_lock(target: str | os.PathLike) -> Iterator[None]:
    """Exclusive use of one output (a local folder or an s3:// prefix) on this machine: a second process
    writing to the same output is refused with a one-line error instead of corrupting the first one's
    files. Re-entrant within a process (the CLI and the stage function both take it)."""
    import fcntl

    key = str(target).rstrip("/") if is_s3(str(target)) else str(Path(target).expanduser().resolve())
    with _HELD_LOCKS_GUARD:
        if key in _HELD_LOCKS:
            _HELD_LOCKS[key] += 1
            held = True
        else:
            held = False
    if held:
        try:
            yield
        finally:
            with _HELD_LOCKS_GUARD:
                _HELD_LOCKS[key] -= 1
        return
    path = _lock_dir() / (hashlib.sha256(key.encode()).hexdigest()[:32] + ".lock")
    fh = open(path, "a+")  # noqa: SIM115 - held for the whole block
    try:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise LightReasonerError(f"{target}: another lightreasoner process is writing this output; wait for "
                                     "it to finish or choose another output") from None
        with _HELD_LOCKS_GUARD:
            _HELD_LOCKS[key] = 1
        try:
            yield
        finally:
            with _HELD_LOCKS_GUARD:
                _HELD_LOCKS.pop(key, None)
            fcntl.flock(fh, fcntl.LOCK_UN)
    finally:
        fh.close()


def check_writable(uri: str) -> None:
    """Write and delete a probe object under the prefix: an unusable output (no such bucket, no permission)
    is refused before any compute."""
    bucket, prefix = split_s3(uri)
    key = "/".join(p for p in (prefix.rstrip("/"), f".lightreasoner-write-check-{os.getpid()}") if p)
    s3 = client()
    with s3_errors(uri, "writing the output"):
        s3.put_object(Bucket=bucket, Key=key, Body=b"")
        s3.delete_object(Bucket=bucket, Key=key)


def work_dir(uri: str) -> Path:
    """The stable local folder where a stage builds the output for ``uri``: kept when the stage fails or is
    killed, so that the rerun resumes it; removed once the output is uploaded. Under the cache folder
    (``LIGHTREASONER_CACHE``; on Kubernetes, mount a volume there to survive a pod restart)."""
    return _cache_dir().parent / "outputs" / hashlib.sha256(uri.rstrip("/").encode()).hexdigest()[:32] / "output"


# --- work in progress of s3:// outputs, kept under <uri>/_work/ -------------------------------------

_PROGRESS: dict[Path, str] = {}  # work folder -> its s3:// output, while local_output holds it
_PROGRESS_GUARD = threading.Lock()


def _progress_target(path: Path) -> tuple[Path, str] | None:
    path = Path(path).resolve()
    with _PROGRESS_GUARD:
        for work, uri in _PROGRESS.items():
            if path == work or work in path.parents:
                return work, uri
    return None


def save_progress(path: str | Path, *, last: str | None = None) -> None:
    """Upload work in progress (a finished batch file, a complete checkpoint folder) of an s3:// output to
    ``<uri>/_work/``, so that a rerun on another machine (a preempted pod rescheduled elsewhere) resumes it
    as a rerun on this one would. ``path`` lies in the folder :func:`local_output` gave for an s3:// URI;
    for any other path (a local output) this does nothing. ``last``: a file name uploaded after the
    others (a checkpoint's completion marker)."""
    found = _progress_target(Path(path))
    if found is None:
        return
    work, uri = found
    path = Path(path).resolve()
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    files = [p for p in files if p.name != last] + [p for p in files if p.name == last]
    s3 = client()
    for file in files:
        if not file.exists():  # rotated away meanwhile
            continue
        upload_file(file, join(uri, WORK_PREFIX, file.relative_to(work).as_posix()), s3=s3)


def prune_progress(folder: str | Path) -> None:
    """Delete the uploaded work in progress under ``folder`` whose local file is gone (rotated checkpoints)."""
    found = _progress_target(Path(folder))
    if found is None:
        return
    work, uri = found
    rel = Path(folder).resolve().relative_to(work).as_posix()
    base = join(uri, WORK_PREFIX)
    bucket, base_key = split_s3(base)
    s3 = client()
    for obj in list_objects(join(base, rel) if rel != "." else base, s3=s3):
        local = work / obj["Key"][len(base_key) + 1:]
        if not local.exists():
            with s3_errors(f"s3://{bucket}/{obj['Key']}", "removing old work in progress"):
                s3.delete_object(Bucket=bucket, Key=obj["Key"])


def _delete_prefix(uri: str) -> None:
    bucket, _ = split_s3(uri)
    s3 = client()
    keys = [o["Key"] for o in list_objects(uri, s3=s3)]
    with s3_errors(uri, "removing work in progress"):
        for start in range(0, len(keys), 1000):
            s3.delete_objects(Bucket=bucket, Delete={"Objects": [{"Key": k} for k in keys[start:start + 1000]],
                                                     "Quiet": True})


def _restore_progress(uri: str, work: Path) -> None:
    """An absent (or empty) local work folder: the work in progress uploaded under ``<uri>/_work/``, if any."""
    if work.is_dir() and any(work.iterdir()):
        return
    remote = join(uri, WORK_PREFIX)
    if list_objects(remote):
        log.warning("%s: resuming the work in progress uploaded by an earlier run", uri)
        download_dir(remote, work)


def _snapshot(folder: Path) -> dict[str, tuple[int, int]]:
    return {p.relative_to(folder).as_posix(): (p.stat().st_size, p.stat().st_mtime_ns)
            for p in folder.rglob("*") if p.is_file()}


@contextmanager
def _name_the_output(work: Path, shown: str) -> Iterator[None]:
    """Errors of the stage name the output the user gave, not the local work folder."""
    try:
        yield
    except LightReasonerError as exc:
        text = str(exc)
        if str(work) in text:
            raise LightReasonerError(text.replace(str(work), shown)) from exc
        raise


@contextmanager
def local_output(uri_or_path: str | Path, *, resume: bool = False) -> Iterator[Path]:
    """A local folder for a stage output, held under :func:`output_lock`.

    Local paths: the folder itself (created when missing; removed again when the stage fails and leaves it
    empty). s3:// URIs: the prefix is checked for writability first, the stage works in :func:`work_dir`
    (kept on failure so that a ``resume`` rerun continues it; what the stage passes to
    :func:`save_progress` is also uploaded under ``<uri>/_work/``, and a ``resume`` run whose local work
    folder is absent, on another machine, starts from that), and the result is uploaded with
    :func:`upload_dir` (manifest last) when the block succeeds, then ``_work/`` is deleted. A finished prefix (with a manifest) is
    downloaded first, so that the stage treats it as it would a local folder, and is never uploaded again
    when the stage changed nothing."""
    if not is_s3(str(uri_or_path)):
        path = Path(uri_or_path)
        with output_lock(path):
            if path.exists() and not path.is_dir():
                raise LightReasonerError(f"{path}: output exists and is not a folder")
            created = not path.exists()
            path.mkdir(parents=True, exist_ok=True)
            try:
                yield path
            except BaseException:
                if created and path.is_dir() and not any(path.iterdir()):
                    path.rmdir()
                raise
        return
    uri = str(uri_or_path)
    with output_lock(uri):  # this machine; the lock object under the prefix: every machine
        check_writable(uri)
        with s3_output_lock(uri), _s3_output(uri, resume) as work:
            yield work


@contextmanager
def s3_output_lock(uri: str, *, sleep: Callable[[float], None] = time.sleep) -> Iterator[None]:
    """Hold ``<uri>/_work.lock``, the output's lock across machines, for the block (see :mod:`.s3lock`);
    refuses in one line when another live process holds it."""
    bucket, prefix = split_s3(uri)
    s3lock.settings()  # a setting that is not a number: refused before the store is asked anything
    key = "/".join(p for p in (prefix.rstrip("/"), LOCK_NAME) if p)
    with s3lock.hold(client(), bucket, key, uri, sleep=sleep,
                     errors=s3_errors(join(uri, LOCK_NAME), "taking the output lock")):
        yield


@contextmanager
def _s3_output(uri: str, resume: bool) -> Iterator[Path]:
    """The work folder of an s3:// output (see :func:`local_output`), uploaded when the block succeeds."""
    bucket, prefix = split_s3(uri)
    work = work_dir(uri)
    manifest_key = "/".join(p for p in (prefix.rstrip("/"), MANIFEST) if p)
    finished = any(o["Key"] == manifest_key for o in list_objects(uri))
    unchanged = None
    if finished:  # the stage sees it as it would a local folder (returns it, or refuses to overwrite)
        shutil.rmtree(work, ignore_errors=True)
        download_dir(uri, work)
        unchanged = _snapshot(work)
    elif not resume:
        shutil.rmtree(work, ignore_errors=True)
        _delete_prefix(join(uri, WORK_PREFIX))
    else:
        _restore_progress(uri, work)
    work.mkdir(parents=True, exist_ok=True)
    resolved = work.resolve()
    with _PROGRESS_GUARD:
        _PROGRESS[resolved] = uri
    try:
        with _name_the_output(work, uri):
            yield work
    finally:
        with _PROGRESS_GUARD:
            _PROGRESS.pop(resolved, None)
    if unchanged is not None and _snapshot(work) == unchanged:
        log.info("%s: already complete, nothing to upload", uri)
    else:
        upload_dir(work, uri)
    _delete_prefix(join(uri, WORK_PREFIX))  # after the manifest: the output is complete
    shutil.rmtree(work.parent, ignore_errors=True)
