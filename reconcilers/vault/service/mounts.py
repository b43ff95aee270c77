"""The mount table: which engine serves which path prefix, kept behind the barrier at `core/mounts`."""

from __future__ import annotations

import json
import secrets
import threading
from dataclasses import dataclass
from typing import Any

from reconcilers.vault.service.barrier import Barrier
from reconcilers.vault.service.engines.kv import KV1, KV2
from reconcilers.vault.service.errors import BadRequest
from reconcilers.vault.service.storage.base import KeyValueStore, check_path

TABLE_PATH = "core/mounts"
RESERVED = ("sys", "auth", "core", "logical", "identity", "cubbyhole")
DEFAULT_MOUNTS = {"secret/": ("kv", 2), "kv/": ("kv", 2)}
KNOWN_MAX = 4096              # paths whose mount is kept (see Mounts.find)
ANSWERS_MAX = 4096            # read answers a KV v2 engine keeps (see kv.KV2.read)


@dataclass(frozen=True, slots=True)
class MountEntry:
    """One mounted engine."""

    path: str          # "secret/"
    type: str          # "kv", "transit"
    version: int       # kv only
    uuid: str
    description: str = ""

    def describe(self) -> dict[str, Any]:
        """As sys/mounts lists it."""
        return {"type": self.type, "description": self.description, "uuid": self.uuid, "accessor": self.uuid,
                "options": {"version": str(self.version)} if self.type == "kv" else {}, "local": False,
                "seal_wrap": False, "config": {"default_lease_ttl": 0, "max_lease_ttl": 0}}


def check_mount_path(path: str) -> str:
    """A mount path ("legacy" or "legacy/") as stored ("legacy/"); BadRequest when invalid or reserved."""
    path = check_path(path.strip("/")) + "/"
    if path.split("/")[0] in RESERVED:
        raise BadRequest(f"cannot mount at {path}: the prefix is reserved")
    return path


def transit_handler() -> Any:
    """reconcilers.vault.transit.api.handle when that module is installed, else None."""
    try:
        from reconcilers.vault.transit.api import handle  # the transit engine (vaultext)
    except ImportError:
        return None
    return handle


def engine_handler(kind: str) -> Any:
    """`handle(method, path, body, store, mount)` of a non-KV engine (transit, pki, database), or None when the
    engine is not installed. Each engine is written against our KeyValueStore and answers Vault's JSON."""
    if kind == "transit":
        transit = transit_handler()
        return None if transit is None else (lambda m, p, b, s, mount: transit(m, p, b, s))
    if kind == "pki":
        from reconcilers.vault.pki import api as pki

        return lambda m, p, b, s, mount: pki.handle(m, p, b, s)
    if kind == "database":
        from reconcilers.vault.database import api as database

        return lambda m, p, b, s, mount: database.handle(m, p, b, s, mount=mount.rstrip("/"))
    return None


