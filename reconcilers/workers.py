"""Helpers for the bounded child processes reconcilers run (the template worker, the embedding worker)."""

from __future__ import annotations

import subprocess
from typing import Any


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
