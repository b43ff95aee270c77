"""A wall-clock and CPU timeline of one cold build + plan, by stage (bench/load_plan.py --timeline).

Wraps the stages of `runtime.build` and `pipeline.plan` (the Nickel workers' start and runs, the index, the
reconcilers' load/validate/observe/plan/explain, admission, ordering) and records for each call its start and
end (milliseconds since the build began), the thread it ran on and that thread's CPU time: what overlaps
what, and where the process waits. Only for measuring: the wrappers add a few microseconds per call, and the
calls wrapped are per stage, never per resource.
"""

from __future__ import annotations

import functools
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any


@dataclass
class Timeline:
    """Calls recorded as (label, start s, end s, thread name, thread CPU s)."""

    origin: float = field(default_factory=time.perf_counter)
    calls: list[tuple[str, float, float, str, float]] = field(default_factory=list)

    def wrap(self, owner: Any, name: str, label: str) -> None:
        """Replace `owner.name` (a function or method) with a recording wrapper."""
        original: Callable[..., Any] = getattr(owner, name)

        @functools.wraps(original)
        def recorded(*args: Any, **kwargs: Any) -> Any:
            start, cpu = time.perf_counter(), time.thread_time()
            try:
                return original(*args, **kwargs)
            finally:
                self.calls.append((label, start, time.perf_counter(), threading.current_thread().name,
                                   time.thread_time() - cpu))

        setattr(owner, name, recorded)

    def rows(self, until: float, at_least_ms: float = 2.0) -> list[dict[str, Any]]:
        """The calls of at least `at_least_ms` that started before `until` (perf_counter seconds), in start
        order, times in milliseconds from `origin`."""
        out = []
        for label, start, end, thread, cpu in sorted(self.calls, key=lambda c: c[1]):
            if (end - start) * 1000 >= at_least_ms and start < until:
                out.append({"stage": label, "start_ms": (start - self.origin) * 1000,
                            "end_ms": (end - self.origin) * 1000, "wall_ms": (end - start) * 1000,
                            "cpu_ms": cpu * 1000, "thread": thread})
        return out


def instrument() -> Timeline:
    """Wrap the build and plan stages (call before `build`); the reconcilers' hooks are wrapped by
    `instrument_reconcilers` once they exist."""
    from daemon.git.source import GitSource
    from daemon.index.store import Index
    from daemon.nickel import evaluator
    from daemon.run import pipeline, runtime

    tl = Timeline()
    for owner, name, label in (
            (runtime, "open_index", "build: open the index (DuckDB)"),
            (runtime, "Evaluator", "build: Nickel evaluator"),
            (runtime, "build_reconcilers", "build: reconcilers (plugin imports, construction)"),
            (evaluator._Worker, "start", "nickel: worker process spawn"),
            (evaluator._Worker, "run", "nickel: one run in a worker (send, evaluate, receive)"),
            (evaluator, "_decoded", "nickel: decode a reply (JSON)"),
            (evaluator.Evaluator, "evaluate", "nickel: evaluate (keys, cache, runs)"),
            (evaluator.Evaluator, "_materialize", "nickel: write files for a run"),
            (GitSource, "snapshot", "git: snapshot"),
            (pipeline, "load_snapshot", "plan: load + validate (every reconciler)"),
            (pipeline.Pipeline, "_admit", "plan: admission"),
            (Index, "inventory", "plan: inventory (index)"),
            (pipeline, "sequence", "plan: order the actions"),
            (pipeline.Pipeline, "_details", "plan: details (expected vs found)")):
        tl.wrap(owner, name, label)
    return tl


def instrument_reconcilers(tl: Timeline, reconcilers: dict[str, Any]) -> None:
    """Wrap each reconciler's load/validate/observe/plan/explain on the instance."""
    for name, rec in reconcilers.items():
        for hook in ("load", "validate", "observe", "plan", "explain"):
            tl.wrap(rec, hook, f"{name}: {hook}")
