"""Sealing and opening manifests: data key, values, key groups, signatures.

Seal (write):
 1. Reuse the previous data key unless rotating, so unchanged values keep their ciphertext (small diffs).
 2. Encrypt each leaf with AES-256-GCM, key path + type as associated data; keep the old `ENC[...]` string if
    the value and type are unchanged.
 3. Split the data key over the key groups (Shamir, k of n) and wrap each share per recipient with the hybrid
    KEM; an unchanged key and unchanged groups keep the old wraps.
 4. Bump the version (max(previous + 1, unix time)) and sign with ML-DSA-65 and Ed25519.
Open (read): verify both signatures, unwrap enough shares, rebuild the data key, decrypt.
"""

from __future__ import annotations

import functools
import os
import time
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

from reconcilers.vault import kem, shamir, sodium
from reconcilers.vault.backends import Backend
from reconcilers.vault.errors import DecryptError, KeyFormatError, NoKeyError, RulesError, SignatureError
from reconcilers.vault.keys import KeyRing, Recipient, Signer, SigningKey
from reconcilers.vault.manifest import (
    FORMAT,
    EncValue,
    KeyPath,
    Manifest,
    Meta,
    Wrap,
    aad,
    decode_value,
    display,
    encode_value,
    map_leaves,
    parse_enc,
    signed_bytes,
)

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric import ed25519

SIG_CONTEXT = b"stratum-manifest-v1"


@dataclass(frozen=True, slots=True)
class Policy:
    """Who may decrypt: key groups of recipients, and how many groups are needed."""

    groups: tuple[tuple[Recipient, ...], ...]
    threshold: int = 1


@dataclass(frozen=True, slots=True, repr=False)
class Opened:
    """A decrypted manifest: typed values (never logged), the data key, and the manifest it came from."""

    values: dict[str, Any]
    data_key: bytes
    manifest: Manifest

    def __repr__(self) -> str:
        return f"Opened(version={self.manifest.meta.version}, path={self.manifest.meta.path})"


@functools.lru_cache(maxsize=16)
def _ed25519_private(raw: bytes) -> ed25519.Ed25519PrivateKey:
    from cryptography.hazmat.primitives.asymmetric import ed25519

    return ed25519.Ed25519PrivateKey.from_private_bytes(raw)


def _wrap_aad(group: int, fingerprint: str) -> bytes:
    return f"stratum-wrap-v1\x00{group}\x00{fingerprint}".encode()


def _wrap_groups(backend: Backend, data_key: bytes, policy: Policy) -> tuple[tuple[Wrap, ...], ...]:
    n = len(policy.groups)
    shares = [(0, data_key)] if n == 1 else shamir.split(data_key, policy.threshold, n)
    out: list[tuple[Wrap, ...]] = []
    for gi, (group, (x, y)) in enumerate(zip(policy.groups, shares, strict=True)):
        wraps = []
        for recipient in group:
            ct, ss = kem.encapsulate(backend, recipient)
            nonce = os.urandom(12)
            sealed = backend.seal(ss, nonce, bytes([x]) + y, _wrap_aad(gi, recipient.fingerprint))
            wraps.append(Wrap(recipient.fingerprint, ct, nonce + sealed))
        out.append(tuple(wraps))
    return tuple(out)


def sign(backend: Backend, manifest: Manifest, key: SigningKey) -> Manifest:
    """The manifest with `signer` set and both signatures over its canonical bytes."""
    unsigned = replace(manifest, meta=replace(manifest.meta, signer=key.signer.text, sig_mldsa65=b"", sig_ed25519=b""))
    message = signed_bytes(unsigned)
    sig_pq = backend.sign(key.mldsa, message, SIG_CONTEXT)
    sig_ed = _ed25519_private(key.ed25519).sign(SIG_CONTEXT + message)
    return replace(unsigned, meta=replace(unsigned.meta, sig_mldsa65=sig_pq, sig_ed25519=sig_ed))


def seal(
    backend: Backend,
    values: dict[str, Any],
    *,
    path: str,
    policy: Policy | None,
    key: SigningKey,
    previous: Opened | None = None,
    rotate: bool = False,
    where: str = "",
    kv_path: str | None = None,
) -> Manifest:
    """Encrypt and sign `values` for `policy` (steps: module docstring). A None policy keeps the
    previous manifest's key groups as they are (no creation rules at hand, the data key unchanged). `kv_path`
    None keeps the previous manifest's KV path ("" = the default, kv/ + the path under secrets/)."""
    where = where or path
    if policy is None and (previous is None or rotate):
        raise RulesError(
            "no recipients: a new or rotated manifest needs creation rules or --recipient",
            where=where,
            hint="add a creation rule for this path to secrets/rules.ncl",
        )
    # 1. data key
    data_key = previous.data_key if previous is not None and not rotate else os.urandom(32)
    old = previous.manifest.data if previous is not None and not rotate else {}

    # 2. values
    def old_enc(kp: KeyPath) -> str | None:
        node: Any = old
        for part in kp:
            try:
                node = node[part]
            except (KeyError, IndexError, TypeError):  # the path is new, or its shape changed
                return None
        return node if isinstance(node, str) else None

    def enc(kp: KeyPath, value: Any) -> str:
        raw, type_ = encode_value(value, f"{where}: {display(kp)}")
        prior = old_enc(kp)
        parsed = parse_enc(prior) if prior else None
        if prior and parsed and parsed.type == type_:
            try:
                if backend.open(data_key, parsed.iv, parsed.data + parsed.tag, aad(kp, type_), "") == raw:
                    return prior
            except DecryptError:
                pass
        nonce = os.urandom(12)
        sealed = backend.seal(data_key, nonce, raw, aad(kp, type_))
        return EncValue(sealed[:-16], nonce, sealed[-16:], type_).render()

    data = map_leaves(values, enc)
    # 3. key groups
    same_groups = (
        previous is not None
        and not rotate
        and (
            policy is None
            or (
                previous.manifest.meta.shamir_threshold == policy.threshold
                and [[w.recipient for w in g] for g in previous.manifest.meta.key_groups]
                == [[r.fingerprint for r in g] for g in policy.groups]
            )
        )
    )
    if same_groups and previous is not None:
        groups, threshold = previous.manifest.meta.key_groups, previous.manifest.meta.shamir_threshold
    else:
        assert policy is not None
        groups, threshold = _wrap_groups(backend, data_key, policy), policy.threshold
    # 4. version, signature
    version = max((previous.manifest.meta.version + 1) if previous else 1, int(time.time()))
    meta = Meta(
        format=FORMAT,
        version=version,
        path=path,
        lastmodified=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        shamir_threshold=threshold,
        key_groups=groups,
        kv_path=(previous.manifest.meta.kv_path if previous is not None else "") if kv_path is None else kv_path,
    )
    return sign(backend, Manifest(data=data, meta=meta), key)


