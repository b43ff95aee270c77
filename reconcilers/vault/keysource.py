"""Where the daemon's own private key (the manifest-decryption key) comes from.

    FileKeySource     a 0600 file in the data directory, generated on first use: the default, vault disabled
    SealedKeySource   once the vault service is initialized, the key lives in its barrier (encrypted storage,
                      `sys/stratum/daemon-keys/<fingerprint>`): `stratum vault init` moves the key file there
                      and removes it; while the vault is sealed the key cannot be read (KeySealedError: apply
                      waits), after unseal it can. With the vault disabled or not yet initialized it is the
                      file, unchanged.

When the key moved, `<key file>.sealed` keeps the daemon's recipient (public) in clear: plans, `stratum secret
daemon-key` and the reference checks need it while the vault is sealed; nothing else of the key is on disk.
"""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Protocol

from reconcilers.vault.backends import get_backend
from reconcilers.vault.errors import NoKeyError, VaultError
from reconcilers.vault.keys import (
    KeyRing,
    Recipient,
    generate,
    keyring_from_text,
    read_key_file,
    render_key_file,
    write_key_file,
)

BARRIER_PREFIX = "sys/stratum/daemon-keys/"    # in the vault's barrier: the key file's text, encrypted
SEALED_HINT = "the vault is sealed: unseal with `stratum vault unseal`"


class KeySealedError(VaultError):
    """The daemon's key is behind the vault's seal and the vault is sealed now (wait: not a bad revision)."""


class KeySource(Protocol):
    """Supplies the daemon's key ring."""

    def keyring(self) -> KeyRing:
        """The daemon's private keys."""

    def recipient(self) -> Recipient:
        """The recipient users add to their creation rules so the daemon can decrypt."""


def barrier_path(recipient: Recipient) -> str:
    """Where a daemon's key lives in the barrier: under its recipient's fingerprint."""
    return BARRIER_PREFIX + recipient.fingerprint.rpartition(":")[2]


def moved_marker(key_file: Path) -> Path:
    """`<key file>.sealed`: present once the key moved behind the seal (holds the public recipient only)."""
    return key_file.with_name(key_file.name + ".sealed")


def _sealed_error(where: Path) -> KeySealedError:
    return KeySealedError("the daemon's key is behind the vault's seal and the vault is sealed", where=str(where),
                          hint=SEALED_HINT)


class FileKeySource:
    """A key file (mode 0600), generated on first use when `create` is set. Once the key moved behind the vault's
    seal (the `.sealed` marker), this source never makes a new key: it names the recipient from the marker and
    refuses the private key with KeySealedError."""

    def __init__(self, path: Path, create: bool = True, backend: str = "openssl") -> None:
        self.path = path
        self.create = create
        self.backend = backend
        self._ring: KeyRing | None = None

    @property
    def moved(self) -> bool:
        """True when the key was moved into the vault's barrier (and the file removed)."""
        return not self.path.exists() and moved_marker(self.path).exists()

    def has_key(self) -> bool:
        """True when a key exists (here or behind the seal): a check that never creates one."""
        return self.path.exists() or self.moved

    def keyring(self) -> KeyRing:
        """The key ring, generating the key file first when missing and allowed."""
        if self._ring is None:
            if self.moved:
                raise _sealed_error(self.path)
            if not self.path.exists():
                if not self.create:
                    raise NoKeyError(
                        "the daemon's key file does not exist",
                        where=str(self.path),
                        hint="run `stratum secret daemon-key` to create it",
                    )
                identity, signing = generate(get_backend(self.backend))
                self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
                write_key_file(self.path, identity, signing, comment="the Stratum daemon's own key")
                os.chmod(self.path, 0o600)
            self._ring = read_key_file(self.path)
            if not self._ring.identities:
                raise NoKeyError(
                    "the daemon's key file holds no secret key",
                    where=str(self.path),
                    hint="move it away and let Stratum generate a new one",
                )
        return self._ring

    def recipient(self) -> Recipient:
        """The daemon's recipient (from the marker when the key moved behind the seal)."""
        if self.moved:
            return read_marker(self.path)
        return self.keyring().identities[0].recipient


def read_marker(key_file: Path) -> Recipient:
    """The recipient kept in clear beside where the key file was."""
    marker = moved_marker(key_file)
    try:
        return Recipient.parse(str(json.loads(marker.read_text())["recipient"]))
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise NoKeyError("the marker of the daemon's sealed key is unreadable", where=str(marker),
                         hint="unseal the vault: the daemon writes it again") from err


