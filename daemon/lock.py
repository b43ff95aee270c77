"""The apply lock: one process applies to a data directory at a time (fcntl lock, released on death)."""

from __future__ import annotations

import fcntl
import os
from pathlib import Path
from types import TracebackType

from daemon.errors import LockError


class ApplyLock:
    """An exclusive, non-blocking lock on <data_dir>/apply.lock holding the owner's pid."""

    def __init__(self, data_dir: Path) -> None:
        self.path = data_dir / "apply.lock"
        self._fd: int | None = None

    def acquire(self) -> None:
        """Take the lock or raise LockError naming the holder."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError as err:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "?"
            os.close(fd)
            raise LockError(f"another Stratum process (pid {holder}) is applying to {self.path.parent}",
                            hint="wait for it to finish, or use the running daemon (`stratum apply` asks it)") from err
        os.ftruncate(fd, 0)
        os.pwrite(fd, str(os.getpid()).encode(), 0)
        self._fd = fd

    def release(self) -> None:
        """Drop the lock."""
        if self._fd is not None:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> ApplyLock:
        self.acquire()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.release()
