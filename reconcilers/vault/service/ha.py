"""Active/standby for vaults sharing a PostgreSQL or etcd backend: one daemon holds a lease in the backend and
serves; the others stand by and redirect clients to it (307, as Vault does), and take over when the lease is
free again.

  postgresql  a session advisory lock on a connection of its own: held while that connection lives, so a
              killed daemon's lock goes with its socket
  etcd        an etcd lock (a key put under a lease of `lease_s` seconds, kept alive while active)

The active node records its advertised address at `core/leader` (in clear: an address is not a secret) for
`sys/leader` and the redirects. On becoming active a node reloads what another node may have changed (the
keyring after a rotation, the mount table). No write is acknowledged before it is in the shared backend, so a
takeover loses none.
"""

from __future__ import annotations

import json
import threading
import time
import zlib
from typing import Any, Protocol

LEADER_PATH = "core/leader"
LOCK_NAME = "stratum-vault-active"


class Lease(Protocol):
    """The backend's lock: `hold` tries to take it (or checks it is still held); `release` lets it go;
    `fence(store)` makes the store's writes conditional on still holding it (None: unconditional again)."""

    def hold(self) -> bool: ...
    def release(self) -> None: ...
    def fence(self, store: Any, on: bool) -> None: ...


class PostgresLease:
    """pg_try_advisory_lock on a dedicated connection."""

    def __init__(self, url: str, timeout_s: float = 3.0) -> None:
        self.url = url
        self.timeout_s = timeout_s
        self.key = zlib.crc32(LOCK_NAME.encode())
        self._conn: Any = None
        self._held = False

    def hold(self) -> bool:
        """True while this node holds the lock."""
        import psycopg

        try:
            if self._conn is None or self._conn.closed:
                self._held = False
                self._conn = psycopg.connect(self.url, autocommit=True, connect_timeout=max(1, int(self.timeout_s)))
            if self._held:
                self._conn.execute("SELECT 1")          # the lock lives as long as this session does
                return True
            row = self._conn.execute("SELECT pg_try_advisory_lock(%s)", (self.key,)).fetchone()
            self._held = bool(row and row[0])
            return self._held
        except psycopg.Error:
            self._drop()
            return False

    def _drop(self) -> None:
        if self._conn is not None:
            try:
                self._conn.close()
            except Exception:  # noqa: BLE001 the connection is already broken; we only want it gone
                pass
        self._conn, self._held = None, False

    def release(self) -> None:
        """Close the session (the lock goes with it)."""
        self._drop()

    def fence(self, store: Any, on: bool) -> None:
        """Writes of `store` apply only while this session holds the lock."""
        if on and self._conn is not None:
            store.set_guard(self.key, self._conn.info.backend_pid)
        else:
            store.set_guard(None)


class EtcdLease:
    """An etcd lock under a lease."""

    def __init__(self, url: str, lease_s: int = 5, namespace: str = "") -> None:
        from urllib.parse import urlsplit

        import etcd3gw

        parts = urlsplit(url or "http://127.0.0.1:2379")
        self.client = etcd3gw.client(host=parts.hostname or "127.0.0.1", port=parts.port or 2379,
                                     protocol=parts.scheme or "http", timeout=max(1, lease_s // 2))
        # One lock per vault: vaults sharing an etcd under different namespaces do not contend.
        self.lock = self.client.lock(namespace + LOCK_NAME, ttl=lease_s)
        self._held = False

    def hold(self) -> bool:
        """Take the lock, or keep its lease alive while held."""
        try:
            if self._held:
                self._held = self.lock.refresh() > 0 and self.lock.is_acquired()
            else:
                self._held = bool(self.lock.acquire())
        except Exception:  # noqa: BLE001 etcd away (any client error): not the active node until it is back
            self._held = False
        return self._held

    def fence(self, store: Any, on: bool) -> None:
        """Writes of `store` apply only while the lock key holds our value."""
        store.set_guard(self.lock.key if on else None, self.lock._uuid)

    def release(self) -> None:
        """Delete the lock key if ours."""
        try:
            if self._held:
                self.lock.release()
        except Exception:  # noqa: BLE001 etcd away: the lease expires by itself
            pass
        self._held = False


class Coordinator:
    """Polls the lease every `interval_s` on a thread; tells the service when it becomes active or standby."""

    def __init__(self, service: Any, lease: Lease, advertise: str, interval_s: float = 1.0) -> None:
        self.service = service
        self.lease = lease
        self.advertise = advertise
        self.interval_s = interval_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="vault-ha", daemon=True)
        self._holding = False
        service.ha = self
        service.standby = True           # until the lease says otherwise

    @property
    def active(self) -> bool:
        """True on the active node."""
        return not self.service.standby

    def leader(self) -> str:
        """The advertised address of the active node ("" when none is known)."""
        try:
            raw = self.service.store.get(LEADER_PATH)
            return str(json.loads(raw)["address"]) if raw else ""
        except Exception:  # noqa: BLE001 storage away: no leader known
            return ""

    def start(self) -> None:
        """First decision now (so a lone node is active at once), then poll."""
        self.step()
        self._thread.start()

    def step(self) -> None:
        """One poll of the lease. A sealed node never holds it: it could serve nothing."""
        if self.service.barrier.sealed:
            self.service.standby = True
            if self._holding:
                self.lease.release()
                self._holding = False
            return
        held = self._holding = self.lease.hold()
        if held and self.service.standby:
            try:
                self.lease.fence(self.service.store, True)
                self.service.store.put(LEADER_PATH, json.dumps({"address": self.advertise,
                                                                "since": time.time()}).encode())
                self.service.become_active()
            except Exception:  # noqa: BLE001 storage away: stay standby and let the lease go
                self.lease.release()
                self._holding = False
        elif not held and not self.service.standby:
            # The fence stays up: a request already past the standby check still cannot write.
            self.service.standby = True

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            self.step()

    def stop(self) -> None:
        """Stop polling and release the lease (a stopping node hands over at once)."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=5)
        self.lease.release()
        self.service.standby = True
