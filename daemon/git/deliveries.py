"""The webhook replay log: which delivery ids each receiver has already accepted.

A receiver refuses a delivery whose id it has seen (409), so a captured request cannot trigger a fetch twice.
The log is bounded twice over, so a flood of fresh ids costs bounded memory and disk:

    - per receiver, at most `capacity` ids, the oldest forgotten first;
    - no id older than `ttl` seconds (24 h by default).

With a path, each id is appended as one JSON line `[when, receiver, delivery]` to a file of mode 0600 before it
counts as seen, so a restart does not reopen replays. The file is rewritten (atomically, via a temp file) when
most of its lines are stale, and a line torn by a crash mid-write is skipped on load. One lock makes `record`
safe from the server's threads: of two requests with the same id, exactly one is told it is new.
"""

from __future__ import annotations

import json
import os
import tempfile
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path


class DeliveryLog:
    """Delivery ids seen per receiver: the `capacity` most recent within `ttl` seconds. With a `path`, ids go to an
    append-only file (mode 0600, compacted when mostly stale) so a restart does not reopen replays. Thread-safe."""

    def __init__(self, path: Path | None = None, *, capacity: int = 10_000, ttl: float = 86_400.0,
                 clock: Callable[[], float] = time.time) -> None:
        self.path = path
        self.capacity = capacity
        self.ttl = ttl
        self._clock = clock
        self._seen: dict[str, OrderedDict[str, float]] = {}
        self._lines = 0                                  # lines in the file, live or not
        self._lock = threading.Lock()
        if path is not None:
            self._load(path)

    def record(self, receiver: str, delivery: str) -> bool:
        """Remember `delivery`; False when it was remembered already (a replay). Raises OSError when the file
        cannot be written, and then does not remember the id, so the sender's retry is not refused."""
        with self._lock:
            now = self._clock()
            ids = self._live(receiver, now)
            if delivery in ids:
                return False
            if self.path is not None:
                self._append(self.path, now, receiver, delivery)
            self._remember(ids, delivery, now)
            return True

    def __len__(self) -> int:
        """How many ids are remembered, over all receivers (stale ones included until their receiver's next
        `record`)."""
        with self._lock:
            return sum(len(ids) for ids in self._seen.values())

    def _live(self, receiver: str, now: float) -> OrderedDict[str, float]:
        ids = self._seen.setdefault(receiver, OrderedDict())
        while ids and next(iter(ids.values())) < now - self.ttl:
            ids.popitem(last=False)
        return ids

    def _remember(self, ids: OrderedDict[str, float], delivery: str, when: float) -> None:
        ids[delivery] = when
        ids.move_to_end(delivery)
        while len(ids) > self.capacity:
            ids.popitem(last=False)

    def _load(self, path: Path) -> None:
        try:
            text = path.read_text(encoding="utf-8", errors="replace")
        except FileNotFoundError:
            return
        path.chmod(0o600)
        now = self._clock()
        for line in text.splitlines():
            self._lines += 1
            try:
                when, receiver, delivery = json.loads(line)
            except (ValueError, TypeError):
                continue                                 # a line torn by a crash mid-write: nothing to remember
            fits = isinstance(when, int | float) and isinstance(receiver, str) and isinstance(delivery, str)
            if fits and when >= now - self.ttl:
                self._remember(self._seen.setdefault(receiver, OrderedDict()), delivery, float(when))

    def _append(self, path: Path, now: float, receiver: str, delivery: str) -> None:
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        try:
            os.write(fd, (json.dumps([now, receiver, delivery]) + "\n").encode())
        finally:
            os.close(fd)
        self._lines += 1
        live = sum(len(ids) for ids in self._seen.values()) + 1
        if self._lines > 2 * live + 100:
            self._compact(path)

    def _compact(self, path: Path) -> None:
        lines = [json.dumps([when, receiver, delivery]) + "\n"
                 for receiver, ids in self._seen.items() for delivery, when in ids.items()]
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")   # mkstemp creates it 0600
        try:
            with os.fdopen(fd, "w") as fh:
                fh.writelines(lines)
            os.replace(tmp, path)
        except OSError:
            # the id is already appended; a long file is harmless and the next append tries again
            Path(tmp).unlink(missing_ok=True)
            return
        self._lines = len(lines)
