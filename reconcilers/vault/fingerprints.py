"""Keyed fingerprints: what plans, the index, stored actions, logs and git notes show in place of a secret.

HMAC-SHA256 under a key of this daemon alone (32 random bytes in <data>/vault/fingerprint.key, mode 0600, made
on first use), never a plain hash: a plain hash of a short password is found by trying candidates, a keyed one
only by whoever holds the key. Fingerprints are comparable within one daemon and mean nothing elsewhere.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import threading
from pathlib import Path

KEY_BYTES = 32
PREFIX = "hmac-sha256:"


class FingerprintKey:
    """The per-daemon fingerprint key, read (or created) once."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._key: bytes | None = None
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"FingerprintKey({self.path})"

    def _material(self) -> bytes:
        with self._lock:
            if self._key is None:
                try:
                    key = self.path.read_bytes()
                except FileNotFoundError:
                    key = b""
                if len(key) != KEY_BYTES:
                    self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
                    key = os.urandom(KEY_BYTES)
                    tmp = self.path.with_name(f".{self.path.name}.{os.urandom(4).hex()}.tmp")
                    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
                    try:
                        os.write(fd, key)
                        os.fsync(fd)
                    finally:
                        os.close(fd)
                    os.replace(tmp, self.path)
                self._key = key
            return self._key

    def of(self, purpose: bytes, *parts: bytes) -> str:
        """`hmac-sha256:` and 24 hex digits over `purpose` and `parts` (length-prefixed: no ambiguity)."""
        mac = hmac.new(self._material(), purpose, hashlib.sha256)
        for part in parts:
            mac.update(len(part).to_bytes(8, "big"))
            mac.update(part)
        return PREFIX + mac.hexdigest()[:24]
