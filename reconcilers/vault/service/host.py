"""Where the vault reconciler keeps its vault service: built once when the daemon asks for its interfaces."""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from reconcilers.ports import HttpMount

if TYPE_CHECKING:
    from reconcilers.vault.service.core import VaultService

# Imported on use, not here: the reconciler imports this module in every CLI run, and the service (Cedar,
# SLIP-39, the storage drivers) is only built by a daemon that serves the vault API.
DEFAULT_LISTEN = "127.0.0.1:8200"


def unavailable(why: str) -> Any:
    """An ASGI app answering every request 503 with why the vault could not start (Vault's error shape)."""
    body = json.dumps({"errors": [f"the vault service could not start: {why}; fix it and restart stratumd"]}).encode()

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        await send({"type": "http.response.start", "status": 503, "headers": [
            (b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})
        await send({"type": "http.response.body", "body": body})
    return app


class ServiceHost:
    """The vault service of one daemon (None until `mounts` built it: CLI runs have no vault API)."""

    def __init__(self, settings: Mapping[str, Any], state_dir: Path) -> None:
        self.settings = dict(settings)
        self.state_dir = state_dir
        self.service: VaultService | None = None
        self._mounts: list[HttpMount] | None = None
        self._lock = threading.Lock()
        self.on_built: list[Callable[[VaultService], None]] = []   # the publisher's hooks
        self.coordinator: Any = None                                # ha.Coordinator when [vault] ha is on
        self.sweeper: Any = None                                    # sweeper.Sweeper (database leases)

    def mounts(self) -> list[HttpMount]:
        """The vault API on its own listener, only when the host asks for it: `[vault] enabled = true` (on
        127.0.0.1:8200) or `[vault] listen = "host:port"`. Off by default: an uninitialized vault lets the first
        caller of sys/init hold the root token, so a daemon never offers one unasked."""
        with self._lock:
            if self._mounts is not None:
                return self._mounts
            listen = str(self.settings.get("listen") or (DEFAULT_LISTEN if self.settings.get("enabled") else ""))
            self._mounts = []
            if not listen:
                return self._mounts
            from reconcilers.errors import StratumError
            from reconcilers.vault.service.config import build_service
            from reconcilers.vault.service.errors import ServiceError

            try:
                service = build_service(self.settings, self.state_dir, self.on_built)
                policies = self.saved_policies()
                if policies:
                    service.set_policies(policies)     # in force from the start, before the first run
                if self.settings.get("ha"):
                    self._start_ha(service, listen)
            except (StratumError, ServiceError, OSError, ValueError) as err:
                # The daemon's other work does not depend on the vault: it starts, and the vault API says why
                # it cannot serve (storage away at start, a bad unseal key file, a bad setting).
                why = err.render() if isinstance(err, StratumError) else "; ".join(getattr(err, "messages", [])) \
                    or str(err)
                self._mounts = [HttpMount("/v1", lambda: unavailable(why), listen=listen)]
                return self._mounts
            self.service = service
            from reconcilers.vault.service.sweeper import Sweeper

            self.sweeper = Sweeper(service, float(self.settings.get("sweep_interval_s", 15.0)))
            self.sweeper.start()
            max_body = int(self.settings.get("max_body", 1024 * 1024))

            def factory() -> Any:
                from reconcilers.vault.service.api.app import VaultApp

                return VaultApp(service, max_body)

            self._mounts = [HttpMount("/v1", factory, listen=listen)]
            return self._mounts

    def _start_ha(self, service: VaultService, listen: str) -> None:
        """Active/standby through the shared backend's lock (ha.py)."""
        from reconcilers.vault.service.config import VaultSettingsError
        from reconcilers.vault.service.ha import Coordinator, EtcdLease, Lease, PostgresLease

        url = str(self.settings.get("storage_url") or "")
        lease_s = int(self.settings.get("ha_lease_s", 5))
        lease: Lease
        if service.storage_type == "postgresql":
            lease = PostgresLease(url)
        elif service.storage_type == "etcd":
            lease = EtcdLease(url, lease_s, str(self.settings.get("storage_namespace") or "stratum/vault/"))
        else:
            raise VaultSettingsError("[vault] ha needs a shared storage backend", where="[vault] ha",
                                     hint='set storage = "postgresql" or "etcd" on every node, or drop ha')
        advertise = str(self.settings.get("api_addr") or f"http://{listen}").rstrip("/")
        self.coordinator = Coordinator(service, lease, advertise, interval_s=min(1.0, lease_s / 3))
        self.coordinator.start()

    def close(self) -> None:
        """Stop the sweeper; hand over the lease (HA) so a standby takes over at once."""
        if self.sweeper is not None:
            self.sweeper.stop()
        if self.coordinator is not None:
            self.coordinator.stop()

    @property
    def _policy_file(self) -> Path:
        return self.state_dir / "vault-policies.json"

    def saved_policies(self) -> dict[str, str]:
        """The policies last put in force (kept so a restart enforces them before the first run)."""
        try:
            return dict(json.loads(self._policy_file.read_text()))
        except (OSError, ValueError):
            return {}

    def save_policies(self, files: dict[str, str]) -> None:
        """Keep `files` for the next start (policies are not secret; written atomically)."""
        tmp = self._policy_file.with_suffix(".tmp")
        tmp.write_text(json.dumps(files))
        os.replace(tmp, self._policy_file)


class Publisher:
    """The reconciler's side of the vault service: policies in force, manifests' values at their KV paths.
    Every call is a no-op where no vault service runs (CLI runs, `[vault] listen = ""`)."""

    def __init__(self, host: ServiceHost, current: Callable[[], list[tuple[str, Any]]], prune: bool = True) -> None:
        self.host = host
        self.current = current
        self.prune = prune
        self.mounts: tuple[Any, ...] = ()          # the last succeeded revision's vault/mounts.ncl
        self.roles: tuple[Any, ...] | None = None  # ... and its vault/token_roles.ncl (None: never told)
        host.on_built.append(self._hook)

    def _hook(self, service: VaultService) -> None:
        service.on_open.append(lambda: self._opened(service))

    def _opened(self, service: VaultService) -> None:
        """Whenever the vault opens (unseal, auto-unseal at start, HA takeover): the declared mounts, then every
        loaded manifest's values."""
        from reconcilers.vault.service import sync

        service.ensure_mounts(self.mounts)
        service.ensure_roles(self.roles)
        sync.publish_all(service.reconcile_kv, self.current)

    def _service(self) -> VaultService | None:
        return self.host.service

    def set_policies(self, files: dict[str, str]) -> None:
        """Put a succeeded revision's policies in force (and keep them for the next start)."""
        service = self._service()
        if service is not None and not service.set_policies(files):
            self.host.save_policies(files)

    def set_mounts(self, mounts: tuple[Any, ...]) -> None:
        """Mount what the repo declares (now when the vault is open, else when it opens)."""
        self.mounts = mounts
        service = self._service()
        if service is not None:
            service.ensure_mounts(mounts)

    def set_roles(self, roles: tuple[Any, ...]) -> None:
        """Write the repo's token roles (now when the vault is open, else when it opens)."""
        self.roles = roles
        service = self._service()
        if service is not None:
            service.ensure_roles(roles)

    def publish(self, kv_path: str, values: Any) -> str:
        """Write a manifest's values at `kv_path` (None: removed; soft-deleted unless prune is off)."""
        service = self._service()
        if service is None:
            return "no vault service"
        if values is None:
            return service.reconcile_kv(kv_path, None) if self.prune else "kept (prune = false)"
        from reconcilers.vault.service import sync

        data = sync.kv_values(values)
        return service.reconcile_kv(kv_path, data) if data is not None else "not a mapping"
