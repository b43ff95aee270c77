"""Where the evaluator writes a commit's Nickel files for the engine to import: in memory when it can.

Nickel resolves imports on disk, so every file evaluated is first written out. On this kind of host a file
create costs about half a millisecond on disk (and as much again to delete the directory afterwards, which
`stratum validate` does): at 20,000 files that was the largest part of a cold evaluation. A private
directory in /dev/shm (tmpfs) costs microseconds per file; it is emptied after every evaluation, so it holds
memory only while one runs. Without a usable /dev/shm, or when the files would not fit in it with room to
spare, the work tree stays on disk under the cache directory (kept between evaluations there, since
rewriting it is what costs).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

SHM = Path("/dev/shm")
_PREFIX = "stratum-nickel-"
_SPARE_BYTES = 256 * 1024 * 1024          # tmpfs room left to everything else on the host
_FILE_COST = 4096                         # tmpfs spends at least one page per file


@dataclass(frozen=True, slots=True)
class Scratch:
    """A work tree: `path`, and whether it lives in memory (emptied after each evaluation)."""

    path: Path
    in_memory: bool

    @classmethod
    def create(cls, disk_path: Path, shm: Path = SHM) -> Scratch:
        """A private directory in `shm` when it is usable with room to spare, else `disk_path`."""
        if _free(shm) > _SPARE_BYTES:
            _sweep_stale(shm)
            with contextlib.suppress(OSError):
                return cls(Path(tempfile.mkdtemp(prefix=f"{_PREFIX}{os.getpid()}-", dir=shm)), True)
        return cls.on_disk(disk_path)

    @classmethod
    def on_disk(cls, disk_path: Path) -> Scratch:
        """The work tree under the cache directory."""
        disk_path.mkdir(parents=True, exist_ok=True)
        return cls(disk_path, False)

    def fits(self, files: int, size: int) -> bool:
        """Whether `files` files of `size` bytes in all can be written here, leaving the spare room."""
        if not self.in_memory:
            return True
        return _free(self.path) - files * _FILE_COST - size > _SPARE_BYTES

    def wipe(self) -> None:
        """Empty an in-memory work tree (a disk one is kept: the next evaluation rewrites only changes)."""
        if self.in_memory:
            shutil.rmtree(self.path, ignore_errors=True)
            self.path.mkdir(mode=0o700, exist_ok=True)

    def remove(self) -> None:
        """Remove an in-memory work tree for good (the evaluator is closing)."""
        if self.in_memory:
            shutil.rmtree(self.path, ignore_errors=True)


def _free(path: Path) -> int:
    """Bytes available to us at `path` (0 when it cannot be used)."""
    try:
        if not path.is_dir() or not os.access(path, os.W_OK | os.X_OK):
            return 0
        st = os.statvfs(path)
    except OSError:
        return 0
    return st.f_bavail * st.f_frsize


def _sweep_stale(shm: Path) -> None:
    """Remove our work trees left by processes that died without closing (a kill -9): ours by owner, theirs
    by a process id that no longer runs."""
    try:
        candidates = [e for e in os.scandir(shm) if e.name.startswith(_PREFIX) and e.is_dir(follow_symlinks=False)]
    except OSError:
        return
    for entry in candidates:
        pid = entry.name[len(_PREFIX):].partition("-")[0]
        try:
            if entry.stat(follow_symlinks=False).st_uid != os.getuid() or not pid.isdigit():
                continue
            os.kill(int(pid), 0)
        except ProcessLookupError:
            shutil.rmtree(entry.path, ignore_errors=True)
        except OSError:
            continue                      # alive (or not ours to signal): leave it
