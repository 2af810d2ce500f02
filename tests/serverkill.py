"""``python tests/serverkill.py PGID MODULE:QUALNAME NTH MODE CLI-ARGS...``: run the lightreasoner CLI with
MODULE:QUALNAME wrapped so that at its NTH call the server in process group PGID (a real ``mlflow server``)
is SIGKILLed, ``before`` the call or ``after`` it returned; the CLI itself carries on against the dead
server (see tests/test_tracking_faults.py)."""

from __future__ import annotations

import functools
import os
import signal
import sys
import time

from killpoint import resolve  # run as a script: tests/ is on sys.path


def install(pgid: int, target: str, nth: int, mode: str) -> None:
    owner, name, original = resolve(target)
    calls = {"n": 0}

    def kill_server() -> None:
        os.killpg(pgid, signal.SIGKILL)
        time.sleep(0.5)  # the kernel closes the server's socket
        print(f"serverkill: server killed at {target} ({mode} call {nth})", file=sys.stderr, flush=True)

    @functools.wraps(original)
    def wrapper(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] != nth:
            return original(*args, **kwargs)
        if mode == "before":
            kill_server()
            return original(*args, **kwargs)
        result = original(*args, **kwargs)
        kill_server()
        return result

    setattr(owner, name, wrapper)


if __name__ == "__main__":
    pgid, target, nth, mode, *cli_args = sys.argv[1:]
    install(int(pgid), target, int(nth), mode)
    from lightreasoner.cli import main

    sys.exit(main(cli_args))
