"""Garbage collection around runs: a daemon's long-lived state is kept out of the collector's way.

A daemon holding a 20,000-file revision keeps ~340,000 objects alive between runs (desired state, caches,
listings). Python's full collection walks all of them, and a one-file run allocates enough to trigger one or
two: 0.3-0.5 s of a run that should take under one (bench/scale_files.py, profiled with `gc.callbacks`). After a
run is finalized, `settle` collects once (cyclic garbage of the run is freed, so nothing leaks) and then freezes
what survives: later collections, inside the next run, walk only what that run allocated. Objects frozen here
are still freed by reference counting when dropped; a frozen cycle waits for the next `settle`.

`settle` runs on the pipeline's run-hooks thread, after the run's record is final: off the path from a push to
the applied state (the collection holds the interpreter for ~0.1 s).
"""

from __future__ import annotations

import gc
import threading

_lock = threading.Lock()


def settle() -> None:
    """Collect everything (frozen objects included), then freeze the survivors out of later collections."""
    with _lock:
        gc.unfreeze()            # last settle's survivors: some may be garbage by now
        gc.collect()
        gc.freeze()


def frozen() -> int:
    """How many objects the collector currently skips (for tests and status)."""
    return gc.get_freeze_count()
