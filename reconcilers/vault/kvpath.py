"""Secret references and the manifest each names.

A reference names one value: `kv/<path>#<dotted key>` (what the Nickel record `{ secret = "kv/app/db", key =
"password" }` becomes) or the older `secrets/<file>.yaml#<dotted key>`. A manifest's KV path is its signed
`stratum.kv_path`, or by default `kv/` + its path under `secrets/` without the extension, so secrets/app/db.yaml
is kv/app/db. The map from KV paths to manifests is read from a revision's tree (cached by blob id) and from the
store of applied manifests: the same rule both ways. Pure but for the snapshot.
"""

from __future__ import annotations

import re
from collections import OrderedDict
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from reconcilers.errors import InputError

if TYPE_CHECKING:
    from reconcilers.ports import Snapshot

KV_PREFIX = "kv/"
SECRETS_DIR = "secrets/"
SUFFIXES = (".yaml", ".yml")
_KEY = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,255}$")
_CACHE_MAX = 20_000


@dataclass(frozen=True, slots=True)
class Reference:
    """A parsed reference: `path` is a KV path (`kv` true) or a manifest path; `key` is dotted."""

    text: str
    kv: bool
    path: str
    key: str


def default_kv_path(manifest_path: str) -> str:
    """kv/ + the manifest's path under secrets/ without its extension (secrets/app/db.yaml -> kv/app/db)."""
    rel = manifest_path.removeprefix(SECRETS_DIR)
    for suffix in SUFFIXES:
        if rel.endswith(suffix):
            rel = rel[: -len(suffix)]
            break
    return KV_PREFIX + rel


def kv_path_of(manifest_path: str, declared: str = "") -> str:
    """A manifest's KV path: its signed `stratum.kv_path` when set, else the default (one rule for the
    references here and for what the vault service publishes)."""
    return declared or default_kv_path(manifest_path)


def parse_reference(text: str) -> Reference:
    """A reference from its text; InputError saying what a reference looks like when it is not one."""
    path, sep, key = text.partition("#")
    hint = 'write { secret = "kv/app/db", key = "password" } (or "secrets/app/db.yaml#password")'
    if not sep or not path or not key or not _KEY.match(key) or ".." in key:
        raise InputError(f"secret reference {text!r} is not <manifest path>#<key> (or kv/<path>#<key>)",
                         where=text, hint=hint)
    if ".." in path.split("/") or path.startswith("/") or "\\" in path:
        raise InputError(f"secret reference {text!r} leaves the secrets", where=text, hint=hint)
    if path.startswith(KV_PREFIX) and len(path) > len(KV_PREFIX):
        return Reference(text, True, path.rstrip("/"), key)
    if path.startswith(SECRETS_DIR) and path.endswith(SUFFIXES):
        return Reference(text, False, path, key)
    raise InputError(f"secret reference {text!r} names neither a KV path (kv/...) nor a manifest (secrets/*.yaml)",
                     where=text, hint=hint)


def lookup(tree: Any, key: str) -> Any:
    """The node at a dotted key in a manifest's data (values or `ENC[...]` strings); KeyError when absent."""
    node = tree
    for part in key.split("."):
        if isinstance(node, dict) and part in node:
            node = node[part]
        elif isinstance(node, list) and part.isdigit() and int(part) < len(node):
            node = node[int(part)]
        else:
            raise KeyError(key)
    return node


def _declared_kv_path(text: str, where: str) -> str:
    """The manifest's `stratum.kv_path`, or its default; "" when the text is not a manifest at all."""
    from reconcilers.vault.errors import VaultError
    from reconcilers.vault.manifest import META_KEY, load_document

    try:
        doc = load_document(text, where)
    except VaultError:
        return ""
    meta = doc.get(META_KEY) if isinstance(doc, dict) else None
    declared = meta.get("kv_path") if isinstance(meta, dict) else None
    return kv_path_of(where, declared if isinstance(declared, str) else "")


class KvMap:
    """KV path -> manifest path(s) of a revision's `secrets/`, each manifest read once per blob."""

    def __init__(self) -> None:
        self._by_blob: OrderedDict[tuple[str, str], str] = OrderedDict()

    def of(self, snap: Snapshot) -> dict[str, list[str]]:
        """Every KV path of the revision with the manifests declaring it (more than one is an error)."""
        out: dict[str, list[str]] = {}
        for entry in snap.entries(SECRETS_DIR.rstrip("/"), SUFFIXES):
            key = (entry.path, entry.blob_id)
            kv = self._by_blob.get(key)
            if kv is None:
                try:
                    kv = _declared_kv_path(snap.text(entry), entry.path)
                except Exception:  # noqa: BLE001 an unreadable file is the vault reconciler's problem to report
                    kv = ""
                self._by_blob[key] = kv
                while len(self._by_blob) > _CACHE_MAX:
                    self._by_blob.popitem(last=False)
            if kv:
                out.setdefault(kv, []).append(entry.path)
        return out
