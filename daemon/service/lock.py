"""Who may use a data directory's index, and when (fcntl locks, released when their process dies).

- `apply.lock`: held exclusively by the one process that writes the index (the daemon, or `stratum apply`
  without a daemon), shared by a CLI reader for the instant it reads the index file directly.
- `stratumd.starting`: the pid of a daemon on its way up. A reader that sees it (and the pid alive) does not
  open the index at all: it waits for the daemon's socket. So a loop polling `stratum status` can never keep
  a daemon down, and a reader caught mid-read only delays it by that read (the daemon waits, bounded).
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import time
from collections.abc import Iterator
from pathlib import Path
from types import TracebackType

from daemon.errors import LockError

POLL_S = 0.02


class ApplyLock:
    """An exclusive lock on <data_dir>/apply.lock holding the owner's pid.

    `wait` bounds how long to wait for it: readers hold it shared for the length of one read, so a writer
    waits those out; another writer (a second daemon, an apply) holds it for its whole life and is refused.
    """

    def __init__(self, data_dir: Path, wait: float = 5.0) -> None:
        self.path = data_dir / "apply.lock"
        self.wait = wait
        self._fd: int | None = None

    def acquire(self) -> None:
        """Take the lock or raise LockError naming the holder."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        deadline = time.monotonic() + self.wait
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError as err:
                holder = os.pread(fd, 32, 0).decode(errors="replace").strip()
                # A writer leaves its pid in the file (and clears it on release); readers write nothing.
                # So a live pid is a writer, refused at once; otherwise readers hold it for one read each.
                writer = holder.isdigit() and _alive(int(holder))
                if not writer and time.monotonic() < deadline:
                    time.sleep(POLL_S)
                    continue
                os.close(fd)
                if not writer:
                    raise LockError(f"readers kept the index of {self.path.parent} busy for {self.wait:.0f} s",
                                    hint="stop the processes reading it directly (a loop of `stratum status`?) "
                                         "and try again") from err
                raise LockError(f"another Stratum process (pid {holder}) is applying to {self.path.parent}",
                                hint="wait for it to finish, or use the running daemon (`stratum apply` asks it)"
                                ) from err
        os.ftruncate(fd, 0)
        os.pwrite(fd, str(os.getpid()).encode(), 0)
        self._fd = fd

    def release(self) -> None:
        """Drop the lock."""
        if self._fd is not None:
            os.ftruncate(self._fd, 0)           # no stale pid for the next one to take for a writer
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> ApplyLock:
        self.acquire()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.release()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True                     # alive, owned by another user
    return True


class StartingMark:
    """<data_dir>/stratumd.starting: "a daemon (this pid) is coming up here; readers, wait for its socket"."""

    def __init__(self, data_dir: Path) -> None:
        self.path = data_dir / "stratumd.starting"

    def set(self) -> None:
        """Announce this process as a daemon on its way up."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(self.path.name + f".{os.getpid()}")
        tmp.write_text(str(os.getpid()))
        tmp.replace(self.path)

    def clear(self) -> None:
        """The daemon answers on its socket now (or gave up)."""
        with contextlib.suppress(OSError):
            if self.path.read_text().strip() == str(os.getpid()):
                self.path.unlink()

    def pending(self) -> bool:
        """True while a live daemon announced itself and has not cleared the mark."""
        try:
            text = self.path.read_text().strip()
        except OSError:
            return False
        return text.isdigit() and _alive(int(text))


@contextlib.contextmanager
def shared_read(data_dir: Path) -> Iterator[bool]:
    """Hold apply.lock shared while reading the index file directly; yields False (holding nothing) when a
    writer holds it or a daemon is starting: the caller must then not open the index, but wait and ask again."""
    path = data_dir / "apply.lock"
    if StartingMark(data_dir).pending() or not path.exists():
        # No lock file: nothing ever wrote here (a reader opens no index file that does not exist either).
        yield not StartingMark(data_dir).pending()
        return
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        yield True                      # an unreadable lock file: reading the index will say what is wrong
        return
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            yield False
            return
        if StartingMark(data_dir).pending():   # announced between the two checks: let it win
            yield False
            return
        yield True
    finally:
        os.close(fd)
