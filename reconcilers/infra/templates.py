"""Render infra `template` files in a bounded worker process (reconcilers/infra/template_worker.py).

A committed template must not hang a run, ignore SIGTERM or take the host's memory: each render has a
deadline (the worker's own timer first, then a kill from here), the worker an address-space limit, and the
output a cap counted while rendering. Failures are `InputError`s located at `template:line`.
"""

from __future__ import annotations

import json
import os
import select
import subprocess
import sys
import threading
import time
import weakref
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from reconcilers.errors import InputError
from reconcilers.workers import start_worker, stop_worker

MAX_RENDERED = 4 * 1024 * 1024
RENDER_TIMEOUT_S = 5.0
REVISION_BUDGET_S = 60.0  # all renders of one revision together (many templates each just under the deadline)
WORKER_MEMORY_MB = 512
WORKER_IDLE_S = 60.0
_GRACE_S = 2.0            # past the worker's own deadline, the parent kills it
_STARTUP_S = 20.0         # a fresh worker's start-up (Python, Jinja) comes before its own deadline starts


def worker_command(memory_mb: int = WORKER_MEMORY_MB) -> tuple[list[str], dict[str, str]]:
    """The template worker's command line and environment (reconcilers.workers.start_spare starts one ahead)."""
    return ([sys.executable, "-m", "reconcilers.infra.template_worker", str(memory_mb), str(WORKER_IDLE_S)],
            {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])})


class TemplateRenderer:
    """Renders templates one at a time in one child process, started on first use and replaced on overrun."""

    def __init__(self, timeout: float = RENDER_TIMEOUT_S, memory_mb: int = WORKER_MEMORY_MB,
                 max_output: int = MAX_RENDERED, budget: float = REVISION_BUDGET_S) -> None:
        self.timeout = timeout
        self.budget = budget
        self.spent = 0.0          # seconds rendering since begin(): one revision's load
        self.memory_mb = memory_mb
        self.max_output = max_output
        self._proc: subprocess.Popen[str] | None = None
        self._lock = threading.Lock()
        self._finalizer: weakref.finalize[Any, Any] = weakref.finalize(self, lambda: None)

    def _start(self) -> tuple[subprocess.Popen[str], bool]:
        if self._proc is not None and self._proc.poll() is not None:
            self._kill()
        fresh = self._proc is None
        if self._proc is None:
            self._proc = start_worker(*worker_command(self.memory_mb))
            # A renderer dropped without close() (a reconciler nobody closed) still stops its worker.
            self._finalizer = weakref.finalize(self, stop_worker, self._proc)
        return self._proc, fresh

    def prestart(self) -> None:
        """Start the worker now when none runs, so its start-up (Python, Jinja: ~0.1 s) overlaps the caller's
        Nickel evaluation instead of following it."""
        with self._lock:
            if self._proc is None or self._proc.poll() is not None:
                self._start()

    def begin(self) -> None:
        """A new revision's load starts: its renders share one budget of `budget` seconds."""
        self.spent = 0.0

    def render(self, rid: str, template: str, text: str, variables: Mapping[str, Any]) -> str:
        """`text` (the file `template`) rendered with `variables`, or an InputError at `template:line`."""
        if self.spent >= self.budget:
            raise InputError(f"resource {rid}: template {template} not rendered: this revision's templates "
                             f"already took {self.spent:.0f} s (the budget is {self.budget:g} s)", where=template,
                             hint="make the slow templates cheaper; each must render well within "
                                  f"{self.timeout:g} s")
        request = json.dumps({"name": template, "text": text, "vars": dict(variables),
                              "timeout": min(self.timeout, max(0.1, self.budget - self.spent)),
                              "max_output": self.max_output}) + "\n"
        started = time.monotonic()
        with self._lock:
            try:
                reply = self._exchange(request)
            finally:
                self.spent += time.monotonic() - started
        if "ok" in reply:
            return str(reply["ok"])
        line = int(reply.get("line") or 0)
        where = f"{template}:{line}" if line else template
        kind = reply.get("kind", "render")
        if kind == "syntax":
            raise InputError(str(reply["error"]), where=where, hint="fix the Jinja syntax")
        if kind == "limit":
            raise InputError(f"resource {rid}: template {template}: {reply['error']}", where=where,
                             hint="templates must render quickly into a modest file (at most "
                                  f"{self.max_output} bytes, {self.timeout:g} s)")
        # Undefined variables and sandbox refusals are fixed in the resource (its `vars`): the error stays
        # unlocated here so the loader pins it on the resource's declaration, naming the template line.
        raise InputError(f"resource {rid}: template {template} failed: {reply['error']}"
                         + (f" (at {where})" if line else ""), where=template,
                         hint="every variable the template uses must be in `vars`")

    def _exchange(self, request: str) -> dict[str, Any]:
        # A worker that exited because it was idle just as a request came gets one retry on a fresh one.
        for attempt in (1, 2):
            proc, fresh = self._start()
            assert proc.stdin is not None and proc.stdout is not None
            try:
                proc.stdin.write(request)
                proc.stdin.flush()
            except BrokenPipeError:
                self._kill()
                if attempt == 1:
                    continue
                return {"error": "the template worker died", "kind": "limit"}
            ready, _, _ = select.select([proc.stdout], [], [], self.timeout + _GRACE_S + (_STARTUP_S if fresh else 0))
            if not ready:
                self._kill()
                return {"error": f"rendering did not finish within {self.timeout:g} s", "kind": "limit"}
            line = proc.stdout.readline()
            if line:
                reply: dict[str, Any] = json.loads(line)
                return reply
            code = proc.wait()
            self._kill()
            if attempt == 1 and code == 0:
                continue
            return {"error": "rendering crashed the template worker (out of memory?)", "kind": "limit"}
        return {"error": "the template worker could not be started", "kind": "limit"}

    def _kill(self) -> None:
        proc, self._proc = self._proc, None
        if proc is not None:
            self._finalizer.detach()
            stop_worker(proc)

    def close(self) -> None:
        """Stop the worker process."""
        with self._lock:
            self._kill()
