"""The KV secrets engine, path-compatible with Vault: version 2 (data/, metadata/, delete/, undelete/, destroy/,
config, check-and-set, LIST) and version 1 (plain get/put/delete/list).

KV v2 layout in the mount's store:  meta/<path>      -> JSON metadata (versions, settings)
                                     ver/<n>/<path>   -> JSON data of version n (gone once destroyed)
                                     config           -> JSON engine defaults
"""

from __future__ import annotations

import json
import threading
import time
from typing import Any

from reconcilers.vault.service.durations import rfc3339, seconds
from reconcilers.vault.service.errors import BadRequest, NotFound, Unsupported
from reconcilers.vault.service.storage.base import KeyValueStore, check_path

Answer = tuple[int, dict[str, Any] | None]
DEFAULT_MAX_VERSIONS = 10
READ = ("GET",)
WRITE = ("POST", "PUT")


KEPT_ENTRY_MAX = 64 * 1024         # the barrier keeps no larger entry, so a larger one would never match
KEPT_BYTES = 8 * 1024 * 1024       # stored bytes behind the answers a KV v2 engine keeps, per mount


def _secret_path(path: str) -> str:
    path = path.strip("/")
    if not path:
        raise BadRequest("missing secret path")
    return check_path(path)


def _dir(path: str) -> str:
    path = path.strip("/")
    return (check_path(path) + "/") if path else ""


def _data(body: dict[str, Any], field: str = "data") -> dict[str, Any]:
    data = body.get(field)
    if not isinstance(data, dict):
        raise BadRequest(f"no data provided: send {{\"{field}\": {{...}}}}")
    return data


def _versions(body: dict[str, Any]) -> list[int]:
    versions = body.get("versions")
    if not isinstance(versions, list) or not versions or not all(isinstance(v, int) and not isinstance(v, bool)
                                                                 for v in versions):
        raise BadRequest("no version number provided: send {\"versions\": [1, 2]}")
    return versions


class KV1:
    """KV version 1: the value at a path, no versions."""

    version = 1

    def __init__(self, store: KeyValueStore) -> None:
        self.store = store

    def shares(self, body: Any) -> bool:
        """KV v1 keeps no answers (see KV2.shares)."""
        return False

    def handle(self, method: str, path: str, body: dict[str, Any], query: dict[str, str]) -> Answer:
        """One request relative to the mount."""
        if method == "LIST" or (method == "GET" and query.get("list") == "true"):
            keys = self.store.list(_dir(path))
            if not keys:
                raise NotFound()
            return 200, {"data": {"keys": keys}}
        p = _secret_path(path)
        if method in READ:
            raw = self.store.get(p)
            if raw is None:
                raise NotFound()
            return 200, {"data": json.loads(raw), "lease_duration": 2764800, "renewable": False}
        if method in WRITE:
            if not body:
                raise BadRequest("no data provided")
            self.store.put(p, json.dumps(body).encode())
            return 204, None
        if method == "DELETE":
            self.store.delete(p)
            return 204, None
        raise Unsupported(f"unsupported operation {method} on a kv v1 path")


# Read-check-write of one secret's metadata (check-and-set, new versions, deletes) holds one of these, chosen by
# mount and path: engines are built per request and requests run on several threads (and the reconciler
# publishes from the apply thread), so the lock cannot live on the engine. One process only: across HA nodes
# only the active one writes.
_STRIPES = [threading.Lock() for _ in range(64)]


def _path_lock(mount: str, path: str) -> threading.Lock:
    return _STRIPES[hash((mount, path)) % len(_STRIPES)]


