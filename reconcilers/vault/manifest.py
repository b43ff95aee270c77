"""The manifest format: SOPS-shaped YAML with every value an `ENC[...]` string, a `stratum:` block last.

    db:
      password: ENC[AES256_GCM,data:...,iv:...,tag:...,type:str]
    stratum:
      format: 1
      version: 1767225600          # monotonic: max(previous + 1, unix time)
      path: secrets/db.yaml        # where it was signed for; a moved file must be re-signed
      lastmodified: '2026-01-01T00:00:00Z'
      shamir_threshold: 1
      key_groups:                  # one list of wrapped shares per group
      - - {recipient: kem:..., enc: <b64 KEM ciphertext>, wrap: <b64 nonce + sealed share>}
      signer: stratumsig1...
      signature: {mldsa65: <b64>, ed25519: <b64>}

Pure functions only: parsing, value encoding, key paths, the canonical bytes that are signed.
"""

from __future__ import annotations

import binascii
import functools
import json
import math
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import orjson
import yaml

from reconcilers import bounded_yaml
from reconcilers.vault.errors import ManifestError

FORMAT = 1
META_KEY = "stratum"
KeyPath = tuple[str | int, ...]
_ENC = re.compile(
    r"^ENC\[AES256_GCM,data:([A-Za-z0-9+/=]*),iv:([A-Za-z0-9+/=]+),tag:([A-Za-z0-9+/=]+),"
    r"type:(str|int|float|bool|bytes|null)\]$"
)
_KV_PATH = re.compile(r"^kv(/[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}){1,16}$")
_Loader: Any = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
_Dumper: Any = getattr(yaml, "CSafeDumper", yaml.SafeDumper)


@dataclass(frozen=True, slots=True)
class EncValue:
    """One parsed `ENC[...]` string."""

    data: bytes
    iv: bytes
    tag: bytes
    type: str

    def render(self) -> str:
        """The `ENC[...]` text."""
        return f"ENC[AES256_GCM,data:{_b64e(self.data)},iv:{_b64e(self.iv)},tag:{_b64e(self.tag)},type:{self.type}]"


def _b64d(text: str) -> bytes:
    # Strict: only the alphabet, padding only at the end and exact (what b64decode(validate=True) checks, in C).
    return binascii.a2b_base64(text, strict_mode=True)


@functools.lru_cache(maxsize=4096)
def parse_enc(text: str) -> EncValue | None:
    """The parsed value, or None when `text` is not an `ENC[...]` string. Cached: opening a manifest parses each
    value twice (the plaintext check, then decryption); EncValue is immutable."""
    m = _ENC.match(text)
    if m is None:
        return None
    data, iv, tag, type_ = m.groups()
    try:
        return EncValue(_b64d(data), _b64d(iv), _b64d(tag), type_)
    except (binascii.Error, ValueError):
        return None


def _b64e(raw: bytes) -> str:
    return binascii.b2a_base64(raw, newline=False).decode()


@dataclass(frozen=True, slots=True)
class Wrap:
    """A data-key share wrapped for one recipient."""

    recipient: str  # fingerprint, kem:...
    enc: bytes  # hybrid KEM ciphertext
    wrap: bytes  # 12-byte nonce + AES-256-GCM(share)


@dataclass(frozen=True, slots=True)
class Meta:
    """The `stratum:` block."""

    format: int
    version: int
    path: str
    lastmodified: str
    shamir_threshold: int
    key_groups: tuple[tuple[Wrap, ...], ...]
    signer: str = ""
    sig_mldsa65: bytes = b""
    sig_ed25519: bytes = b""
    kv_path: str = ""                         # where the values appear in the vault's KV ("" = the default)

    def unsigned(self) -> dict[str, Any]:
        """The block as JSON-like data without the signature (what is signed). `kv_path` only when set, so
        manifests signed before the field existed keep verifying."""
        b64 = _b64e
        extra = {"kv_path": self.kv_path} if self.kv_path else {}
        return {**extra,
            "format": self.format,
            "version": self.version,
            "path": self.path,
            "lastmodified": self.lastmodified,
            "shamir_threshold": self.shamir_threshold,
            "key_groups": [
                [{"recipient": w.recipient, "enc": b64(w.enc), "wrap": b64(w.wrap)} for w in g] for g in self.key_groups
            ],
            "signer": self.signer,
        }

    def as_yaml_data(self) -> dict[str, Any]:
        """The whole block, signature included."""
        out = self.unsigned()
        out["signature"] = {
            "mldsa65": _b64e(self.sig_mldsa65),
            "ed25519": _b64e(self.sig_ed25519),
        }
        return out


