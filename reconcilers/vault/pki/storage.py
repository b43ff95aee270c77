"""The storage the engine is given (a view of the vault's barrier under the mount), and JSON helpers over it.

The Protocol is the vault service's (reconcilers/vault/service/storage/base.py): one declaration for the barrier,
the engines and Transit. MemoryStore here checks no paths (the service's views do, before an engine sees them).
Values are bytes; the barrier encrypts them with the path as associated data.
"""

from __future__ import annotations

import json
from typing import Any

from reconcilers.vault.service.storage.base import KeyValueStore as KeyValueStore

# Where a mount keeps its CA (ca.py writes it). Here so that planning a declared mount can tell whether a CA
# exists without importing ca.py and cryptography.x509 with it.
CA_KEY = "config/ca"


def get_json(store: KeyValueStore, path: str) -> dict[str, Any] | None:
    """The JSON object stored at `path`, or None."""
    raw = store.get(path)
    if raw is None:
        return None
    value = json.loads(raw)
    return value if isinstance(value, dict) else None


def put_json(store: KeyValueStore, path: str, value: dict[str, Any]) -> None:
    """Store a JSON object at `path` (compact, sorted keys so equal values store equal bytes)."""
    store.put(path, json.dumps(value, sort_keys=True, separators=(",", ":")).encode())


class MemoryStore:
    """A KeyValueStore in a dict: for the benchmark and for callers that need a scratch store, not a stand-in
    for the barrier (the tests say when they use it)."""

    def __init__(self) -> None:
        self.data: dict[str, bytes] = {}

    def get(self, path: str) -> bytes | None:
        return self.data.get(path)

    def put(self, path: str, value: bytes) -> None:
        self.data[path] = bytes(value)

    def delete(self, path: str) -> None:
        self.data.pop(path, None)

    def list(self, prefix: str) -> list[str]:
        children: set[str] = set()
        for key in self.data:
            if key.startswith(prefix):
                rest = key[len(prefix):]
                head, sep, _ = rest.partition("/")
                children.add(head + sep)
        return sorted(children)
