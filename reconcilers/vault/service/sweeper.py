"""Background work of the engines on the active, unsealed vault: expired database leases revoked (bounded
connections, retried with backoff by the reaper itself), static database roles rotated when their period
has passed, transit keys rotated when their auto_rotate_period has passed (as Vault does). One thread per
daemon; a failing sweep is logged and tried again at the next tick. Leases live in the vault's storage, so a
restart (or an HA takeover) picks up where the last sweep left."""

from __future__ import annotations

import threading
import time
from typing import Any

SWEEP_INTERVAL_S = 15.0


def rotate_transit_due(store: Any, now: float) -> list[str]:
    """Transit keys whose latest version is older than their auto_rotate_period get a new version, as Vault
    rotates them itself (declared in the repo or set through the API); the names rotated."""
    from reconcilers.vault.transit import keys

    done: list[str] = []
    for name in keys.names(store):
        with keys.WRITE_LOCK:
            key = keys.load(store, name)
            if key is None or not key.auto_rotate_period:
                continue
            if now - key.versions[key.latest_version].created >= key.auto_rotate_period:
                keys.save(store, keys.rotated(key))
                done.append(name)
    return done


class Sweeper:
    """Calls `sweep_once` every `interval_s` seconds on a thread until stopped."""

    def __init__(self, service: Any, interval_s: float = SWEEP_INTERVAL_S, max_connections: int = 4) -> None:
        self.service = service
        self.interval_s = interval_s
        self.max_connections = max_connections
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="vault-sweeper", daemon=True)

    def sweep_once(self, now: float | None = None) -> dict[str, Any]:
        """One sweep over every database mount: {mount: (reap report, rotations)}; nothing while sealed or
        standby."""
        svc = self.service
        if svc.barrier.sealed or svc.standby:
            return {}
        from reconcilers.vault.database import creds, reaper

        moment = time.time() if now is None else now
        out: dict[str, Any] = {}
        for entry in list(svc.mounts.entries.values()):
            if entry.type == "transit":
                out[entry.path] = rotate_transit_due(svc.mounts.store_of(entry), moment)
            if entry.type != "database":
                continue
            store = svc.mounts.store_of(entry)
            out[entry.path] = (reaper.reap(store, moment, self.max_connections), creds.rotate_due(store, int(moment)))
        return out

    def start(self) -> None:
        """Start the thread."""
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            try:
                self.sweep_once()
            except Exception as err:  # noqa: BLE001 a failed sweep (storage or a database away) retries next tick
                import structlog  # the daemon configured it long before

                structlog.get_logger("stratum.vault").warning("vault_sweep_failed", error=type(err).__name__,
                                                               message=str(err)[:300])

    def stop(self) -> None:
        """Stop the thread."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=5)
