"""Readiness of the daemon's storage: a data directory that stops taking writes (remounted read-only, a full
disk, permissions changed under it) makes the daemon not ready, never gone.

While not ready the daemon serves what it has (status, log, /healthz saying why), applies nothing (a run
that cannot record its checkpoints must not touch the target), and probes the directory; once a probe
writes, it finalizes what the failure left unfinished and runs the newest commit again.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from pathlib import Path

from daemon.index.store import Index, is_io_error

PROBE_INTERVAL_S = 5.0
PROBE_FILE = ".write-probe"


def storage_failure(err: BaseException) -> str | None:
    """A one-line reason when `err` (or what caused it) is the operating system refusing a write, else None."""
    seen: BaseException | None = err
    while seen is not None:
        if is_io_error(seen):
            if isinstance(seen, OSError) and seen.strerror:
                text = f"{seen.strerror}: {seen.filename}" if seen.filename else seen.strerror
            else:
                text = str(seen)
            return " ".join(text.split())[:500]
        seen = seen.__cause__ or seen.__context__
    return None


@dataclass
class Storage:
    """Whether the data directory takes writes; `reason` is None when it does."""

    data_dir: Path
    reason: str | None = None
    since: float = 0.0
    next_probe: float = field(default=0.0)

    @property
    def ready(self) -> bool:
        """True while writes succeed."""
        return self.reason is None

    def failed(self, reason: str) -> bool:
        """Mark not ready; True when this is news (the first failure since ready)."""
        news = self.reason is None
        if news:
            self.since = time.time()
        self.reason = reason
        self.next_probe = time.monotonic() + PROBE_INTERVAL_S
        return news

    def due(self) -> bool:
        """True when not ready and the next probe is due."""
        return self.reason is not None and time.monotonic() >= self.next_probe

    def probe(self, index: Index) -> bool:
        """Write, sync and remove a file in the data directory, then write to the index; True (and ready
        again) when both succeed. A failing probe keeps the reason up to date."""
        path = self.data_dir / PROBE_FILE
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            try:
                os.write(fd, b"probe\n")
                os.fsync(fd)
            finally:
                os.close(fd)
            path.unlink()
            try:
                index.set_state("storage_probe", str(time.time()))
            except Exception as err:
                if "invalidated" not in str(err).lower():
                    raise
                index.reopen()          # DuckDB gives up on a connection after a fatal write error
                index.set_state("storage_probe", str(time.time()))
            index.sync()
        except Exception as err:  # noqa: BLE001 any failure keeps the daemon not ready; the reason says which
            self.failed(storage_failure(err) or f"{type(err).__name__}: {err}")
            return False
        self.reason = None
        return True

    def as_dict(self) -> dict[str, object]:
        """For /healthz and status."""
        return {"ready": self.ready, "reason": self.reason or "", "since": self.since if self.reason else None}
