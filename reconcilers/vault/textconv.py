"""The `git diff` view of a manifest: key paths with value fingerprints, metadata in summary; never plaintext
unless the user asks (`--reveal`) and holds a key.

Fingerprints: with the data key, an HMAC of the plaintext under a key derived from it, so equal values show
equal fingerprints across versions that keep the data key; without a key, a hash of the ciphertext, which
changes exactly when the value does (unchanged values keep their ciphertext).
"""

from __future__ import annotations

import hashlib
import hmac
from typing import Any

from reconcilers.vault.envelope import Opened
from reconcilers.vault.errors import KeyFormatError
from reconcilers.vault.keys import Signer
from reconcilers.vault.manifest import KeyPath, Manifest, aad, display, encode_value, leaves


def value_fingerprint(kp: KeyPath, enc_text: str, opened: Opened | None, value: Any = None) -> str:
    """`hmac:<16 hex>` with the data key, else `ct:<16 hex>`."""
    if opened is None:
        return "ct:" + hashlib.sha256(enc_text.encode()).hexdigest()[:16]
    raw, type_ = encode_value(value, display(kp))
    mac_key = hmac.digest(opened.data_key, b"stratum-fingerprint-v1", "sha256")
    return "hmac:" + hmac.new(mac_key, aad(kp, type_) + raw, "sha256").hexdigest()[:16]


def render(manifest: Manifest, opened: Opened | None = None, reveal: bool = False) -> str:
    """The text git diffs. Values appear only when `reveal` and `opened` are both given."""
    values = dict(leaves(opened.values)) if opened is not None else {}
    lines: list[str] = []
    for kp, enc_text in leaves(manifest.data):
        type_ = enc_text.rsplit("type:", 1)[-1].rstrip("]") if isinstance(enc_text, str) else "?"
        if reveal and opened is not None:
            lines.append(f"{display(kp)}: {values.get(kp)!r}")
        else:
            lines.append(f"{display(kp)}: <{type_} {value_fingerprint(kp, str(enc_text), opened, values.get(kp))}>")
    meta = manifest.meta
    lines.append("--- stratum")
    lines.append(f"version: {meta.version}")
    lines.append(f"path: {meta.path}")
    lines.append(f"threshold: {meta.shamir_threshold} of {len(meta.key_groups)} group(s)")
    for gi, group in enumerate(meta.key_groups):
        lines.append(f"group {gi}: {', '.join(w.recipient for w in group)}")
    signer = meta.signer
    lines.append(f"signer: {_signer_fp(signer)}")
    return "\n".join(lines) + "\n"


def _signer_fp(text: str) -> str:
    try:
        return Signer.parse(text).fingerprint
    except KeyFormatError:
        return "(malformed)"