class KV2:
    """KV version 2: versioned secrets with metadata, soft delete, destroy and check-and-set."""

    version = 2

    def __init__(self, store: KeyValueStore, clock: Any = time.time, mount: str = "", keep_answers: int = 0) -> None:
        self.store = store
        self.clock = clock
        self.mount = mount
        # Answers of reads, kept while storage holds what they were built from (see `read`): the one thing this
        # engine keeps; and the same answers by id, for `shares`.
        self.keep_answers = keep_answers
        self._answers: dict[tuple[str, int], tuple[bytes, str, bytes, dict[str, Any]]] = {}
        self._shared: dict[int, dict[str, Any]] = {}
        self._kept_bytes = 0

    # -- storage helpers ------------------------------------------------------------------------------
    def config(self) -> dict[str, Any]:
        """Engine defaults (max_versions, cas_required, delete_version_after)."""
        raw = self.store.get("config")
        doc = json.loads(raw) if raw else {}
        return {"max_versions": doc.get("max_versions", 0), "cas_required": doc.get("cas_required", False),
                "delete_version_after": doc.get("delete_version_after", 0)}

    def _meta(self, p: str) -> dict[str, Any] | None:
        """The metadata of `p`, a fresh copy (writers change it)."""
        raw = self.store.get(f"meta/{p}")
        return json.loads(raw) if raw else None

    def _save_meta(self, p: str, meta: dict[str, Any]) -> None:
        self.store.put(f"meta/{p}", json.dumps(meta).encode())

    def _new_meta(self) -> dict[str, Any]:
        now = rfc3339(self.clock())
        return {"versions": {}, "current_version": 0, "oldest_version": 0, "max_versions": 0,
                "cas_required": False, "delete_version_after": 0, "custom_metadata": None,
                "created_time": now, "updated_time": now}

    def _expired(self, v: dict[str, Any]) -> bool:
        return bool(v.get("expires")) and v["expires"] <= self.clock()

    def _public_version(self, v: dict[str, Any], n: int, meta: dict[str, Any]) -> dict[str, Any]:
        deleted = v.get("deletion_time") or (rfc3339(v["expires"]) if self._expired(v) else "")
        return {"created_time": v["created_time"], "custom_metadata": meta.get("custom_metadata"),
                "deletion_time": deleted, "destroyed": v.get("destroyed", False), "version": n}

    # -- the API ---------------------------------------------------------------------------------------
    def handle(self, method: str, path: str, body: dict[str, Any], query: dict[str, str]) -> Answer:
        """One request relative to the mount (e.g. "data/app/db")."""
        head, _, rest = path.partition("/")
        if head == "config" and not rest:
            return self._config(method, body)
        if head == "data":
            return self._data_op(method, rest, body, query)
        if head == "metadata":
            return self._metadata_op(method, rest, body, query)
        if head in ("delete", "undelete", "destroy") and method in WRITE:
            return self._versions_op(head, _secret_path(rest), _versions(body))
        raise NotFound(f"no handler for route '{path}': kv v2 paths are data/, metadata/, delete/, undelete/, "
                       "destroy/ and config")

    def _config(self, method: str, body: dict[str, Any]) -> Answer:
        if method in READ:
            return 200, {"data": self.config()}
        if method in WRITE:
            cfg = self.config()
            if "max_versions" in body:
                cfg["max_versions"] = _count(body["max_versions"], "max_versions")
            if "cas_required" in body:
                cfg["cas_required"] = bool(body["cas_required"])
            if "delete_version_after" in body:
                cfg["delete_version_after"] = seconds(body["delete_version_after"], "delete_version_after")
            self.store.put("config", json.dumps(cfg).encode())
            return 204, None
        raise Unsupported(f"unsupported operation {method} on config")

    def _data_op(self, method: str, rest: str, body: dict[str, Any], query: dict[str, str]) -> Answer:
        p = _secret_path(rest)
        if method in READ:
            version = query.get("version") or "0"
            if not version.isdigit() or len(version) > 12:
                raise BadRequest(f"version: expected a version number, got {version[:20]!r}")
            return self.read(p, int(version))
        if method in WRITE:
            options = body.get("options") or {}
            if not isinstance(options, dict):
                raise BadRequest("options: expected an object")
            return 200, {"data": self.write(p, _data(body), options.get("cas"))}
        if method == "PATCH":
            current = self.read(p, 0)[1]
            assert current is not None
            merged = _merge(dict(current["data"]["data"]), _data(body))
            options = body.get("options") or {}
            return 200, {"data": self.write(p, merged, options.get("cas") if isinstance(options, dict) else None)}
        if method == "DELETE":
            meta = self._meta(p)
            if meta is not None and meta["current_version"]:
                self._versions_op("delete", p, [meta["current_version"]])
            return 204, None
        raise Unsupported(f"unsupported operation {method} on data/")

    def read_data(self, path: str) -> Answer:
        """GET data/<path> with no query (the newest version): `handle("GET", "data/" + path, {}, {})`."""
        return self.read(_secret_path(path), 0)

    def read(self, p: str, version: int) -> Answer:
        """data/<p>: the newest (or the given) version; 404 with its metadata when deleted or destroyed.

        On the file backend the barrier returns the very same bytes object for an entry until it is written or
        deleted (Barrier.keeps_entries), so an answer kept with the metadata and data bytes it was decoded
        from is returned again while storage still gives those objects: never older than storage, and neither
        document is decoded again (~10 us each here). Nothing is kept elsewhere (`keep_answers` 0)."""
        meta_raw = self.store.get(f"meta/{p}")
        if meta_raw is None:
            raise NotFound()
        key = (p, version)
        kept = self._answers.get(key)
        if kept is not None and kept[0] is meta_raw and self.store.get(kept[1]) is kept[2]:
            return 200, kept[3]
        meta = json.loads(meta_raw)
        if not meta["current_version"]:
            raise NotFound()
        n = version or meta["current_version"]
        v = meta["versions"].get(str(n))
        if v is None:
            raise NotFound()
        public = self._public_version(v, n, meta)
        if public["deletion_time"] or public["destroyed"]:
            return 404, {"data": {"data": None, "metadata": public}}
        data_path = f"ver/{n}/{p}"
        data_raw = self.store.get(data_path)
        if data_raw is None:
            raise NotFound()
        answer = {"data": {"data": json.loads(data_raw), "metadata": public}}
        if self.keep_answers and not v.get("expires"):
            self._keep_answer(key, (meta_raw, data_path, data_raw, answer))
        return 200, answer

    def _keep_answer(self, key: tuple[str, int], kept: tuple[bytes, str, bytes, dict[str, Any]]) -> None:
        """Keep a read's answer with the bytes it was built from (see `read`), unless it depends on the time
        (a version that expires: not called). Bounded by count and by the stored bytes behind the answers (the
        oldest go first); the answers are shared, read-only (see `shares`)."""
        answers, shared = self._answers, self._shared
        size = len(kept[0]) + len(kept[2])
        if size > 2 * KEPT_ENTRY_MAX:
            return
        old = answers.pop(key, None)
        if old is not None:
            shared.pop(id(old[3]), None)
            self._kept_bytes -= len(old[0]) + len(old[2])
        while answers and (len(answers) >= self.keep_answers or self._kept_bytes + size > KEPT_BYTES):
            gone = answers.pop(next(iter(answers)))
            shared.pop(id(gone[3]), None)
            self._kept_bytes -= len(gone[0]) + len(gone[2])
        answers[key] = kept
        shared[id(kept[3])] = kept[3]
        self._kept_bytes += size

    def shares(self, body: Any) -> bool:
        """Whether `body` is an answer this engine keeps and returns again (the same object, never changed):
        what is derived from it (the audit's redaction) may be kept with it."""
        return self._shared.get(id(body)) is body

    def write(self, p: str, data: dict[str, Any], cas: Any) -> dict[str, Any]:
        """A new version of `p`; check-and-set when `cas` is given or required (under the path's lock)."""
        with _path_lock(self.mount, p):
            return self._write(p, data, cas)

    def _write(self, p: str, data: dict[str, Any], cas: Any) -> dict[str, Any]:
        meta = self._meta(p) or self._new_meta()
        cfg = self.config()
        if cas is None and (meta["cas_required"] or cfg["cas_required"]):
            raise BadRequest("check-and-set parameter required for this call")
        if cas is not None:
            if not isinstance(cas, int) or isinstance(cas, bool):
                raise BadRequest("cas: expected a version number")
            if cas != meta["current_version"]:
                raise BadRequest("check-and-set parameter did not match the current version")
        now = self.clock()
        n = meta["current_version"] + 1
        after = meta["delete_version_after"] or cfg["delete_version_after"]
        v = {"created_time": rfc3339(now), "deletion_time": "", "destroyed": False,
             "expires": now + after if after else 0}
        # Data first, then the metadata naming it: a crash between the two leaves an unnamed version, never a
        # named version without data.
        self.store.put(f"ver/{n}/{p}", json.dumps(data).encode())
        meta["versions"][str(n)] = v
        meta["current_version"] = n
        meta["oldest_version"] = meta["oldest_version"] or n
        meta["updated_time"] = v["created_time"]
        self._trim(p, meta, meta["max_versions"] or cfg["max_versions"] or DEFAULT_MAX_VERSIONS)
        self._save_meta(p, meta)
        return self._public_version(v, n, meta)

    def _trim(self, p: str, meta: dict[str, Any], keep: int) -> None:
        numbers = sorted(int(k) for k in meta["versions"])
        for n in numbers[:-keep] if len(numbers) > keep else []:
            self.store.delete(f"ver/{n}/{p}")
            del meta["versions"][str(n)]
        if meta["versions"]:
            meta["oldest_version"] = min(int(k) for k in meta["versions"])

    def _versions_op(self, op: str, p: str, versions: list[int]) -> Answer:
        with _path_lock(self.mount, p):
            return self._versions_locked(op, p, versions)

    def _versions_locked(self, op: str, p: str, versions: list[int]) -> Answer:
        meta = self._meta(p)
        if meta is None:
            return 204, None
        now = rfc3339(self.clock())
        for n in versions:
            v = meta["versions"].get(str(n))
            if v is None:
                continue
            if op == "delete" and not v.get("destroyed"):
                v["deletion_time"] = v.get("deletion_time") or now
            elif op == "undelete" and not v.get("destroyed"):
                v["deletion_time"], v["expires"] = "", 0
            elif op == "destroy":
                self.store.delete(f"ver/{n}/{p}")
                v["destroyed"] = True
        meta["updated_time"] = now
        self._save_meta(p, meta)
        return 204, None

    def _metadata_op(self, method: str, rest: str, body: dict[str, Any], query: dict[str, str]) -> Answer:
        if method == "LIST" or (method == "GET" and query.get("list") == "true"):
            keys = self.store.list("meta/" + _dir(rest))
            if not keys:
                raise NotFound()
            return 200, {"data": {"keys": keys}}
        p = _secret_path(rest)
        if method in READ:
            meta = self._meta(p)
            if meta is None:
                raise NotFound()
            versions = {k: self._public_version(v, int(k), meta) for k, v in meta["versions"].items()}
            for v in versions.values():
                v.pop("custom_metadata")
                v.pop("version")
            out = {k: meta[k] for k in ("cas_required", "created_time", "current_version", "custom_metadata",
                                         "max_versions", "oldest_version", "updated_time")}
            out["delete_version_after"] = f"{meta['delete_version_after']}s"
            return 200, {"data": {**out, "versions": versions}}
        if method in WRITE or method == "PATCH":
            with _path_lock(self.mount, p):
                return self._update_metadata(p, body)
        if method == "DELETE":
            with _path_lock(self.mount, p):
                meta = self._meta(p)
                if meta is not None:
                    for n in meta["versions"]:
                        self.store.delete(f"ver/{n}/{p}")
                    self.store.delete(f"meta/{p}")
            return 204, None
        raise Unsupported(f"unsupported operation {method} on metadata/")

    def _update_metadata(self, p: str, body: dict[str, Any]) -> Answer:
        """metadata/<p> POST: settings of one secret (under its lock)."""
        meta = self._meta(p) or self._new_meta()
        if "max_versions" in body:
            meta["max_versions"] = _count(body["max_versions"], "max_versions")
        if "cas_required" in body:
            meta["cas_required"] = bool(body["cas_required"])
        if "delete_version_after" in body:
            meta["delete_version_after"] = seconds(body["delete_version_after"], "delete_version_after")
        if "custom_metadata" in body:
            custom = body["custom_metadata"]
            if custom is not None and (not isinstance(custom, dict) or len(custom) > 64 or not all(
                    isinstance(k, str) and isinstance(v, str) and len(k) <= 128 and len(v) <= 512
                    for k, v in custom.items())):
                raise BadRequest("custom_metadata: at most 64 string keys (128 chars) and values (512 chars)")
            meta["custom_metadata"] = custom
        meta["updated_time"] = rfc3339(self.clock())
        self._trim(p, meta, meta["max_versions"] or self.config()["max_versions"] or DEFAULT_MAX_VERSIONS)
        self._save_meta(p, meta)
        return 204, None


def _count(value: Any, field: str) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value <= 1000:
        raise BadRequest(f"{field}: expected a whole number from 0 to 1000")
    return value


def _merge(target: dict[str, Any], patch: dict[str, Any]) -> dict[str, Any]:
    """JSON merge patch (RFC 7386), as Vault's PATCH of data/."""
    for key, value in patch.items():
        if value is None:
            target.pop(key, None)
        elif isinstance(value, dict) and isinstance(target.get(key), dict):
            target[key] = _merge(dict(target[key]), value)
        else:
            target[key] = value
    return target
