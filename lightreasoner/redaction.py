"""Secrets never reach logs, MLflow params, tags or artifacts: secret-looking keys are dropped, URL
passwords, AWS key ids, well-known token formats and the values of secret environment variables masked."""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from typing import Any

MASK = "***"

# --- redaction --------------------------------------------------------------------------------------

_SECRET_WORDS = {"secret", "secrets", "password", "passwd", "pwd", "passphrase", "token", "credential",
                 "credentials", "apikey", "auth", "authorization", "cookie", "bearer", "signature"}
_SECRET_PAIRS = {("api", "key"), ("access", "key"), ("private", "key"), ("secret", "key"), ("session", "key"),
                 ("client", "secret"), ("account", "key"), ("sas", "key")}
_URL_USERINFO = re.compile(r"(?P<scheme>[a-zA-Z][a-zA-Z0-9+.\-]*://)(?P<user>[^:/@\s]*):(?P<pw>[^@/\s]+)@")
_AWS_KEY_ID = re.compile(r"\b(AKIA|ASIA)[A-Z0-9]{16}\b")
_TOKEN_LIKE = re.compile(r"\b(hf_[A-Za-z0-9]{20,}|ghp_[A-Za-z0-9]{20,}|github_pat_[A-Za-z0-9_]{20,}|"
                         r"sk-[A-Za-z0-9\-_]{20,}|xox[bp]-[A-Za-z0-9\-]{10,})\b")


def is_secret_key(key: str) -> bool:
    """A config/manifest/env key whose value must never be logged (AWS keys, tokens, passwords ...).

    Matched on words (``aws_secret_access_key``, ``HF_TOKEN``, ``apiKey``), so that ordinary keys such
    as ``max_new_tokens`` or ``tokenizer`` stay."""
    text = re.sub(r"([a-z0-9])([A-Z])", r"\1_\2", str(key)).lower()
    words = [w for w in re.split(r"[^a-z0-9]+", text) if w]
    if any(w in _SECRET_WORDS for w in words):
        return True
    return any(pair in _SECRET_PAIRS for pair in zip(words, words[1:], strict=False))


# Shell state whose names look secret (PWD: "password"): the working directory, never a credential. Masking
# it would turn every path under the working directory into "***" (and break MLflow's dataset sources).
_NOT_SECRET_ENV = {"PWD", "OLDPWD"}


def environment() -> list[tuple[str, str]]:
    """The environment's variables, read so that another thread cannot break the read: a thread that adds
    or deletes a variable meanwhile (MLflow's telemetry did) makes iterating ``os.environ`` raise KeyError or
    RuntimeError; the read is then done again (each read takes microseconds, so few retries ever happen)."""
    for _ in range(1000):
        try:
            return list(os.environ.items())
        except (KeyError, RuntimeError):
            continue
    return list(os.environ.copy().items())  # a last try; unreachable in practice


def _secret_env_values() -> list[str]:
    return sorted({v for k, v in environment() if is_secret_key(k) and k not in _NOT_SECRET_ENV
                   and len(v) >= 6}, key=len, reverse=True)


def redact_text(text: str, secrets: list[str] | None = None) -> str:
    """Mask URL passwords, AWS key ids, well-known token formats and the values of secret env vars."""
    text = _URL_USERINFO.sub(lambda m: f"{m['scheme']}{m['user']}:{MASK}@", text)
    text = _AWS_KEY_ID.sub(MASK, text)
    text = _TOKEN_LIKE.sub(MASK, text)
    for value in _secret_env_values() if secrets is None else secrets:
        if value in text:
            text = text.replace(value, MASK)
    return text


def redact(data: Any, secrets: list[str] | None = None) -> Any:
    """A copy of nested data with secret-looking keys dropped and secret-looking values masked."""
    secrets = _secret_env_values() if secrets is None else secrets
    if isinstance(data, Mapping):
        return {k: redact(v, secrets) for k, v in data.items() if not is_secret_key(k)}
    if isinstance(data, list | tuple):
        return [redact(v, secrets) for v in data]
    if isinstance(data, str):
        return redact_text(data, secrets)
    return data


def redact_uris(data: Any) -> Any:
    """A copy of nested data (a manifest) with the password of every URL's userinfo masked
    (``http://user:***@host``); keys and every other value stay as they are."""
    if isinstance(data, Mapping):
        return {k: redact_uris(v) for k, v in data.items()}
    if isinstance(data, list | tuple):
        return [redact_uris(v) for v in data]
    if isinstance(data, str) and "@" in data:
        return _URL_USERINFO.sub(lambda m: f"{m['scheme']}{m['user']}:{MASK}@", data)
    return data


def clean_tags(tags: Mapping[str, Any]) -> dict[str, str]:
    """Tags without secret-looking keys, values redacted."""
    return {str(k): redact_text(str(v)) for k, v in tags.items() if not is_secret_key(k)}


def has_url_password(text: str) -> bool:
    """Whether a URL (or any text) carries a password in a userinfo part (``http://user:pw@host``)."""
    return bool(_URL_USERINFO.search(text))