@dataclass(frozen=True, slots=True)
class Manifest:
    """A parsed manifest: the tree of `ENC[...]` strings, and its metadata."""

    data: dict[str, Any]
    meta: Meta


def display(path: KeyPath) -> str:
    """A key path as people write it: `db.hosts[0].password`."""
    out = ""
    for part in path:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or "<root>"


@functools.lru_cache(maxsize=4096)
def aad(path: KeyPath, type_: str) -> bytes:
    """The associated data of a value: its key path and type, so values cannot move between keys unnoticed.
    Cached: the same key paths recur in every manifest of a repo."""
    return json.dumps([list(path), type_], separators=(",", ":"), ensure_ascii=False).encode()


def leaves(tree: Any, prefix: KeyPath = ()) -> Iterator[tuple[KeyPath, Any]]:
    """Every (key path, leaf value) of a YAML tree, depth first, in file order."""
    if isinstance(tree, dict):
        for k, v in tree.items():
            yield from leaves(v, (*prefix, k))
    elif isinstance(tree, list):
        for i, v in enumerate(tree):
            yield from leaves(v, (*prefix, i))
    else:
        yield prefix, tree


def map_leaves(tree: Any, fn: Callable[[KeyPath, Any], Any], prefix: KeyPath = ()) -> Any:
    """A copy of `tree` with every leaf replaced by fn(path, leaf)."""
    if isinstance(tree, dict):
        return {k: map_leaves(v, fn, (*prefix, k)) for k, v in tree.items()}
    if isinstance(tree, list):
        return [map_leaves(v, fn, (*prefix, i)) for i, v in enumerate(tree)]
    return fn(prefix, tree)


def encode_value(value: Any, where: str) -> tuple[bytes, str]:
    """(plaintext bytes, type) of a typed leaf; exact round trip through `decode_value`."""
    if value is None:
        return b"", "null"
    if isinstance(value, bool):
        return (b"true" if value else b"false"), "bool"
    if isinstance(value, int):
        return str(value).encode(), "int"
    if isinstance(value, float):
        return (repr(value) if math.isfinite(value) else str(value)).encode(), "float"
    if isinstance(value, str):
        return value.encode("utf-8"), "str"
    if isinstance(value, bytes):
        return value, "bytes"
    raise ManifestError(
        f"a value of type {type(value).__name__} cannot be stored",
        where=where,
        hint="quote it to store it as a string (YAML reads bare dates and times as such)",
    )


def decode_value(raw: bytes, type_: str) -> Any:
    """The typed value of decrypted bytes."""
    if type_ == "null":
        return None
    if type_ == "bool":
        return raw == b"true"
    if type_ == "int":
        return int(raw)
    if type_ == "float":
        return float(raw)
    if type_ == "bytes":
        return raw
    return raw.decode("utf-8")


def load_yaml(text: str, where: str) -> Any:
    """Parse YAML safely; ManifestError with the line on a syntax error."""
    try:
        return bounded_yaml.load(text, _Loader)     # no aliases, capped size, nodes and depth
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        line = f":{mark.line + 1}" if mark is not None else ""
        problem = getattr(err, "problem", None) or "invalid YAML"
        raise ManifestError(
            f"malformed YAML: {problem}",
            where=f"{where}{line}",
            hint="fix the syntax, or restore the file from git history",
        ) from err


def dump_yaml(data: Any) -> str:
    """Block-style YAML in insertion order; long base64 lines are never folded."""
    text: str = yaml.dump(
        data, Dumper=_Dumper, sort_keys=False, default_flow_style=False, allow_unicode=True, width=1 << 20
    )
    return text


