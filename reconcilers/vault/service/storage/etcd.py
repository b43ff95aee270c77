"""The `etcd` backend (etcd v3 through its HTTP gateway, `etcd3gw`: no grpc, which fails with protobuf 7 here).

Keys are `<namespace><path>` (namespace "stratum/vault/" by default). Each put and delete is one etcd request,
atomic on the server; while etcd is away every call raises StorageUnavailable (503 to clients).
"""

from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit

import etcd3gw
from etcd3gw import exceptions as etcd_errors

from reconcilers.vault.service.storage.base import StorageUnavailable, check_path, check_prefix, children

NAMESPACE = "stratum/vault/"


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

    def put(self, path: str, value: bytes) -> None:
        """Store `value` (one atomic etcd put)."""
        self._call("put", self.client.put, self._key(check_path(path)), value)

    def delete(self, path: str) -> None:
        """Remove `path`."""
        self._call("delete", self.client.delete, self._key(check_path(path)))

    def list(self, prefix: str) -> list[str]:
        """Direct children under `prefix` (a keys-only range read)."""
        check_prefix(prefix)
        full = self._key(prefix)
        found = self._call("list", self.client.get, full, metadata=True, range_end=_range_end(full),
                           keys_only=True)
        keys = [bytes(meta["key"]).decode() for _, meta in found]
        return children([k[len(self.namespace):] for k in keys], prefix)