class BarrierLike(Protocol):
    """What the sealed key source needs of the vault's barrier (reconcilers/vault/service/barrier.py)."""

    @property
    def sealed(self) -> bool: ...

    def initialized(self) -> bool: ...

    def get(self, path: str) -> bytes | None: ...

    def put(self, path: str, value: bytes) -> None: ...


class SealedKeySource:
    """The daemon's key behind the vault's seal once the vault is initialized (see the module docstring).
    `barrier` answers the running vault service's barrier, or None where no vault service runs."""

    def __init__(self, file: FileKeySource, barrier: Callable[[], BarrierLike | None]) -> None:
        self.file = file
        self._barrier = barrier
        self._ring: KeyRing | None = None
        self._lock = threading.Lock()

    def _active(self) -> BarrierLike | None:
        barrier = self._barrier()
        return barrier if barrier is not None and barrier.initialized() else None

    def has_key(self) -> bool:
        """True when a key exists anywhere (never creates one)."""
        return self.file.has_key() or self._ring is not None

    def keyring(self) -> KeyRing:
        """The key ring: from the barrier when the vault is initialized (KeySealedError while sealed), else the
        file's."""
        barrier = self._active()
        if barrier is None:
            return self.file.keyring()
        with self._lock:
            if barrier.sealed:
                self._ring = None
                raise _sealed_error(self.file.path)
            if self._ring is None:
                self._ring = self.adopt(barrier)
            return self._ring

    def recipient(self) -> Recipient:
        """The daemon's recipient; while sealed, from the marker (never a new key)."""
        if self.file.moved:
            return read_marker(self.file.path)
        if self._active() is None or self.file.path.exists():
            return self.file.recipient()
        return self.keyring().identities[0].recipient

    def forget(self) -> None:
        """Drop the key from memory (the vault was sealed)."""
        with self._lock:
            self._ring = None

    def adopt(self, barrier: BarrierLike) -> KeyRing:
        """The key in the (unsealed) barrier, under its recipient's fingerprint (daemons sharing a vault's
        storage keep their keys apart). A key file still on disk is imported first and then removed: the
        barrier's copy is written and read back before the file goes. With neither file nor marker, a new key
        is made in the barrier and never written to disk."""
        path = self.file.path
        text: str | None = None
        if path.exists():
            on_disk = read_key_file(path)                 # refuses a file readable by others
            if not on_disk.identities:
                raise NoKeyError("the daemon's key file holds no secret key", where=str(path),
                                 hint="move it away and let Stratum generate a new one")
            recipient, text = on_disk.identities[0].recipient, path.read_text()
        elif moved_marker(path).exists():
            recipient = read_marker(path)
        else:
            identity, signing = generate(get_backend(self.file.backend))
            recipient = identity.recipient
            text = render_key_file(identity, signing, comment="the Stratum daemon's own key (in the vault)")
        where = barrier_path(recipient)
        raw = barrier.get(where)
        if raw is None:
            if text is None:
                raise NoKeyError("the daemon's key is neither in its file nor in the vault", where=where,
                                 hint="restore the vault's storage from a backup, or remove "
                                      f"{moved_marker(path)} to make a new key (then re-encrypt the manifests "
                                      "to its recipient with `stratum secret updatekeys`)")
            barrier.put(where, text.encode())
            raw = barrier.get(where)
            if raw is None or raw.decode() != text:
                raise NoKeyError("the vault did not keep the daemon's key", where=where,
                                 hint="check the vault's storage backend; the key file was left in place")
        ring = keyring_from_text(raw.decode(), f"vault:{where}")
        if not ring.identities:
            raise NoKeyError("the daemon's key in the vault holds no secret key", where=where,
                             hint="restore the vault's storage from a backup")
        self._write_marker(ring.identities[0].recipient)
        if path.exists():
            path.unlink()
        self.file._ring = None
        return ring

    def _write_marker(self, recipient: Recipient) -> None:
        marker = moved_marker(self.file.path)
        text = json.dumps({"recipient": recipient.text, "key": f"in the vault's barrier at {barrier_path(recipient)}"})
        if marker.exists() and marker.read_text() == text:
            return
        marker.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        tmp = marker.with_name(f".{marker.name}.{os.urandom(4).hex()}.tmp")
        tmp.write_text(text)
        os.replace(tmp, marker)
