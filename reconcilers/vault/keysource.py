"""Where the daemon's own private key comes from. For now a 0600 file; a later vault part puts it behind a
Shamir seal, behind the same small interface.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Protocol

from reconcilers.vault.backends import get_backend
from reconcilers.vault.errors import NoKeyError
from reconcilers.vault.keys import KeyRing, Recipient, generate, read_key_file, write_key_file


class KeySource(Protocol):
    """Supplies the daemon's key ring."""

    def keyring(self) -> KeyRing:
        """The daemon's private keys."""

    def recipient(self) -> Recipient:
        """The recipient users add to their creation rules so the daemon can decrypt."""


class FileKeySource:
    """A key file (mode 0600), generated on first use when `create` is set."""

    def __init__(self, path: Path, create: bool = True, backend: str = "openssl") -> None:
        self.path = path
        self.create = create
        self.backend = backend
        self._ring: KeyRing | None = None

    def keyring(self) -> KeyRing:
        """The key ring, generating the key file first when missing and allowed."""
        if self._ring is None:
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
        """The daemon's recipient."""
        return self.keyring().identities[0].recipient