def check_keys(tree: Any, where: str, prefix: KeyPath = ()) -> None:
    """Mapping keys must be strings: the signed canonical form is JSON."""
    if isinstance(tree, dict):
        for k, v in tree.items():
            if not isinstance(k, str):
                raise ManifestError(
                    f"key {k!r} is not a string",
                    where=f"{where}: {display((*prefix, str(k)))}",
                    hint="quote the key",
                )
            check_keys(v, where, (*prefix, k))
    elif isinstance(tree, list):
        for i, v in enumerate(tree):
            check_keys(v, where, (*prefix, i))


def split_document(doc: Any, where: str, *, keys_checked: bool = False) -> tuple[dict[str, Any], Any]:
    """(data, raw metadata or None) of a parsed YAML document. `keys_checked`: the reader already refused any
    key that is not a string (fastyaml does), so the tree walk is skipped."""
    if doc is None:
        doc = {}
    if not isinstance(doc, dict):
        raise ManifestError("a manifest must be a YAML mapping at the top", where=where)
    if not keys_checked:
        check_keys(doc, where)
    data = {k: v for k, v in doc.items() if k != META_KEY}
    return data, doc.get(META_KEY)


def _b64(value: Any, where: str, field: str) -> bytes:
    if not isinstance(value, str):
        raise ManifestError(f"metadata field {field} must be base64 text", where=where)
    try:
        return _b64d(value)
    except (binascii.Error, ValueError) as err:
        raise ManifestError(
            f"metadata field {field} is not valid base64 (truncated or edited?)",
            where=where,
            hint="restore the file from git history",
        ) from err


def parse_meta(raw: Any, where: str) -> Meta:
    """Validate the `stratum:` block; ManifestError naming the field."""
    w = f"{where}: {META_KEY}"
    if raw is None:
        raise ManifestError(
            "no `stratum:` block: this file is not an encrypted manifest",
            where=where,
            hint="run `stratum secret encrypt` on it before committing",
        )
    if not isinstance(raw, dict):
        raise ManifestError("the `stratum:` block must be a mapping", where=w)
    fmt = raw.get("format")
    if not isinstance(fmt, int) or isinstance(fmt, bool):
        raise ManifestError("metadata field format is missing", where=w)
    if fmt > FORMAT:
        raise ManifestError(
            f"written by a newer format version ({fmt}; this Stratum reads up to {FORMAT})",
            where=w,
            hint="upgrade Stratum",
        )
    for field, kind in (
        ("version", int),
        ("path", str),
        ("lastmodified", str),
        ("shamir_threshold", int),
        ("signer", str),
        ("key_groups", list),
        ("signature", dict),
    ):
        if not isinstance(raw.get(field), kind) or isinstance(raw.get(field), bool):
            raise ManifestError(
                f"metadata field {field} is missing or not a {kind.__name__}",
                where=w,
                hint="the block was edited by hand; restore it from git history",
            )
    groups: list[tuple[Wrap, ...]] = []
    for gi, group in enumerate(raw["key_groups"]):
        if not isinstance(group, list) or not group:
            raise ManifestError(
                f"key group {gi} is empty or not a list",
                where=w,
                hint="a recipient block was removed; restore it or run `stratum secret updatekeys`",
            )
        wraps = []
        for ri, item in enumerate(group):
            fw = f"key_groups[{gi}][{ri}]"
            if not isinstance(item, dict) or not isinstance(item.get("recipient"), str):
                raise ManifestError(f"{fw} has no recipient", where=w)
            wraps.append(
                Wrap(
                    item["recipient"],
                    _b64(item.get("enc"), w, f"{fw}.enc"),
                    _b64(item.get("wrap"), w, f"{fw}.wrap"),
                )
            )
        groups.append(tuple(wraps))
    if not groups:
        raise ManifestError(
            "no key groups: nobody can decrypt this file",
            where=w,
            hint="restore the recipient blocks or run `stratum secret updatekeys`",
        )
    threshold = raw["shamir_threshold"]
    if not 1 <= threshold <= len(groups):
        raise ManifestError(f"shamir_threshold {threshold} does not fit {len(groups)} key group(s)", where=w)
    sig = raw["signature"]
    kv_path = raw.get("kv_path", "")
    if not isinstance(kv_path, str) or (kv_path and not _KV_PATH.match(kv_path)):
        raise ManifestError(f"metadata field kv_path {kv_path!r} is not a KV path such as kv/app/db", where=w,
                            hint="letters, digits, `_ . -` in `/`-separated parts under kv/")
    return Meta(
        kv_path=kv_path,
        format=fmt,
        version=raw["version"],
        path=raw["path"],
        lastmodified=raw["lastmodified"],
        shamir_threshold=threshold,
        key_groups=tuple(groups),
        signer=raw["signer"],
        sig_mldsa65=_b64(sig.get("mldsa65"), w, "signature.mldsa65"),
        sig_ed25519=_b64(sig.get("ed25519"), w, "signature.ed25519"),
    )


