"""The barrier: everything the vault stores is AES-256-GCM encrypted, with the storage path as associated data.

The keyring (barrier key versions) is itself stored at `core/keyring`, encrypted under the root key; the root
key never touches storage (it is what the Shamir shares rebuild). Entries are

    b"\\x01" | key version (4 bytes, big endian) | nonce (12) | ciphertext+tag

so after `rotate` new writes use the newest key and old entries stay readable with theirs. Binding the path
as associated data means an entry copied or moved to another path fails to decrypt instead of being served.
`core/` holds the barrier's own entries; engines get views below `logical/`, never `core/`.

With `cache_entries` (the single-node file backend: no other process writes its storage) decrypted entries are
kept in memory, bounded by count and bytes, so a read of a hot secret skips the file, the AES-GCM tag check
and the copy. A put or delete through the barrier drops the path (and bumps a generation, so a read racing a
write never caches the value it replaced); seal and reload drop everything. What is kept is plaintext in the
daemon's memory, where each request's answer is anyway; storage itself only ever holds ciphertext.
"""

from __future__ import annotations

import json
import os
import struct
import threading
import time
from base64 import b64decode, b64encode
from typing import Any

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from reconcilers.vault.service.errors import Sealed, ServiceError
from reconcilers.vault.service.storage.base import KeyValueStore, check_prefix

KEYRING_PATH = "core/keyring"
FORMAT = 1
_HEAD = struct.Struct(">BI")
CACHE_BYTES = 32 * 1024 * 1024      # plaintext bytes kept at most (the entry count is the caller's)
CACHE_ENTRY_MAX = 64 * 1024         # larger entries are always read from storage


class BadRootKey(ServiceError):
    """The key offered does not open the keyring (wrong shares, or another vault's)."""

    status = 400


class CorruptEntry(ServiceError):
    """An entry fails authentication: tampered with, truncated, or moved from another path."""

    status = 500


