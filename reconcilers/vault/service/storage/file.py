"""The `file` backend (the embedded default): one file per entry under a root directory, crash-safe.

Each segment of a path is percent-encoded (everything but letters, digits, `_` and `-`; so `.` is encoded and
no name can be `..` or start with a dot), leaves end in `.v` and folders in `.d`, so "a" and "a/b" can both
exist as in Vault. A write goes to a temporary file in the same directory, is fsynced, renamed over the entry
and the directory is fsynced: a crash leaves the old value or the new one, never a torn file. Temporary files
start with "." and are swept at open.
"""

from __future__ import annotations

import functools
import os
import threading
from pathlib import Path
from urllib.parse import quote, unquote

from reconcilers.vault.service.storage.base import StorageUnavailable, check_path, check_prefix

_SAFE = "_-"          # quote() keeps letters and digits; "." "~" and "/" are encoded by passing safe=_SAFE


_FILES_MAX = 8192


@functools.lru_cache(maxsize=8192)
def _enc(segment: str) -> str:
    return quote(segment, safe=_SAFE).replace(".", "%2E").replace("~", "%7E")


class FileStore:
    """A KeyValueStore in a directory (created 0700)."""

    name = "file"

    def __init__(self, root: Path) -> None:
        self.root = root
        self._root = str(root)
        self._lock = threading.Lock()      # one writer at a time: renames of one directory stay ordered
        self._files: dict[str, str] = {}   # valid path -> its file: every request maps the same few paths again
        try:
            root.mkdir(parents=True, exist_ok=True, mode=0o700)
            self._sweep()
        except OSError as err:
            raise StorageUnavailable(self.name, f"{root}: {err.strerror}") from err

    def _sweep(self) -> None:
        """Remove temporary files a crash left behind (never a committed entry)."""
        for dirpath, _dirs, files in os.walk(self.root):
            for f in files:
                if f.startswith(".tmp-"):
                    os.unlink(os.path.join(dirpath, f))

    def _file(self, path: str) -> str:
        found = self._files.get(path)
        if found is None:
            segs = check_path(path).split("/")                 # an invalid path raises: never kept
            found = os.path.join(self._root, *(_enc(s) + ".d" for s in segs[:-1]), _enc(segs[-1]) + ".v")
            if len(self._files) >= _FILES_MAX:
                self._files.clear()                             # bounded; a race only costs a recomputation
            self._files[path] = found
        return found

    def get(self, path: str) -> bytes | None:
        """The value at `path`, or None."""
        target = self._file(path)
        try:
            with open(target, "rb") as fh:
                return fh.read()
        except (FileNotFoundError, NotADirectoryError):
            return None
        except OSError as err:
            raise StorageUnavailable(self.name, f"reading {path}: {err.strerror}") from err

    def put(self, path: str, value: bytes) -> None:
        """Write `value` atomically (temp file, fsync, rename, fsync of the directory)."""
        target = Path(self._file(path))
        with self._lock:
            try:
                target.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
                tmp = target.parent / f".tmp-{os.getpid()}-{threading.get_ident()}"
                fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
                try:
                    view = memoryview(value)
                    while view:
                        view = view[os.write(fd, view):]
                    os.fsync(fd)
                finally:
                    os.close(fd)
                os.replace(tmp, target)
                _fsync_dir(target.parent)
            except OSError as err:
                try:
                    tmp.unlink()
                except (OSError, UnboundLocalError):
                    pass  # nothing was created, or it is already gone: the old value stands either way
                raise StorageUnavailable(self.name, f"writing {path}: {err.strerror}") from err

    def delete(self, path: str) -> None:
        """Remove `path`, and the folders it leaves empty."""
        target = Path(self._file(path))
        with self._lock:
            try:
                target.unlink()
            except (FileNotFoundError, NotADirectoryError):
                return
            except OSError as err:
                raise StorageUnavailable(self.name, f"deleting {path}: {err.strerror}") from err
            _fsync_dir(target.parent)
            parent = target.parent
            while parent != self.root:
                try:
                    parent.rmdir()          # only succeeds when empty: a folder LIST would show as "name/"
                except OSError:
                    break
                parent = parent.parent

    def list(self, prefix: str) -> list[str]:
        """Direct children under `prefix` ("dir/" for folders with something in them)."""
        check_prefix(prefix)
        folder = self.root.joinpath(*(_enc(s) + ".d" for s in prefix.split("/")[:-1])) if prefix else self.root
        try:
            names = os.listdir(folder)
        except (FileNotFoundError, NotADirectoryError):
            return []
        except OSError as err:
            raise StorageUnavailable(self.name, f"listing {prefix}: {err.strerror}") from err
        out: set[str] = set()
        for name in names:
            if name.endswith(".v"):
                out.add(unquote(name[:-2]))
            elif name.endswith(".d"):
                out.add(unquote(name[:-2]) + "/")
        return sorted(out)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