def verify(backend: Backend, manifest: Manifest, where: str) -> Signer:
    """The signer whose ML-DSA-65 and Ed25519 signatures both verify; SignatureError otherwise.
    Trust (is this signer allowed?) is the caller's decision: see rules.Rules.trusted."""
    try:
        signer = Signer.parse_cached(manifest.meta.signer)
    except KeyFormatError as err:
        raise SignatureError(
            "the manifest's signer key is malformed",
            where=f"{where}: stratum.signer",
            hint="re-sign it with `stratum secret updatekeys`",
        ) from err
    message = signed_bytes(manifest)
    if not backend.verify(signer.mldsa, message, manifest.meta.sig_mldsa65, SIG_CONTEXT):
        raise SignatureError(
            "the ML-DSA-65 signature does not verify: the file changed after it was signed",
            where=f"{where}: stratum.signature.mldsa65",
            hint="edit manifests only with `stratum secret edit/set`, or restore from git",
        )
    # libsodium, not OpenSSL: the same answers at ~0.56x the instructions (sodium.py says why it is no weaker).
    if not sodium.ed25519_verify(signer.ed25519, manifest.meta.sig_ed25519, SIG_CONTEXT + message):
        raise SignatureError(
            "the Ed25519 signature does not verify: the file changed after it was signed",
            where=f"{where}: stratum.signature.ed25519",
            hint="edit manifests only with `stratum secret edit/set`, or restore from git",
        )
    return signer


def data_key(backend: Backend, manifest: Manifest, keys: KeyRing, where: str) -> bytes:
    """Rebuild the data key from the shares this key ring can unwrap."""
    mine = {i.recipient.fingerprint: i for i in keys.identities}
    meta = manifest.meta
    shares: list[tuple[int, bytes]] = []
    for gi, group in enumerate(meta.key_groups):
        for ri, w in enumerate(group):
            identity = mine.get(w.recipient)
            if identity is None:
                continue
            at = f"{where}: stratum.key_groups[{gi}][{ri}]"
            ss = kem.decapsulate(backend, identity, w.enc, at)
            if len(w.wrap) < 12 + 16 + 1:
                raise DecryptError("wrapped key share is truncated", where=at, hint="restore from git history")
            share = backend.open(ss, w.wrap[:12], w.wrap[12:], _wrap_aad(gi, w.recipient), at)
            shares.append((share[0], share[1:]))
            break
        if len(shares) >= meta.shamir_threshold:
            break
    if len(shares) < meta.shamir_threshold:
        raise NoKeyError(
            f"your keys open {len(shares)} of the {meta.shamir_threshold} key group(s) needed",
            where=where,
            hint="ask a holder of another group's key, or check STRATUM_KEY_FILE",
        )
    if meta.shamir_threshold == 1 and len(meta.key_groups) == 1:
        return shares[0][1]
    try:
        return shamir.combine(shares)
    except ValueError as err:
        raise DecryptError(f"key shares do not combine: {err}", where=f"{where}: stratum.key_groups") from err


def decrypt_values(backend: Backend, manifest: Manifest, key: bytes, where: str) -> dict[str, Any]:
    """Every value decrypted and typed; DecryptError naming the key path of the first that fails."""

    def dec(kp: KeyPath, text: Any) -> Any:
        # The location is only spelled out when something fails: building it per value cost as much as the
        # AES-GCM decryption.
        parsed = parse_enc(text) if isinstance(text, str) else None
        if parsed is None:
            raise DecryptError("value is not an ENC[...] string", where=f"{where}: {display(kp)}")
        try:
            raw = backend.open(key, parsed.iv, parsed.data + parsed.tag, aad(kp, parsed.type), where)
        except DecryptError as err:
            raise DecryptError(err.what, where=f"{where}: {display(kp)}", hint=err.hint) from err.__cause__
        try:
            return decode_value(raw, parsed.type)
        except (ValueError, UnicodeDecodeError) as err:
            raise DecryptError(f"decrypted value is not a valid {parsed.type}",
                               where=f"{where}: {display(kp)}") from err

    out: dict[str, Any] = map_leaves(manifest.data, dec)
    return out


def open_manifest(backend: Backend, manifest: Manifest, keys: KeyRing, where: str) -> Opened:
    """Verify the signatures, then decrypt. (Trust in the signer is checked by the caller.)"""
    verify(backend, manifest, where)
    key = data_key(backend, manifest, keys, where)
    return Opened(values=decrypt_values(backend, manifest, key, where), data_key=key, manifest=manifest)