class Barrier:
    """Encryption in front of a KeyValueStore; sealed (refusing every call) until `unseal(root_key)`."""

    def __init__(self, store: KeyValueStore, cache_entries: int = 0) -> None:
        self.store = store
        self._keys: dict[int, AESGCM] = {}
        self._term = 0
        self._info: dict[str, Any] = {}
        self._root = b""
        self._lock = threading.Lock()
        self._cache_max = cache_entries
        self._cache: dict[str, bytes] = {}      # path -> plaintext, oldest first
        self._cache_bytes = 0
        self._generation = 0                    # bumped by every put, delete, seal and reload

    @property
    def keeps_entries(self) -> bool:
        """Whether decrypted entries are kept: `get` then returns the same bytes object for a path until it is
        written or deleted (what kv.KV2.read relies on)."""
        return self._cache_max > 0

    @property
    def sealed(self) -> bool:
        """True until unsealed."""
        return not self._keys

    def initialized(self) -> bool:
        """True when a keyring exists in storage."""
        return self.store.get(KEYRING_PATH) is not None

    def initialize(self, root_key: bytes) -> None:
        """Create the first barrier key and store the keyring under `root_key` (leaves the barrier sealed)."""
        ring = {"term": 1, "keys": {"1": b64encode(AESGCM.generate_key(256)).decode()},
                "installed": {"1": int(time.time())}}
        self._store_ring(root_key, ring)

    def unseal(self, root_key: bytes) -> None:
        """Open the keyring with `root_key`; BadRootKey when it is not this vault's."""
        blob = self.store.get(KEYRING_PATH)
        if blob is None:
            raise ServiceError("the vault is not initialized", status=400)
        try:
            ring = json.loads(AESGCM(root_key).decrypt(blob[:12], blob[12:], KEYRING_PATH.encode()))
        except (InvalidTag, ValueError) as err:
            raise BadRootKey("the unseal keys do not rebuild this vault's root key") from err
        with self._lock:
            self._keys = {int(v): AESGCM(b64decode(k)) for v, k in ring["keys"].items()}
            self._term = int(ring["term"])
            self._info = {"installed": ring.get("installed", {})}
            self._root = root_key
            self._drop_cache()

    def reload(self) -> None:
        """Read the keyring again (HA: another node may have rotated it)."""
        self._require()
        self.unseal(self._root)

    def seal(self) -> None:
        """Forget every key, and every decrypted entry kept."""
        with self._lock:
            self._keys = {}
            self._term = 0
            self._root = b""
            self._drop_cache()

    def _drop_cache(self, path: str | None = None) -> None:
        """Drop one kept entry (or all); the caller holds the lock."""
        self._generation += 1
        if path is None:
            self._cache = {}
            self._cache_bytes = 0
        else:
            gone = self._cache.pop(path, None)
            if gone is not None:
                self._cache_bytes -= len(gone)

    def _keep(self, path: str, plain: bytes, generation: int) -> None:
        """Keep a decrypted entry unless a write or seal came since it was read (bounded: oldest out first)."""
        if len(plain) > CACHE_ENTRY_MAX:
            return
        with self._lock:
            if generation != self._generation or not self._keys:
                return
            cache = self._cache
            while cache and (len(cache) >= self._cache_max or self._cache_bytes + len(plain) > CACHE_BYTES):
                self._cache_bytes -= len(cache.pop(next(iter(cache))))
            cache[path] = plain
            self._cache_bytes += len(plain)

    def rotate(self) -> int:
        """Add a barrier key version; new writes use it, old entries stay readable. Returns the new term."""
        self._require()
        with self._lock:
            blob = self.store.get(KEYRING_PATH)
            assert blob is not None   # unsealed implies initialized
            ring = json.loads(AESGCM(self._root).decrypt(blob[:12], blob[12:], KEYRING_PATH.encode()))
            term = int(ring["term"]) + 1
            key = AESGCM.generate_key(256)
            ring["keys"][str(term)] = b64encode(key).decode()
            ring["term"] = term
            ring.setdefault("installed", {})[str(term)] = int(time.time())
            self._store_ring(self._root, ring)
            self._keys[term] = AESGCM(key)
            self._term = term
            self._info = {"installed": ring["installed"]}
            return term

    def key_status(self) -> dict[str, Any]:
        """sys/key-status: the term in use and when it was installed."""
        self._require()
        installed = self._info.get("installed", {}).get(str(self._term), 0)
        return {"term": self._term, "install_time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(installed)),
                "encryptions": None}

    def _store_ring(self, root_key: bytes, ring: dict[str, Any]) -> None:
        nonce = os.urandom(12)
        blob = nonce + AESGCM(root_key).encrypt(nonce, json.dumps(ring).encode(), KEYRING_PATH.encode())
        self.store.put(KEYRING_PATH, blob)

    def _require(self) -> None:
        if not self._keys:
            raise Sealed()

    # -- the KeyValueStore interface, encrypted -------------------------------------------------------
    def get(self, path: str) -> bytes | None:
        """The plaintext at `path`, or None; CorruptEntry when it fails authentication."""
        self._require()
        if self._cache_max:
            kept = self._cache.get(path)
            if kept is not None:
                return kept
        generation = self._generation
        blob = self.store.get(path)
        if blob is None:
            return None
        try:
            fmt, term = _HEAD.unpack_from(blob)
            key = self._keys[term]
            if fmt != FORMAT:
                raise ValueError(fmt)
            plain = key.decrypt(blob[5:17], blob[17:], path.encode())
        except (struct.error, KeyError, ValueError, InvalidTag) as err:
            raise CorruptEntry(f"the stored entry at {path} fails authentication (tampered, truncated or moved); "
                               "restore it from a backup or delete it") from err
        if self._cache_max:
            self._keep(path, plain, generation)
        return plain

    def put(self, path: str, value: bytes) -> None:
        """Encrypt `value` under the newest key, bound to `path`."""
        self._require()
        nonce = os.urandom(12)
        term = self._term
        try:
            self.store.put(path, _HEAD.pack(FORMAT, term) + nonce + self._keys[term].encrypt(nonce, value,
                                                                                            path.encode()))
        finally:
            if self._cache_max:       # after the write (a read racing it must not keep the old value)
                with self._lock:
                    self._drop_cache(path)

    def delete(self, path: str) -> None:
        """Remove `path`."""
        self._require()
        try:
            self.store.delete(path)
        finally:
            if self._cache_max:
                with self._lock:
                    self._drop_cache(path)

    def list(self, prefix: str) -> list[str]:
        """Children under `prefix` (names are not secret: Vault does not encrypt them either)."""
        self._require()
        return self.store.list(prefix)

    def view(self, prefix: str) -> View:
        """The encrypted store seen from `prefix` (ending in "/")."""
        return View(self, prefix)


class View:
    """A KeyValueStore scoped to a prefix of another: what an engine or the token store gets."""

    def __init__(self, inner: KeyValueStore, prefix: str) -> None:
        self.inner = inner
        self.prefix = check_prefix(prefix)

    def get(self, path: str) -> bytes | None:
        """The value at prefix+path."""
        return self.inner.get(self.prefix + path)

    def put(self, path: str, value: bytes) -> None:
        """Store at prefix+path."""
        self.inner.put(self.prefix + path, value)

    def delete(self, path: str) -> None:
        """Remove prefix+path."""
        self.inner.delete(self.prefix + path)

    def list(self, prefix: str) -> list[str]:
        """Children of prefix+prefix."""
        return self.inner.list(self.prefix + prefix)

    def view(self, prefix: str) -> View:
        """A narrower view."""
        return View(self.inner, self.prefix + prefix)
