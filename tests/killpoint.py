"""``python tests/killpoint.py MODULE:QUALNAME NTH MODE CLI-ARGS...``: run the lightreasoner CLI with the
function MODULE:QUALNAME wrapped so that its NTH call SIGKILLs this process (see tests/killer.py)."""

from __future__ import annotations

import functools
import importlib
import os
import signal
import sys
from pathlib import Path


def _die() -> None:
    sys.stdout.flush()
    sys.stderr.flush()
    os.kill(os.getpid(), signal.SIGKILL)


def resolve(target: str) -> tuple[object, str, object]:
    """``MODULE:QUALNAME`` -> (the object that holds the function, its attribute name, the function)."""
    module_name, _, qualname = target.partition(":")
    owner = importlib.import_module(module_name)
    *path, name = qualname.split(".")
    for part in path:
        owner = getattr(owner, part)
    return owner, name, getattr(owner, name)


def install(target: str, nth: int, mode: str) -> None:
    owner, name, original = resolve(target)
    calls = {"n": 0}

    @functools.wraps(original)
    def wrapper(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] != nth:
            return original(*args, **kwargs)
        if mode == "before":
            _die()
        if mode == "torn":
            path = next((a for a in list(args) + list(kwargs.values()) if isinstance(a, str | Path)), None)
            if path is not None:
                Path(path).write_bytes(b"")
            _die()
        result = original(*args, **kwargs)
        _die()
        return result

    setattr(owner, name, wrapper)


if __name__ == "__main__":
    target, nth, mode, *cli_args = sys.argv[1:]
    install(target, int(nth), mode)
    from lightreasoner.cli import main

    sys.exit(main(cli_args))
