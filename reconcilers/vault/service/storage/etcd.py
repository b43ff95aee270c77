"""The `etcd` backend (etcd v3 through its HTTP gateway, `etcd3gw`: no grpc, which fails with protobuf 7 here).

Keys are `<namespace><path>` (namespace "stratum/vault/" by default). Each put and delete is one etcd request,
atomic on the server; while etcd is away every call raises StorageUnavailable (503 to clients).
"""

from __future__ import annotations

import base64
from typing import Any
from urllib.parse import urlsplit

import etcd3gw
from etcd3gw import exceptions as etcd_errors

from reconcilers.vault.service.storage.base import StorageUnavailable, check_path, check_prefix, children

NAMESPACE = "stratum/vault/"


def _b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode()


def _range_end(raw: bytes) -> str:
    """The first key after every key starting with `raw` (etcd's prefix range), as etcd3gw takes it: a str it
    encodes back to these bytes with latin-1."""
    return (raw[:-1] + bytes([raw[-1] + 1])).decode("latin-1") if raw and raw[-1] < 0xFF else "\0"


class EtcdStore:
    """A KeyValueStore in etcd (`url`: http://host:port)."""

    name = "etcd"

    def __init__(self, url: str, namespace: str = NAMESPACE, timeout_s: float = 5.0) -> None:
        parts = urlsplit(url or "http://127.0.0.1:2379")
        self.namespace = namespace
        self.client: Any = etcd3gw.client(host=parts.hostname or "127.0.0.1", port=parts.port or 2379,
                                          protocol=parts.scheme or "http", timeout=timeout_s)
        self.guard: tuple[str, str] | None = None

    def _key(self, path: str) -> bytes:
        # Bytes: etcd3gw would encode a str key with latin-1, which cannot hold every UTF-8 path.
        return (self.namespace + path).encode()

    def _call(self, what: str, fn: Any, *args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except (etcd_errors.Etcd3Exception, OSError) as err:
            raise StorageUnavailable(self.name, f"{what}: {type(err).__name__}") from err

    def get(self, path: str) -> bytes | None:
        """The value at `path`, or None."""
        values = self._call("get", self.client.get, self._key(check_path(path)))
        return bytes(values[0]) if values else None

    def set_guard(self, key: str | None, value: str = "") -> None:
        """HA fencing: while set, every write is a transaction that applies only if `key` still holds `value`
        (this node's lock), so a node that lost its lease (stalled past it) cannot write."""
        self.guard = (key, value) if key else None

    def _guarded(self, op: dict[str, Any]) -> None:
        assert self.guard is not None
        key, value = self.guard
        txn = {"compare": [{"key": _b64(key.encode()), "result": "EQUAL", "target": "VALUE",
                            "value": _b64(value.encode())}], "success": [op]}
        result = self._call("txn", self.client.transaction, txn)
        if not result.get("succeeded"):
            raise StorageUnavailable(self.name, "this node no longer holds the active lease (HA); nothing was "
                                                "written: send the request to the active node")

    def put(self, path: str, value: bytes) -> None:
        """Store `value` (one atomic etcd put; guarded under HA)."""
        key = self._key(check_path(path))
        if self.guard is not None:
            self._guarded({"request_put": {"key": _b64(key), "value": _b64(value)}})
            return
        self._call("put", self.client.put, key, value)

    def delete(self, path: str) -> None:
        """Remove `path` (guarded under HA)."""
        key = self._key(check_path(path))
        if self.guard is not None:
            self._guarded({"request_delete_range": {"key": _b64(key)}})
            return
        self._call("delete", self.client.delete, key)

    def list(self, prefix: str) -> list[str]:
        """Direct children under `prefix` (a keys-only range read)."""
        check_prefix(prefix)
        full = self._key(prefix)
        found = self._call("list", self.client.get, full, metadata=True, range_end=_range_end(full),
                           keys_only=True)
        keys = [bytes(meta["key"]).decode() for _, meta in found]
        return children([k[len(self.namespace):] for k in keys], prefix)
