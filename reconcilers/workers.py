"""Helpers for the bounded child processes reconcilers run (the template worker, the embedding worker), and the
heap trim those workers, the Nickel worker and the idle daemon share."""

from __future__ import annotations

import subprocess
import threading
from collections.abc import Mapping, Sequence
from typing import Any


def trim_heap() -> bool:
    """Hand the heap's free pages back to the system (glibc's malloc_trim(0): glibc otherwise keeps them for
    reuse, so a process waiting for its next request holds the peak of its last one); False when the C library
    has none (musl)."""
    import ctypes  # here: the CLI imports this module for its spares, and needs ctypes only when a worker trims

    try:
        return bool(ctypes.CDLL(None).malloc_trim(0))
    except (OSError, AttributeError):
        return False


def stop_worker(proc: subprocess.Popen[Any]) -> None:
    """Kill a worker (if it still runs), reap it and close its pipes."""
    if proc.poll() is None:
        proc.kill()
    proc.wait()
    for pipe in (proc.stdin, proc.stdout):
        if pipe is not None:
            try:
                pipe.close()
            except BrokenPipeError:
                pass  # unflushed request bytes to a dead worker: nothing to keep


# Spares: a worker started ahead, by a command about to need it (a CLI `validate`/`plan` starts the template
# worker before importing its engine, so the worker's own start-up, ~0.1 s of Python and Jinja, runs on the
# other core meanwhile instead of delaying the first render). Taken by the next start_worker of exactly that
# command and environment; one nobody takes is stopped by stop_spares (or exits with its parent: stdin closes).
_spares: dict[tuple[tuple[str, ...], tuple[tuple[str, str], ...]], subprocess.Popen[str]] = {}
_spares_lock = threading.Lock()


def _popen(argv: Sequence[str], env: Mapping[str, str]) -> subprocess.Popen[str]:
    return subprocess.Popen(list(argv), stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, bufsize=1,
                            cwd="/", env=dict(env))


def _key(argv: Sequence[str], env: Mapping[str, str]) -> tuple[tuple[str, ...], tuple[tuple[str, str], ...]]:
    return tuple(argv), tuple(sorted(env.items()))


def start_worker(argv: Sequence[str], env: Mapping[str, str]) -> subprocess.Popen[str]:
    """A worker process running `argv` in `env` (text pipes on stdin and stdout, line-buffered, in /): the
    spare started ahead for exactly this command and environment when one is alive, else a new process."""
    with _spares_lock:
        spare = _spares.pop(_key(argv, env), None)
    if spare is not None:
        if spare.poll() is None:
            return spare
        stop_worker(spare)                 # it left (its idle time passed): reap it, start a new one
    return _popen(argv, env)


def start_spare(argv: Sequence[str], env: Mapping[str, str]) -> None:
    """Start a worker for `argv` now, for the next start_worker of the same command to take."""
    key = _key(argv, env)
    with _spares_lock:
        if key in _spares and _spares[key].poll() is None:
            return
        old, _spares[key] = _spares.get(key), _popen(argv, env)
    if old is not None:
        stop_worker(old)


def stop_spares() -> int:
    """Stop the spares nobody took; returns how many."""
    with _spares_lock:
        left = list(_spares.values())
        _spares.clear()
    for proc in left:
        stop_worker(proc)
    return len(left)
