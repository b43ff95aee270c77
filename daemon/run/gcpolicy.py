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

`paused` turns automatic collection off while a revision loads and plans (a bounded stage that keeps what it
makes): the passes it met there freed nothing. The objects made meanwhile are counted as usual once it ends.
"""

from __future__ import annotations

import gc
import threading
from collections.abc import Iterator
from contextlib import contextmanager

_lock = threading.Lock()


def settle() -> int:
    """One full collection (between runs); returns how many unreachable objects it found."""
    with _lock:
        return gc.collect()


# Automatic collection paused while a revision loads and plans --------------------------------------------
# A cold load and plan of 5,000 resources keeps nearly every object it makes (the desired state, the actions),
# so the collector's passes over them find nothing to free: measured, two full and ~300 young passes, 0.2 s of a
# 1.2 s plan (bench/load_plan.py). The stage is bounded and frees its own garbage by reference counting; the
# collector is back on (if it was on) as soon as the last stage in any thread ends, and counts what was
# allocated meanwhile as usual.
_pause_lock = threading.Lock()
_pauses = 0
_resume = False                                       # whether the collector was on when the first pause began


@contextmanager
def paused() -> Iterator[None]:
    """Automatic garbage collection off for one load or plan (nested and concurrent pauses count)."""
    global _pauses, _resume
    with _pause_lock:
        if _pauses == 0:
            _resume = gc.isenabled()
            gc.disable()
        _pauses += 1
    try:
        yield
    finally:
        with _pause_lock:
            _pauses -= 1
            if _pauses == 0 and _resume:
                gc.enable()
