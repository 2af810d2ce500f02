"""The one exception users see: a one-line message naming the input and the problem.

Expected bad input raises :class:`LightReasonerError`; the CLI prints ``error: <message>`` (one line) and
exits with code 2. Wrapped failures keep their cause (``raise ... from exc``), so ``lightreasoner -v``
prints the full traceback. Out-of-memory is never bad input: :func:`passthrough` lets it through unwrapped.
"""

from __future__ import annotations

import errno
import os
import re


class LightReasonerError(Exception):
    """Bad input or a refused operation. The CLI prints ``error: <message>`` and exits with code 2."""


def one_line(exc: BaseException, limit: int = 300) -> str:
    """The first line of an exception's message (its ``reason`` when it has one, e.g. urllib's), secrets
    masked, at most ``limit`` characters; the exception's type name when it has no message."""
    from .redaction import redact_text

    reason = getattr(exc, "reason", None)
    text = str(reason if isinstance(reason, str) and reason else exc).strip()
    text = text.splitlines()[0].strip() if text else type(exc).__name__
    text = redact_text(text)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def passthrough(exc: BaseException) -> bool:
    """Errors a broad ``except`` must re-raise as they are: out of (GPU) memory is a resource problem to
    see in full, not a bad input to summarise."""
    return isinstance(exc, MemoryError) or type(exc).__name__ == "OutOfMemoryError"


# Out of space: a full disk, a file size limit (RLIMIT_FSIZE), a quota.
FULL = frozenset({errno.ENOSPC, errno.EFBIG, errno.EDQUOT})
_ERRNO = re.compile(r"(?:os error|errno) (\d+)", re.IGNORECASE)
# torch.save's zip writer reports a failed write without its errno
_TORCH_WRITE = ("PytorchStreamWriter failed", "file write failed", "unexpected pos")


def write_errno(exc: BaseException) -> int | None | bool:
    """Whether ``exc`` is a failed write, and its errno: an OSError's own, or the one a library's error
    names (safetensors: ``I/O error: No space left on device (os error 28)``); True for a failed write
    whose errno is unknown (torch.save's); None when ``exc`` is not a failed write."""
    if isinstance(exc, LightReasonerError) or passthrough(exc):
        return None
    if isinstance(exc, OSError) and exc.errno is not None:
        return exc.errno
    text = str(exc)
    found = _ERRNO.search(text)
    if found and (isinstance(exc, OSError) or "I/O error" in text or type(exc).__name__ == "SafetensorError"):
        return int(found.group(1))
    if isinstance(exc, RuntimeError) and any(marker in text for marker in _TORCH_WRITE):
        return True
    return None


def write_error(exc: BaseException, where, code: int | None = None) -> LightReasonerError | None:
    """The one-line error of a failed write of a stage output (None when ``exc`` is no failed write):
    ``WHERE: No space left on device (free some space and rerun ...)``. ``where``: the file or folder
    being written, when the error names none; ``code``: the errno, when known otherwise."""
    found = write_errno(exc)
    if found is None:
        return None
    if found is not True:
        code = found
    if isinstance(exc, OSError) and exc.filename:
        where = exc.filename
    text = (exc.strerror if isinstance(exc, OSError) and exc.errno == code and exc.strerror else None) or (
        os.strerror(code) if code is not None else "file write failed")
    hint = (" (free some space and rerun: sample, run and train --resume continue where they stopped)"
            if code in FULL else "")
    return LightReasonerError(f"{where}: {text}{hint}")
