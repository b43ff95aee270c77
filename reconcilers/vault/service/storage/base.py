"""The storage interface every backend implements, and the path rules they share.

A store maps paths ("a/b/c": segments without "." or "..", no empty segment, printable) to bytes. `list` gives
the direct children under a prefix as Vault's LIST does: leaves by name, folders as "name/". Backends raise
StorageUnavailable when the store cannot be reached, and never leave a half-written value behind.
"""

from __future__ import annotations

import functools
import re
from typing import Protocol

from reconcilers.vault.service.errors import BadRequest, Unavailable

MAX_PATH = 1024            # bytes of a storage path
MAX_SEGMENT = 200          # characters of one segment (file names must stay under 255 bytes once encoded)


class KeyValueStore(Protocol):
    """What the barrier, the engines and Transit read and write through (structural: any object with these)."""

    def get(self, path: str) -> bytes | None: ...
    def put(self, path: str, value: bytes) -> None: ...
    def delete(self, path: str) -> None: ...
    # direct children names under prefix, Vault LIST style ("dir/" for folders)
    def list(self, prefix: str) -> list[str]: ...


class StorageUnavailable(Unavailable):
    """The backend cannot be reached or refused the operation; nothing was changed."""

    def __init__(self, backend: str, detail: str) -> None:
        super().__init__(f"storage backend {backend} unavailable: {detail}; nothing was written, retry when it is back")


_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


@functools.lru_cache(maxsize=8192)
def check_path(path: str) -> str:
    """`path` when it is a valid storage path, else BadRequest naming the rule it breaks (valid paths are
    cached: the same few paths are checked on every request, by each layer they pass through)."""
    size = len(path) if path.isascii() else len(path.encode("utf-8", "surrogatepass"))
    if not path or size > MAX_PATH:
        raise BadRequest(f"invalid path {path[:64]!r}: it must be 1..{MAX_PATH} bytes")
    if _CONTROL.search(path):
        raise BadRequest(f"invalid path {path[:64]!r}: control characters are not allowed")
    if not path.isascii():
        try:
            path.encode("utf-8")
        except UnicodeEncodeError as err:
            raise BadRequest(f"invalid path {path[:64]!r}: not valid UTF-8") from err
    for seg in path.split("/"):
        if seg in ("", ".", ".."):
            raise BadRequest(f"invalid path {path[:64]!r}: empty, '.' or '..' segments are not allowed")
        if len(seg) > MAX_SEGMENT:
            raise BadRequest(f"invalid path {path[:64]!r}: a segment is longer than {MAX_SEGMENT} characters")
    return path


def check_prefix(prefix: str) -> str:
    """A LIST prefix: "" (the top) or a valid path followed by "/"."""
    if prefix == "":
        return prefix
    if not prefix.endswith("/"):
        raise BadRequest(f"invalid list prefix {prefix[:64]!r}: it must end with '/'")
    check_path(prefix[:-1])
    return prefix


def children(keys: list[str], prefix: str) -> list[str]:
    """Vault LIST of full `keys` (all starting with `prefix`): direct leaves, and folders once as "name/"."""
    out: set[str] = set()
    for key in keys:
        rest = key[len(prefix):]
        head, sep, _ = rest.partition("/")
        if head:
            out.add(head + sep)
    return sorted(out)


class MemoryStore:
    """A dict as a store: the reference the conformance suite holds the real backends to."""

    def __init__(self) -> None:
        self.data: dict[str, bytes] = {}

    def get(self, path: str) -> bytes | None:
        """The value at `path`, or None."""
        return self.data.get(check_path(path))

    def put(self, path: str, value: bytes) -> None:
        """Store `value` at `path`."""
        self.data[check_path(path)] = bytes(value)

    def delete(self, path: str) -> None:
        """Remove `path` (no error when absent)."""
        self.data.pop(check_path(path), None)

    def list(self, prefix: str) -> list[str]:
        """Direct children under `prefix`."""
        check_prefix(prefix)
        return children([k for k in self.data if k.startswith(prefix)], prefix)
