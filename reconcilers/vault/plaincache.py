"""The daemon's only place for decrypted values: a bounded, clearable cache in memory.

Plaintext is made when an apply action loads a manifest or a lookup needs a value, never at load, validate or
plan. The cache holds at most `limit` manifests' values (least recently used out first: a lookup of an evicted
one decrypts again from the ciphertext the store keeps), an entry goes when its manifest is replaced or
unloaded, and `clear` drops everything (on close). Nothing here is ever written anywhere.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from typing import Any

DEFAULT_LIMIT = 256


class PlainCache:
    """(path, blob id) -> decrypted values, bounded; repr never shows a value."""

    def __init__(self, limit: int = DEFAULT_LIMIT) -> None:
        self.limit = max(1, limit)
        self._items: OrderedDict[tuple[str, str], dict[str, Any]] = OrderedDict()
        self._lock = threading.Lock()
        self.decrypted = 0                    # how many times plaintext was made (tests and metrics read it)

    def __repr__(self) -> str:
        return f"PlainCache({len(self._items)}/{self.limit} manifests)"

    def __len__(self) -> int:
        return len(self._items)

    def get(self, path: str, blob_id: str) -> dict[str, Any] | None:
        """The cached values, or None."""
        with self._lock:
            values = self._items.get((path, blob_id))
            if values is not None:
                self._items.move_to_end((path, blob_id))
            return values

    def put(self, path: str, blob_id: str, values: dict[str, Any]) -> None:
        """Cache the values of one manifest blob (dropping other blobs of the same path, and the oldest)."""
        with self._lock:
            self.decrypted += 1
            for key in [k for k in self._items if k[0] == path and k[1] != blob_id]:
                del self._items[key]
            self._items[(path, blob_id)] = values
            self._items.move_to_end((path, blob_id))
            while len(self._items) > self.limit:
                self._items.popitem(last=False)

    def drop(self, path: str) -> None:
        """Forget every cached blob of `path` (unloaded or replaced)."""
        with self._lock:
            for key in [k for k in self._items if k[0] == path]:
                del self._items[key]

    def clear(self) -> None:
        """Forget everything."""
        with self._lock:
            self._items.clear()
