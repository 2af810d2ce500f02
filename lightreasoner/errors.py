"""The one exception users see: a one-line message naming the input and the problem.

Expected bad input raises :class:`LightReasonerError`; the CLI prints ``error: <message>`` (one line) and
exits with code 2. Wrapped failures keep their cause (``raise ... from exc``), so ``lightreasoner -v``
prints the full traceback. Out-of-memory is never bad input: :func:`passthrough` lets it through unwrapped.
"""

from __future__ import annotations


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
