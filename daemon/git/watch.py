"""Triggers: watchdog on the branch ref, the hook socket (see api.py), the periodic fetch of a remote.

Every trigger only *wakes* the main loop; the loop then reads the branch head. So a burst of pushes coalesces
into one run for the newest commit, and commits in between are recorded as seen (never silently skipped).
"""

from __future__ import annotations

import threading
import time
from pathlib import Path

from watchdog.events import FileSystemEvent, FileSystemEventHandler
from watchdog.observers import Observer

SIGNAL_SLICE_S = 1.0    # the longest the loop sleeps without running pending signal handlers


class Wakeup:
    """A coalescing doorbell: many rings before the loop wakes count as one, with the reasons kept."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._reasons: list[str] = []

    def ring(self, reason: str) -> None:
        """Wake the loop."""
        with self._cond:
            if len(self._reasons) < 100:
                self._reasons.append(reason)
            self._cond.notify_all()

    def wait(self, timeout: float | None) -> list[str]:
        """Block until rung or `timeout`; returns (and clears) the reasons.

        Waits in slices of at most SIGNAL_SLICE_S: a SIGTERM the kernel hands to another thread (any thread
        may take a process-directed signal) only sets CPython's pending flag, and its handler, which rings
        this bell, runs when the main thread next executes Python. An unbounded wait here then never woke,
        and `stratumd` ignored SIGTERM until it was killed (seen as a flaky daemon stop in the tests)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._cond:
            while not self._reasons:
                left = SIGNAL_SLICE_S if deadline is None else min(SIGNAL_SLICE_S, deadline - time.monotonic())
                if left <= 0:
                    break
                self._cond.wait(left)    # returning lets a pending signal handler run, then checks again
            reasons, self._reasons = self._reasons, []
            return reasons


_WRITES = frozenset({"created", "modified", "moved", "deleted", "closed"})


class _RefHandler(FileSystemEventHandler):
    def __init__(self, branch: str, wake: Wakeup) -> None:
        self._targets = (f"refs/heads/{branch}", "packed-refs")
        self._wake = wake

    def _check(self, path: str | bytes) -> None:
        text = path.decode() if isinstance(path, bytes) else path
        if text.endswith(self._targets):
            self._wake.ring("ref")

    def on_any_event(self, event: FileSystemEvent) -> None:
        # Only writes count: reading the ref (as the loop itself does) raises `opened`/`closed_no_write`
        # events, and waking on those made an idle daemon spin.
        if event.event_type not in _WRITES:
            return
        # A push writes main.lock then moves it onto main: the move's destination is the signal.
        self._check(event.src_path)
        dest = getattr(event, "dest_path", "")
        if dest:
            self._check(dest)


class RefWatcher:
    """Watches a git directory's refs for changes of one branch."""

    def __init__(self, git_dir: Path, branch: str, wake: Wakeup) -> None:
        self._observer = Observer()
        handler = _RefHandler(branch, wake)
        heads = git_dir / "refs" / "heads"
        heads.mkdir(parents=True, exist_ok=True)
        self._observer.schedule(handler, str(heads), recursive=True)
        self._observer.schedule(handler, str(git_dir), recursive=False)
        self._observer.daemon = True

    def start(self) -> None:
        """Start watching."""
        self._observer.start()

    def stop(self) -> None:
        """Stop watching."""
        self._observer.stop()
        self._observer.join(timeout=5)