def plaintext_paths(data: Any) -> list[KeyPath]:
    """The key paths whose value is not an `ENC[...]` string (a plaintext leak), in `leaves` order."""
    out: list[KeyPath] = []
    _find_plaintext(data, (), out)
    return out


def _find_plaintext(tree: Any, prefix: KeyPath, out: list[KeyPath]) -> None:
    # `leaves` without a generator per level (part of every manifest's parse): strings are tested in place.
    items = tree.items() if isinstance(tree, dict) else enumerate(tree) if isinstance(tree, list) else None
    if items is None:
        if not (isinstance(tree, str) and parse_enc(tree) is not None):
            out.append(prefix)
        return
    for k, v in items:
        if isinstance(v, str):
            if parse_enc(v) is None:
                out.append((*prefix, k))
        else:
            _find_plaintext(v, (*prefix, k), out)


def load_document(text: str, where: str) -> Any:
    """A manifest's YAML document: the fast reader for what `dump_yaml` writes (fastyaml.py, the same result),
    else the general loader."""
    from reconcilers.vault import fastyaml

    doc = fastyaml.load(text)
    return doc if doc is not None else load_yaml(text, where)


def split_text(text: str, where: str) -> tuple[dict[str, Any], Any]:
    """(data, raw metadata or None) of a manifest's text: `load_document` then `split_document`, without the
    key check when the fast reader took the text (it reads string keys only)."""
    from reconcilers.vault import fastyaml

    doc = fastyaml.load(text)
    if doc is not None:
        return split_document(doc, where, keys_checked=True)
    return split_document(load_yaml(text, where), where)


def parse(text: str, where: str) -> Manifest:
    """Parse an encrypted manifest; ManifestError on bad YAML, a bad block, or any unencrypted value."""
    data, raw_meta = split_text(text, where)
    meta = parse_meta(raw_meta, where)
    leaks = plaintext_paths(data)
    if leaks:
        raise ManifestError(
            f"{len(leaks)} value(s) not encrypted: {', '.join(display(p) for p in leaks[:5])}",
            where=f"{where}: {display(leaks[0])}",
            hint="run `stratum secret encrypt` (never commit plaintext values)",
        )
    return Manifest(data=data, meta=meta)


def render(manifest: Manifest) -> str:
    """The YAML text of a manifest (data first, the `stratum:` block last)."""
    return dump_yaml({**manifest.data, META_KEY: manifest.meta.as_yaml_data()})


SIGNED_PREFIX = b"stratum-manifest-v1\x00"


def canonical_json(body: Any) -> bytes:
    """`json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False)` as UTF-8: the signed form.

    orjson writes the same bytes for what a manifest holds (string keys, strings, ints, lists, dicts: sorted
    keys, compact separators, UTF-8 and the same escapes), ~5x faster; tests/reconcilers/test_vault_manifest_
    fast.py compares both on generated trees. What orjson refuses (an int beyond 64 bits, a lone surrogate,
    nesting past 254) goes to `json`, which defines the format."""
    try:
        return orjson.dumps(body, option=orjson.OPT_SORT_KEYS)
    except orjson.JSONEncodeError:
        return json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def signed_bytes(manifest: Manifest) -> bytes:
    """The canonical bytes both signatures cover: every ciphertext and all metadata but the signatures."""
    return SIGNED_PREFIX + canonical_json({"data": manifest.data, META_KEY: manifest.meta.unsigned()})
