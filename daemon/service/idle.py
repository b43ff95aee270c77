"""What an idle daemon gives back: the Nickel workers, the index's connection, the heap a run freed.

Between commits a daemon waits, often for hours. After IDLE_RELEASE_S with nothing to do, the loop thread (the
index's single writer, so never inside a run) releases what only a run needs:
- the Nickel worker processes (~19 MB each; before, they stayed 60 s after every run): the next evaluation
  starts one (~0.1 s);
- the DuckDB connection (its buffers, catalog and threads: ~12 MB of a daemon with 1,000 resources applied),
  while the daemon keeps apply.lock, so CLI readers still ask over the socket and never open the file; the next
  use opens it again (Index.con), and its `state` values the loop and /healthz ask for are answered from memory;
- the heap: one full collection, then glibc's `malloc_trim(0)` hands freed pages of every arena back to the
  system (glibc otherwise keeps them for reuse).
What serves the next run stays (the last good revision, the evaluator's value cache, carry-forward rows: ~6 MB
of Python objects for 5,000 files and 1,000 resources, by tracemalloc), so a commit after a quiet costs only
the worker's start (overlapped: the daemon prestarts it at the trigger) and the reopen: DuckDB's connect takes
~70-150 ms on a loaded 2-core host, and bench/latency.py's run start moved from 35 to 259 ms p50 (load ~7) with
pushes 4 s apart against 0.3 s. A host that wants every push at warm latency sets `idle_release = 0`.
A control request or hook that opens the index again re-arms the release (Index.on_open rings the loop).
"""

from __future__ import annotations

import ctypes
import gc
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

from reconcilers.workers import trim_heap

IDLE_RELEASE_S = 2.0    # quiet after the last work before releasing (host setting idle_release; 0: never)


class _Index(Protocol):
    @property
    def is_open(self) -> bool: ...

    def release(self) -> bool: ...


class _Evaluator(Protocol):
    @property
    def workers_running(self) -> int: ...

    def release(self) -> bool: ...


_M_MMAP_THRESHOLD = -3   # mallopt(3) parameters (glibc's malloc.h)
_M_ARENA_MAX = -8
MMAP_THRESHOLD = 128 * 1024
ARENA_MAX = 2


def tune_malloc() -> bool:
    """Keep a long-lived daemon's heap from holding the peak of its last run (glibc; False elsewhere).

    - A fixed mmap threshold: glibc raises it after a big block is freed (up to 32 MB), so later big blocks (a
      Nickel worker's reply of megabytes, a decoded tree listing) come from the heap, where one small object
      allocated after them keeps the freed pages until a malloc_trim; a fixed 128 KiB keeps them in their own
      mappings, returned at free (tests/daemon/test_idle_release.py: 43 MB kept against 3 MB).
    - At most two arenas: each thread that allocates otherwise gets its own (up to 8 per core), each keeping
      freed memory for itself; the daemon's threads wait far more than they allocate.
    Measured with bench/idle.py: ~1.6 MB less resident at idle (most of a run's peak was already handed back by
    trim_heap). Called once, early, before the daemon starts its threads."""
    try:
        libc = ctypes.CDLL(None)
        return bool(libc.mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD)) and bool(libc.mallopt(_M_ARENA_MAX, ARENA_MAX))
    except (OSError, AttributeError):
        return False


@dataclass
class IdleRelease:
    """When the loop thread should release, and the release itself."""

    delay: float = IDLE_RELEASE_S
    clock: Callable[[], float] = time.monotonic
    released: int = 0                   # releases done (tests and `status` read it)
    _due: float | None = field(default=None, repr=False)

    def holding(self, index: _Index, evaluator: _Evaluator) -> bool:
        """Whether anything a release gives back is held now."""
        return index.is_open or evaluator.workers_running > 0

    def after_wake(self, index: _Index, evaluator: _Evaluator, worked: bool) -> None:
        """Called after each loop iteration: (re)arm the release `delay` from now when something is held and
        the iteration did work (or nothing was armed yet); disarm when nothing is held."""
        if self.delay <= 0 or not self.holding(index, evaluator):
            self._due = None                  # nothing held, or releasing is off (idle_release = 0)
        elif worked or self._due is None:
            self._due = self.clock() + self.delay

    def timeout(self) -> float | None:
        """Seconds until the release is due (for the loop's wait), or None when none is armed."""
        return None if self._due is None else max(0.0, self._due - self.clock())

    def due(self) -> bool:
        """Whether the armed release is due now."""
        return self._due is not None and self.clock() >= self._due

    def release(self, index: _Index, evaluator: _Evaluator) -> bool:
        """Give back the workers, the connection and the heap; True when everything was released (False:
        something was busy, and the release is armed again)."""
        done = evaluator.release()
        done = (index.release() or not index.is_open) and done
        gc.collect()
        trim_heap()
        self._due = None if done else self.clock() + self.delay
        if done:
            self.released += 1
        return done
