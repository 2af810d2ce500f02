"""Run a ``lightreasoner`` CLI command in a subprocess and SIGKILL it at a chosen moment.

* :func:`run_cli`: run it to the end (``CompletedProcess``; text stdout/stderr).
* :func:`kill_when`: SIGKILL it as soon as ``condition()`` holds (polled from this process), e.g.
  :func:`file_appears` (a file or glob appears under a folder). With ``meanwhile``, the process is first
  frozen (SIGSTOP) and ``meanwhile()`` runs while it is alive but makes no progress (a second writer racing
  it), then the kill.
* :func:`kill_at_call`: SIGKILL it from inside, the ``nth`` time a named function is called (``before``
  the call, or ``after`` it returned), e.g. ``kill_at_call(args, "transformers.trainer_callback:TrainerState.
  save_to_json", nth=2, mode="torn")``; mode ``torn`` first writes an empty file at the path argument (a
  kill in the middle of that file's write).

The subprocess runs this checkout's package (cwd = repository root) with the caller's environment plus
``env``. Every helper returns :class:`Outcome` with ``killed`` telling whether the kill happened.
"""

from __future__ import annotations

import glob
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
KILLPOINT = Path(__file__).resolve().parent / "killpoint.py"


@dataclass
class Outcome:
    returncode: int
    stdout: str
    stderr: str
    killed: bool

    @property
    def error_lines(self) -> list[str]:
        return [line for line in self.stderr.splitlines() if line.startswith("error:")]


def _env(env: dict[str, str] | None) -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(ROOT), "TOKENIZERS_PARALLELISM": "false", "HF_HUB_OFFLINE": "1",
            "TRANSFORMERS_VERBOSITY": "error", **(env or {})}


def _finish(proc: subprocess.Popen, killed: bool) -> Outcome:
    out, err = proc.communicate()
    return Outcome(proc.returncode, out, err, killed)


def run_cli(args: list[str], *, env: dict[str, str] | None = None, timeout: float = 300,
            max_file_bytes: int | None = None) -> Outcome:
    """``max_file_bytes``: no file the command writes may grow past this (RLIMIT_FSIZE; a write beyond it
    fails with EFBIG, like a full disk)."""
    proc = subprocess.run([sys.executable, "-m", "lightreasoner.cli", *map(str, args)], cwd=ROOT, env=_env(env),
                          capture_output=True, text=True, timeout=timeout,
                          preexec_fn=None if max_file_bytes is None else lambda: _limit_files(max_file_bytes))
    return Outcome(proc.returncode, proc.stdout, proc.stderr, False)


def _limit_files(size: int) -> None:
    import resource

    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # the write fails with EFBIG instead of killing
    resource.setrlimit(resource.RLIMIT_FSIZE, (size, size))


def kill_when(args: list[str], condition: Callable[[], bool], *, env: dict[str, str] | None = None,
              timeout: float = 300, poll: float = 0.01, meanwhile: Callable[[], None] | None = None) -> Outcome:
    """Start the command; SIGKILL it the moment ``condition()`` is true (or let it end). ``meanwhile``: run
    this between freezing the process (SIGSTOP) and killing it, so it cannot finish in the meantime."""
    proc = subprocess.Popen([sys.executable, "-m", "lightreasoner.cli", *map(str, args)], cwd=ROOT, env=_env(env),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + timeout
    try:
        while proc.poll() is None:
            if condition():
                if meanwhile is not None:
                    proc.send_signal(signal.SIGSTOP)
                    meanwhile()
                proc.send_signal(signal.SIGKILL)
                return _finish(proc, True)
            if time.monotonic() > deadline:
                proc.kill()
                raise TimeoutError(f"{args}: neither finished nor met the condition in {timeout}s")
            time.sleep(poll)
        return _finish(proc, False)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def file_appears(folder: str | Path, pattern: str) -> Callable[[], bool]:
    """A condition: some file matching ``pattern`` (a glob, ``**`` allowed) exists under ``folder``."""
    root = str(folder)
    return lambda: bool(glob.glob(os.path.join(root, pattern), recursive=True))


def kill_at_call(args: list[str], target: str, *, nth: int = 1, mode: str = "before",
                 env: dict[str, str] | None = None, timeout: float = 300) -> Outcome:
    """SIGKILL the command from inside at the ``nth`` call of ``target`` (``module:Qualified.name``).
    ``mode``: ``before`` the call, ``after`` it returned, or ``torn`` (an empty file at its path argument,
    then the kill)."""
    proc = subprocess.run([sys.executable, str(KILLPOINT), target, str(nth), mode, *map(str, args)], cwd=ROOT,
                          env=_env(env), capture_output=True, text=True, timeout=timeout)
    return Outcome(proc.returncode, proc.stdout, proc.stderr, proc.returncode == -signal.SIGKILL)
