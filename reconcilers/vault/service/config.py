"""The vault service as host settings describe it (`[vault]` in stratumd.toml), built when the daemon starts.

    [vault]
    enabled = false                    # true: serve the vault API on 127.0.0.1:8200 (off unless asked for)
    listen = ""                        # or serve it here ("host:port"; TLS with the [http] certificate)
    storage = "file"                   # file | postgresql | etcd
    storage_url = ""                   # postgresql://... or http://127.0.0.1:2379 for etcd
    storage_namespace = "stratum/vault/"   # etcd: the key prefix (one per vault sharing an etcd)
    ha = false                         # active/standby through the shared backend (postgresql, etcd)
    ha_lease_s = 5                     # etcd: the lease a dead active node's lock outlives at most
    api_addr = ""                      # HA: the address standbys redirect clients to (default http://<listen>)
    unseal_key_file = ""               # auto-unseal: a file holding unseal keys (one a line, >= threshold),
                                       # e.g. a systemd credential: $CREDENTIALS_DIRECTORY/vault-unseal
    audit_max_bytes = 67108864         # rotate the audit log past this size
    max_body = 1048576                 # request body cap
    cert_renew_fraction = 0.6667       # certificate references: renew once this share of the lifetime passed
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

from reconcilers.errors import StratumError
from reconcilers.vault.service.core import VaultService
from reconcilers.vault.service.errors import ServiceError
from reconcilers.vault.service.storage.base import KeyValueStore
from reconcilers.vault.service.storage.file import FileStore

STORAGES = ("file", "postgresql", "etcd")


class VaultSettingsError(StratumError):
    """A `[vault]` setting is wrong."""


def open_storage(settings: Mapping[str, Any], state_dir: Path) -> tuple[KeyValueStore, str]:
    """The configured backend and its name."""
    kind = str(settings.get("storage") or "file")
    url = str(settings.get("storage_url") or "")
    if kind == "file":
        return FileStore(Path(url) if url else state_dir / "storage"), kind
    if kind == "postgresql":
        from reconcilers.vault.service.storage.postgresql import PostgresStore

        return PostgresStore(url), kind
    if kind == "etcd":
        from reconcilers.vault.service.storage.etcd import EtcdStore

        return EtcdStore(url, namespace=str(settings.get("storage_namespace") or "stratum/vault/")), kind
    raise VaultSettingsError(f"unknown vault storage {kind!r}", where="[vault] storage",
                             hint=f"use one of {', '.join(STORAGES)}")


def read_unseal_shares(path: Path) -> list[str]:
    """The unseal shares of an auto-unseal file (one a line, at least the threshold); the file must be private."""
    try:
        st = path.stat()
        text = path.read_text()
    except OSError as err:
        raise VaultSettingsError(f"cannot read the unseal key file: {err.strerror}", where=str(path),
                                 hint="fix [vault] unseal_key_file, or unseal by hand (stratum vault unseal)") from err
    if st.st_mode & 0o077:
        raise VaultSettingsError("the unseal key file is readable by others", where=str(path),
                                 hint=f"chmod 600 {path}")
    return [line.strip() for line in text.splitlines() if line.strip()]


def auto_unseal(service: VaultService, path: Path) -> None:
    """Give the service the shares of `path` until it unseals; a located error when they do not."""
    shares = read_unseal_shares(path)
    try:
        for share in shares:
            if not service.unseal(share)["sealed"]:
                return
    except ServiceError as err:
        service.seal.reset()
        raise VaultSettingsError(f"auto-unseal failed: {'; '.join(err.messages)}", where=str(path),
                                 hint="the file holds the unseal keys printed by `stratum vault init`, one a line, "
                                      "at least the threshold") from err
    service.seal.reset()
    raise VaultSettingsError(f"auto-unseal failed: {len(shares)} unseal key(s) are fewer than the threshold",
                             where=str(path), hint="add more of the unseal keys, one a line")


def build_service(settings: Mapping[str, Any], state_dir: Path,
                  hooks: Iterable[Callable[[VaultService], None]] = ()) -> VaultService:
    """Open storage and the audit log, run `hooks` on the new service, then auto-unseal when a key file is
    configured and the vault initialized."""
    state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    store, kind = open_storage(settings, state_dir)
    audit = Path(str(settings.get("audit_file") or state_dir / "audit.log"))
    service = VaultService(store, audit, kind, audit_max_bytes=int(settings.get("audit_max_bytes", 64 << 20)))
    for hook in hooks:
        hook(service)
    key_file = str(settings.get("unseal_key_file") or "")
    key_file = key_file.replace("$CREDENTIALS_DIRECTORY", os.environ.get("CREDENTIALS_DIRECTORY", ""))
    if key_file and service.seal.config() is not None:
        try:
            auto_unseal(service, Path(key_file))
        except VaultSettingsError as err:
            # The vault stays sealed (unseal by hand works); the daemon says why at start.
            import structlog  # here: the daemon has configured it by now (a top-level import would pull in rich)

            structlog.get_logger("stratum.vault").warning("vault_auto_unseal_failed", message=err.render())
    return service
