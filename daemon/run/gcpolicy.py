"""Garbage collection around runs: the full collection happens between runs, not inside them.

A daemon holding a 20,000-file revision keeps ~340,000 objects alive between runs (desired state, caches,
listings). Python's full collection walks all of them, and starts once the objects surviving younger collections
since the last full one reach a quarter of that: a one-file run met one or two, 0.3-0.5 s of a run that should
take under one (bench/scale_files.py, measured with `gc.callbacks`). `settle` collects once after a run is
finalized, which resets that count: the next run starts with nothing pending and, measured, met none.

Nothing is frozen (`gc.freeze` would also skip the long-lived objects, but cycles among them would then outlive
their use until unfrozen): the collector behaves as always, one full pass is only moved to a quiet moment.
`settle` runs on the pipeline's run-hooks thread, after the run's record is final, off the path from a push to
the applied state (the pass holds the interpreter for ~0.1 s).
"""

from __future__ import annotations

import gc
import threading

_lock = threading.Lock()


def settle() -> int:
    """One full collection (between runs); returns how many unreachable objects it found."""
    with _lock:
        return gc.collect()
