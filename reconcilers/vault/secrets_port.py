"""The vault's answer to the secrets port (reconcilers/ports.py): `<manifest path>#<dotted key>` to the decrypted
value, at the moment an action needs it. The daemon's broker audits each use; nothing here records the value."""

from __future__ import annotations

from typing import Any, Protocol

from reconcilers.errors import InputError, StratumError


class Values(Protocol):
    """What the port reads of the vault reconciler (its `get`), declared here so the two do not import each other."""

    def get(self, path: str, key: str | None = None) -> Any: ...


class VaultSecrets:
    """SecretsPort over the vault reconciler's loaded manifests."""

    def __init__(self, vault: Values) -> None:
        self._vault = vault

    def resolve(self, reference: str, *, purpose: str) -> str:
        """The value at `reference`; a mapping or list is refused (reference one value)."""
        path, sep, key = reference.partition("#")
        if not sep or not path or not key:
            raise InputError(f"secret reference {reference!r} is not <manifest path>#<key>", where=reference,
                             hint="write it as secrets/db.yaml#password (a dotted key for nested values)")
        try:
            value = self._vault.get(path, key)
        except KeyError as err:
            raise StratumError(f"secret {reference} is not loaded or not readable by this daemon", where=reference,
                               hint="check the path and key, that the manifest is applied, and that the daemon's "
                                    "key is among its recipients") from err
        if isinstance(value, dict | list):
            raise InputError(f"secret {reference} holds a mapping or list, not one value", where=reference,
                             hint="reference a single key inside it")
        return str(value)