class Mounts:
    """The table in memory, saved through the barrier on each change."""

    def __init__(self, barrier: Barrier) -> None:
        self.barrier = barrier
        self._lock = threading.Lock()
        self._entries: dict[str, MountEntry] = {}
        # Every request finds its mount and builds its engine: both are kept per table (`_known`: path -> what
        # `find` answered, bounded; `_engines`: mount uuid -> engine) and dropped whenever the table changes.
        self._known: dict[str, tuple[MountEntry, str] | None] = {}
        self._engines: dict[str, Any] = {}

    @property
    def entries(self) -> dict[str, MountEntry]:
        """The table: mount path ("secret/") -> entry. Change it only through the methods here or by assigning
        a whole new table (what is kept of the old one goes)."""
        return self._entries

    @entries.setter
    def entries(self, table: dict[str, MountEntry]) -> None:
        self._entries = table
        self._changed()

    def _changed(self) -> None:
        self._known = {}
        self._engines = {}

    def load(self) -> None:
        """Read the table (after unseal); a new vault gets the default mounts."""
        raw = self.barrier.get(TABLE_PATH)
        if raw is None:
            table = {path: MountEntry(path, kind, version, secrets.token_hex(8))
                     for path, (kind, version) in DEFAULT_MOUNTS.items()}
            if transit_handler() is not None:
                table["transit/"] = MountEntry("transit/", "transit", 0, secrets.token_hex(8))
            self.entries = table
            self._save()
            return
        self.entries = {k: MountEntry(**v) for k, v in json.loads(raw).items()}

    def _save(self) -> None:
        doc = {k: {f: getattr(e, f) for f in MountEntry.__slots__} for k, e in self.entries.items()}
        self.barrier.put(TABLE_PATH, json.dumps(doc).encode())

    def find(self, path: str) -> tuple[MountEntry, str] | None:
        """(mount, rest of the path) for the longest mount prefix of `path`."""
        known = self._known
        if path in known:
            return known[path]
        best = None
        for prefix, entry in self._entries.items():
            if (path + "/").startswith(prefix) and (best is None or len(prefix) > len(best.path)):
                best = entry
        found = None if best is None else (best, path[len(best.path):])
        if len(known) >= KNOWN_MAX:
            known.clear()                 # bounded (paths come from clients); a race only costs a lookup again
        known[path] = found
        return found

    def store_of(self, entry: MountEntry) -> KeyValueStore:
        """The engine's storage: its own barrier view."""
        return self.barrier.view(f"logical/{entry.uuid}/")

    def engine(self, entry: MountEntry) -> Any:
        """The engine object of a KV mount (KV1/KV2: they keep nothing between requests but their store, so one
        serves every request), None for other kinds (core.py calls their `engine_handler`)."""
        if entry.type != "kv":
            return None
        engine = self._engines.get(entry.uuid)
        if engine is None:
            # Answers are kept where the barrier keeps entries (the file backend: see kv.KV2.read).
            keep = ANSWERS_MAX if self.barrier.keeps_entries else 0
            engine = (KV2(self.store_of(entry), mount=entry.uuid, keep_answers=keep) if entry.version == 2
                      else KV1(self.store_of(entry)))
            self._engines[entry.uuid] = engine
        return engine

    def ensure(self, path: str, kind: str, version: int, description: str) -> str:
        """What the repo declares: mount it when absent; a mount of another kind is left alone (said)."""
        current = self.entries.get(path)
        if current is None:
            self.enable(path, {"type": kind, "options": {"version": str(version)}, "description": description})
            return "mounted"
        if (current.type, current.version) != (kind, version if kind == "kv" else 0):
            return f"kept as {current.type} v{current.version}: a commit never remounts (its data would go)"
        return "unchanged"

    def enable(self, path: str, body: dict[str, Any]) -> None:
        """sys/mounts/<path> POST: mount a kv (v1/v2) or transit engine."""
        path = check_mount_path(path)
        kind = body.get("type")
        options = body.get("options") or {}
        version = 1
        if kind == "kv-v2":
            kind, version = "kv", 2
        elif kind == "kv":
            version = 2 if str(options.get("version", "1")) == "2" else 1
        elif kind in ("transit", "pki", "database"):
            if engine_handler(kind) is None:
                raise BadRequest(f"the {kind} engine is not installed in this daemon")
            version = 0
        else:
            raise BadRequest(f"unknown engine type {str(kind)[:40]!r}: use kv, kv-v2, transit, pki or database")
        with self._lock:
            if any(p.startswith(path) or path.startswith(p) for p in self.entries):
                raise BadRequest(f"path is already in use at {path}")
            self._entries[path] = MountEntry(path, kind, version, secrets.token_hex(8),
                                             str(body.get("description") or "")[:200])
            self._changed()
            self._save()

    def disable(self, path: str) -> None:
        """sys/mounts/<path> DELETE: unmount and drop its data."""
        path = check_path(path.strip("/")) + "/"
        with self._lock:
            entry = self._entries.pop(path, None)
            if entry is None:
                return
            self._changed()
            self._save()
        _drop(self.store_of(entry), "")


def _drop(store: KeyValueStore, prefix: str) -> None:
    """Delete everything under `prefix` (bounded by what exists)."""
    for name in store.list(prefix):
        if name.endswith("/"):
            _drop(store, prefix + name)
        else:
            store.delete(prefix + name)
