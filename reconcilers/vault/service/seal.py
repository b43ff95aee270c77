"""The seal: `init` makes the root key and splits it into Shamir shares; `unseal` gathers them to K.

Shares are SLIP-39 mnemonics (the `shamir-mnemonic` package: words with a checksum, so a typo is caught on the
share itself) or base64 (x byte + GF(256) share from reconcilers/vault/shamir.py, the split the manifests
use). Progress is held in memory only; a wrong share is refused with what was wrong and does not count, a
repeated one is refused as repeated, and K valid shares that do not open the keyring reset the progress.
Nothing here tells an unauthenticated caller more than `sys/seal-status` does. The seal configuration (type,
N, K; no key material) is stored in clear at `core/seal-config`.
"""

from __future__ import annotations

import binascii
import json
import os
import threading
import uuid
from base64 import b64decode, b64encode
from dataclasses import dataclass
from typing import Any

import shamir_mnemonic
from shamir_mnemonic.share import Share

from reconcilers.vault import shamir
from reconcilers.vault.service.barrier import Barrier
from reconcilers.vault.service.errors import BadRequest
from reconcilers.vault.service.storage.base import KeyValueStore

CONFIG_PATH = "core/seal-config"
FORMATS = ("slip39", "base64")
ROOT_KEY_BYTES = 32


@dataclass(frozen=True, slots=True)
class SealConfig:
    """What init chose: how many shares, how many needed, in which format."""

    shares: int
    threshold: int
    format: str


def split_root(root: bytes, shares: int, threshold: int, fmt: str) -> list[str]:
    """The shares of `root` in `fmt`; BadRequest for impossible parameters."""
    if not 1 <= threshold <= shares <= 16:
        raise BadRequest(f"need 1 <= secret_threshold ({threshold}) <= secret_shares ({shares}) <= 16")
    if fmt not in FORMATS:
        raise BadRequest(f"unknown share format {fmt!r}: use one of {', '.join(FORMATS)}")
    if fmt == "slip39":
        if threshold == 1 and shares > 1:
            raise BadRequest("SLIP-39 cannot make several shares with a threshold of 1: "
                             "use a threshold of 2 or more, or the base64 format")
        # iteration_exponent 0: 40,000 PBKDF2 rounds; the root key is random, so the stretching adds nothing.
        groups = shamir_mnemonic.generate_mnemonics(1, [(threshold, shares)], root, b"", True, 0)
        return list(groups[0])
    return [b64encode(bytes([x]) + y).decode() for x, y in shamir.split(root, threshold, shares)]


class Seal:
    """Init and unseal of one vault over its storage and barrier."""

    def __init__(self, store: KeyValueStore, barrier: Barrier) -> None:
        self.store = store
        self.barrier = barrier
        self._lock = threading.Lock()
        self._progress: dict[str, Any] = {}      # share identity -> parsed share
        self._nonce = ""

    def config(self) -> SealConfig | None:
        """The stored configuration, or None before init."""
        raw = self.store.get(CONFIG_PATH)
        if raw is None:
            return None
        doc = json.loads(raw)
        return SealConfig(int(doc["shares"]), int(doc["threshold"]), str(doc["format"]))

    def init(self, shares: int, threshold: int, fmt: str = "slip39") -> tuple[bytes, list[str]]:
        """Make the root key, the keyring and the shares; returns (root key, shares). Leaves it sealed."""
        with self._lock:
            if self.config() is not None or self.barrier.initialized():
                raise BadRequest("Vault is already initialized")
            root = os.urandom(ROOT_KEY_BYTES)
            parts = split_root(root, shares, threshold, fmt)
            self.barrier.initialize(root)
            self.store.put(CONFIG_PATH, json.dumps({"type": "shamir", "shares": shares, "threshold": threshold,
                                                    "format": fmt}).encode())
            return root, parts

    def status(self) -> dict[str, Any]:
        """What sys/seal-status answers (Vault's fields)."""
        cfg = self.config()
        return {"type": "shamir", "initialized": cfg is not None, "sealed": self.barrier.sealed,
                "t": cfg.threshold if cfg else 0, "n": cfg.shares if cfg else 0,
                "progress": len(self._progress), "nonce": self._nonce, "version": "1.15.0+stratum",
                "build_date": "", "migration": False, "recovery_seal": False, "storage_type": "",
                "cluster_name": "stratum", "cluster_id": ""}

    def reset(self) -> None:
        """Forget the shares given so far."""
        with self._lock:
            self._progress = {}
            self._nonce = ""

    def submit(self, text: str) -> bool:
        """Add one share; True once the vault is unsealed. BadRequest says what was wrong with the share."""
        with self._lock:
            cfg = self.config()
            if cfg is None:
                raise BadRequest("Vault is not initialized: run `stratum vault init` first")
            if not self.barrier.sealed:
                return True
            ident, parsed = _parse(text.strip(), cfg.format)
            if ident in self._progress:
                raise BadRequest("this unseal key was already given: enter a different one")
            self._progress[ident] = parsed
            self._nonce = self._nonce or str(uuid.uuid4())
            if len(self._progress) < cfg.threshold:
                return False
            given, self._progress, self._nonce = list(self._progress.values()), {}, ""
            root = _combine(given, cfg.format)
            self.barrier.unseal(root)     # BadRootKey: the progress is already reset
            return True

    def unseal_with_key(self, root: bytes) -> None:
        """Auto-unseal with the root key itself (a key file or a systemd credential)."""
        self.barrier.unseal(root)

    def seal(self) -> None:
        """Seal now: the barrier forgets its keys."""
        self.reset()
        self.barrier.seal()


def _parse(text: str, fmt: str) -> tuple[str, Any]:
    if fmt == "slip39":
        if " " not in text:
            raise BadRequest("this vault's unseal keys are SLIP-39 mnemonics (20 or more words)")
        try:
            share = Share.from_mnemonic(text)
        except shamir_mnemonic.MnemonicError as err:
            raise BadRequest(f"the unseal key is not a valid SLIP-39 mnemonic ({err}): check it for typos") from err
        return f"{share.group_index}/{share.index}", text
    try:
        raw = b64decode(text, validate=True)
    except (binascii.Error, ValueError) as err:
        raise BadRequest("the unseal key is not valid base64: check it for typos") from err
    if len(raw) != ROOT_KEY_BYTES + 1 or raw[0] == 0:
        raise BadRequest("the unseal key has the wrong length or index: it is not a share of this vault")
    return str(raw[0]), (raw[0], raw[1:])


def _combine(given: list[Any], fmt: str) -> bytes:
    if fmt == "slip39":
        try:
            return bytes(shamir_mnemonic.combine_mnemonics(given, b""))
        except shamir_mnemonic.MnemonicError as err:
            raise BadRequest(f"the unseal keys do not combine ({err}); progress was reset") from err
    return shamir.combine(given)
