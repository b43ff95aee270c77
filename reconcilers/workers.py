"""Helpers for the bounded child processes reconcilers run (the template worker, the embedding worker), and the
heap trim those workers, the Nickel worker and the idle daemon share."""

from __future__ import annotations

import ctypes
import subprocess
from typing import Any


def trim_heap() -> bool:
    """Hand the heap's free pages back to the system (glibc's malloc_trim(0): glibc otherwise keeps them for
    reuse, so a process waiting for its next request holds the peak of its last one); False when the C library
    has none (musl)."""
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
