"""One writer per ``s3://`` output across machines: a lock object ``<uri>/_work.lock``.

The lock holds its owner (host, pid, a random token) and is rewritten every
``LIGHTREASONER_S3_LOCK_HEARTBEAT_SECONDS`` (default 30) while the stage runs. Another process finds it and
refuses in one line unless it is stale: its last heartbeat older than ``LIGHTREASONER_S3_LOCK_STALE_SECONDS``
(default 120), measured on the store's own clock (the object's ``LastModified`` against the ``Date`` of the
answer, so machines' clocks do not matter), or written by a process of this host that no longer runs (a
killed run is taken over at once on the same machine).

A lock of another host that is not yet stale is watched for up to ``LIGHTREASONER_S3_LOCK_WAIT_SECONDS``
(default: the stale time) rather than refused at once: when its heartbeat advances, its owner is alive and
the process refuses (within one heartbeat); when it goes stale or is released, the lock is taken. So a pod
rescheduled after a preemption continues once its dead predecessor's lock has gone stale instead of failing,
while a second live writer is still refused. ``LIGHTREASONER_S3_LOCK_WAIT_SECONDS=0`` refuses at once.

The lock is taken with a conditional write (``If-None-Match: *``) where the store supports it, and read
back to confirm in any case; it is deleted when the stage ends, failed or not.

This module knows the lock's protocol only: :func:`lightreasoner.storage.s3_output_lock` names the object
and passes in the client and the translation of S3 errors.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from email.utils import parsedate_to_datetime

from .errors import LightReasonerError

log = logging.getLogger(__name__)


def _seconds(name: str, default: float) -> float:
    raw = os.environ.get(name)
    try:
        return float(raw) if raw else default
    except ValueError:
        raise LightReasonerError(f"environment {name}={raw!r}: expected a number of seconds") from None


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _read(s3, bucket: str, key: str) -> tuple[dict, float, float] | None:
    """(the lock's content, its age in seconds on the store's clock, its last write as a timestamp), or
    None when there is none."""
    from botocore.exceptions import ClientError

    try:
        got = s3.get_object(Bucket=bucket, Key=key)
    except ClientError as exc:
        if exc.response.get("Error", {}).get("Code") in ("NoSuchKey", "404", "NotFound"):
            return None
        raise
    body = got["Body"].read()
    try:
        data = json.loads(body)
    except ValueError:
        data = {}
    date = got.get("ResponseMetadata", {}).get("HTTPHeaders", {}).get("date")
    now = parsedate_to_datetime(date).timestamp() if date else time.time()
    written = got["LastModified"].timestamp()
    return (data if isinstance(data, dict) else {}), max(0.0, now - written), written


def _put(s3, bucket: str, key: str, owner: dict, *, if_absent: bool) -> bool:
    """Write the lock; with ``if_absent`` only when no lock exists (False when one appeared meanwhile)."""
    from botocore.exceptions import ClientError

    body = json.dumps(owner).encode()
    if if_absent:
        try:
            s3.put_object(Bucket=bucket, Key=key, Body=body, IfNoneMatch="*")
            return True
        except ClientError as exc:
            code = exc.response.get("Error", {}).get("Code")
            if code in ("PreconditionFailed", "ConditionalRequestConflict", "412"):
                return False
            if code not in ("NotImplemented", "501", "InvalidArgument"):  # a store without conditional writes
                raise
    s3.put_object(Bucket=bucket, Key=key, Body=body)
    return True


def _holder(data: dict, age: float, *_: float) -> str:
    return f"host {data.get('host', '?')}, pid {data.get('pid', '?')}, last heartbeat {age:.0f} s ago"


def _wait_for_stale(s3, bucket: str, key: str, uri: str, me: dict, stale: float, wait: float,
                    poll: float, sleep: Callable[[float], None]) -> tuple[dict, float, float] | None:
    """The lock found, once it may be taken over (stale, or left by a dead process of this host), or None
    when there is none; refuses in one line when its owner is alive (its heartbeat advanced) or when it is
    still fresh after ``wait`` seconds."""
    found = _read(s3, bucket, key)
    waited, first = 0.0, found
    while found is not None:
        data, age, written = found
        dead_here = data.get("host") == me["host"] and isinstance(data.get("pid"), int) \
            and not _pid_alive(data["pid"])
        if age >= stale or dead_here:
            return found
        alive = first is not None and written > first[2]
        if alive or waited >= wait:
            seen = "its heartbeat is live" if alive else f"waited {waited:.0f} s"
            raise LightReasonerError(
                f"{uri}: another lightreasoner process is writing this output ({_holder(*found)}; {seen}); "
                f"wait for it to finish, or rerun once its lock is older than {stale:.0f} s "
                "(LIGHTREASONER_S3_LOCK_STALE_SECONDS)")
        if waited == 0:
            log.warning("%s: locked by %s; waiting up to %.0f s for its next heartbeat or for it to go stale",
                        uri, _holder(*found), min(wait, stale - age))
        step = min(poll, wait - waited, stale - age)
        sleep(step)
        waited += step
        found = _read(s3, bucket, key)
    return None


def settings() -> tuple[float, float, float]:
    """(stale, heartbeat, wait) seconds from the environment (see the module docstring); a value that is not a
    number is refused in one line."""
    stale = _seconds("LIGHTREASONER_S3_LOCK_STALE_SECONDS", 120)
    beat = _seconds("LIGHTREASONER_S3_LOCK_HEARTBEAT_SECONDS", min(30.0, stale / 4))
    return stale, beat, _seconds("LIGHTREASONER_S3_LOCK_WAIT_SECONDS", stale)


@contextmanager
def hold(s3, bucket: str, key: str, uri: str, *, errors: AbstractContextManager,
         sleep: Callable[[float], None] = time.sleep) -> Iterator[None]:
    """Hold the lock object ``key`` of the output ``uri`` for the block (see the module docstring); refuses in
    one line when another live process holds it. ``errors`` translates the store's errors while the lock is
    taken; ``sleep`` is how the lock waits for a holder's heartbeat (a test passes one that records it)."""
    stale, beat, wait = settings()
    me = {"host": socket.gethostname(), "pid": os.getpid(), "token": uuid.uuid4().hex}
    with errors:
        found = _wait_for_stale(s3, bucket, key, uri, me, stale, wait, poll=min(5.0, max(0.1, beat / 4)),
                                sleep=sleep)
        if found is not None:
            log.warning("%s: taking over the lock of a process that stopped (%s)", uri, _holder(*found))
        taken = _put(s3, bucket, key, me, if_absent=found is None)
        confirmed = _read(s3, bucket, key)  # also names the winner when the conditional write lost
        if not taken or confirmed is None or confirmed[0].get("token") != me["token"]:
            holder = _holder(*confirmed) if confirmed else "another process"
            raise LightReasonerError(f"{uri}: another lightreasoner process took this output first ({holder}); "
                                     "wait for it to finish")
    stop = threading.Event()

    def heartbeat() -> None:
        while not stop.wait(beat):
            try:
                current = _read(s3, bucket, key)
                if current is None or current[0].get("token") != me["token"]:
                    log.warning("%s: the output lock was taken over by another process", uri)
                    return
                s3.put_object(Bucket=bucket, Key=key, Body=json.dumps(me).encode())
            except Exception as exc:  # noqa: BLE001 - a missed heartbeat is retried at the next one
                log.warning("%s: lock heartbeat failed (%s)", uri, type(exc).__name__)

    thread = threading.Thread(target=heartbeat, name="lightreasoner-s3-lock", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join(timeout=5)
        try:
            current = _read(s3, bucket, key)
            if current is not None and current[0].get("token") == me["token"]:
                s3.delete_object(Bucket=bucket, Key=key)
        except Exception as exc:  # noqa: BLE001 - the stage's outcome matters more; the lock goes stale
            log.warning("%s: could not release the output lock (%s); it goes stale after %.0f s", uri,
                        type(exc).__name__, stale)
