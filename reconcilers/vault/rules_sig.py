"""Signed rules: a change to the trusted signers or creation rules must be signed by a signer the *previous*
rules trusted, so no commit can trust its own signer (the vault's side of "trust is never self-granted").

The signature lives next to the rules, in `<rules path>.sig` (`secrets/rules.ncl.sig`):

    format: 1
    path: secrets/rules.ncl
    version: 1796623912             # monotonic: an old, validly signed rules file cannot be replayed
    digest: sha256:...              # of the *evaluated* rules (imports included), see `digest`
    signer: stratumsig1...
    signature: {mldsa65: <b64>, ed25519: <b64>}

Judging (`judge`), against the base (the last good revision, or HEAD for the staged tree):
 1. no base rules, or base rules that trust nobody: bootstrap, nothing to protect yet;
 2. the evaluated rules are unchanged: nothing to sign;
 3. otherwise the signature file must verify (both signatures), name the current digest, be signed by a
    signer trusted by the *base* rules, and carry a version above the base's signature version.
"""

from __future__ import annotations

import binascii
import hashlib
import json
import time
from dataclasses import dataclass
from typing import Any

import yaml

from reconcilers.base import Problem
from reconcilers.vault import fastyaml
from reconcilers.vault.backends import Backend
from reconcilers.vault.errors import KeyFormatError, SignatureError
from reconcilers.vault.keys import Signer, SigningKey
from reconcilers.vault.rules import RULES_PATH, Rules

SIG_CONTEXT = b"stratum-rules-v1"
FORMAT = 1
NAME = "vault"
# A signature file is a few KB (two signatures and a signer key): anything far larger is not one.
MAX_SIG_BYTES = 64 * 1024


def sig_path(rules_path: str = RULES_PATH) -> str:
    """Where the signature of `rules_path` lives."""
    return rules_path + ".sig"


def canonical(rules: Rules | None) -> dict[str, Any]:
    """The evaluated rules as plain data: what a signature covers (absent rules are empty rules)."""
    rules = rules or Rules()
    return {
        "trusted_signers": [[name, signer.fingerprint] for name, signer in rules.signers],
        "creation_rules": [
            {
                "path_regex": rule.path_regex,
                "groups": [[r.fingerprint for r in group] for group in rule.policy.groups],
                "threshold": rule.policy.threshold,
            }
            for rule in rules.rules
        ],
    }


def digest(rules: Rules | None) -> str:
    """`sha256:<hex>` of the canonical rules; equal digests mean the same trust and the same recipients."""
    body = json.dumps(canonical(rules), sort_keys=True, separators=(",", ":")).encode()
    return "sha256:" + hashlib.sha256(body).hexdigest()


@dataclass(frozen=True, slots=True)
class RulesSignature:
    """A parsed signature file."""

    path: str
    version: int
    digest: str
    signer: str
    sig_mldsa65: bytes = b""
    sig_ed25519: bytes = b""

    def signed_bytes(self) -> bytes:
        """What both signatures cover."""
        body = {"format": FORMAT, "path": self.path, "version": self.version, "digest": self.digest,
                "signer": self.signer}
        return SIG_CONTEXT + b"\x00" + json.dumps(body, sort_keys=True, separators=(",", ":")).encode()

    def render(self) -> str:
        """The YAML text of the file."""
        def b64(raw: bytes) -> str:
            return binascii.b2a_base64(raw, newline=False).decode()

        data = {"format": FORMAT, "path": self.path, "version": self.version, "digest": self.digest,
                "signer": self.signer,
                "signature": {"mldsa65": b64(self.sig_mldsa65), "ed25519": b64(self.sig_ed25519)}}
        text: str = yaml.safe_dump(data, sort_keys=False, width=1 << 20)
        return text


def sign(backend: Backend, rules: Rules | None, key: SigningKey, rules_path: str = RULES_PATH,
         previous: RulesSignature | None = None) -> RulesSignature:
    """A signature over the evaluated `rules`, its version above `previous`'s."""
    version = max(previous.version + 1 if previous else 1, int(time.time()))
    unsigned = RulesSignature(rules_path, version, digest(rules), key.signer.text)
    message = unsigned.signed_bytes()
    from cryptography.hazmat.primitives.asymmetric import ed25519

    sig_pq = backend.sign(key.mldsa, message, SIG_CONTEXT)
    sig_ed = ed25519.Ed25519PrivateKey.from_private_bytes(key.ed25519).sign(message)
    return RulesSignature(unsigned.path, version, unsigned.digest, unsigned.signer, sig_pq, sig_ed)


def parse(text: str, where: str) -> RulesSignature:
    """The signature file's fields; SignatureError naming the file when it is malformed."""
    bad = SignatureError("the rules signature file is malformed", where=where,
                         hint="sign the rules again with `stratum secret sign-rules`")
    if len(text) > MAX_SIG_BYTES:
        raise bad
    # Only the plain shape `render` writes is read (fastyaml: no anchors, aliases or tags), and every field must
    # have its type before it is used: nothing an attacker commits here is expanded or traversed.
    raw = fastyaml.load(text)
    sig = raw.get("signature") if raw is not None else None
    if raw is None or not isinstance(sig, dict):
        raise bad
    path, version, digest_, signer = raw.get("path"), raw.get("version"), raw.get("digest"), raw.get("signer")
    pq, ed, fmt = sig.get("mldsa65"), sig.get("ed25519"), raw.get("format", FORMAT)
    if not (isinstance(path, str) and isinstance(digest_, str) and isinstance(signer, str) and isinstance(pq, str)
            and isinstance(ed, str) and type(version) is int and type(fmt) is int):
        raise bad
    if fmt > FORMAT:
        raise SignatureError("the rules signature was written by a newer Stratum", where=where, hint="upgrade")
    try:
        return RulesSignature(path, version, digest_, signer, binascii.a2b_base64(pq, strict_mode=True),
                              binascii.a2b_base64(ed, strict_mode=True))
    except (binascii.Error, ValueError) as err:
        raise bad from err


def verify(backend: Backend, sig: RulesSignature, where: str) -> Signer:
    """The signer whose ML-DSA-65 and Ed25519 signatures both verify; SignatureError otherwise."""
    try:
        signer = Signer.parse_cached(sig.signer)
    except KeyFormatError as err:
        raise SignatureError("the rules signature names a malformed signer key", where=where,
                             hint="sign the rules again with `stratum secret sign-rules`") from err
    from cryptography.exceptions import InvalidSignature
    from cryptography.hazmat.primitives.asymmetric import ed25519

    message = sig.signed_bytes()
    ok = backend.verify(signer.mldsa, message, sig.sig_mldsa65, SIG_CONTEXT)
    try:
        ed25519.Ed25519PublicKey.from_public_bytes(signer.ed25519).verify(sig.sig_ed25519, message)
    except (InvalidSignature, ValueError):
        ok = False
    if not ok:
        raise SignatureError("the rules signature does not verify: the file was changed after it was signed",
                             where=where, hint="sign the rules again with `stratum secret sign-rules`")
    return signer


def judge(backend: Backend, rules: Rules | None, sig_text: str | None, base_rules: Rules | None,
          base_sig_text: str | None, rules_path: str = RULES_PATH, base_name: str = "the last good revision",
          ) -> list[Problem]:
    """Steps 1-3 of the module docstring: the problems of a rules change judged by the base's rules."""
    where = sig_path(rules_path)
    # 1. bootstrap: before any signer is trusted there is no trust a commit could take over
    if base_rules is None or not base_rules.signers:
        return []
    # 2. unchanged
    current = digest(rules)
    if current == digest(base_rules):
        return []
    hint = (f"have a signer trusted at {base_name} run `stratum secret sign-rules` and commit {where} with the "
            "rules change")

    def problem(message: str) -> list[Problem]:
        return [Problem(message, path=rules_path, reconciler=NAME, hint=hint)]

    # 3. signed, for these rules, by a signer trusted before, and newer than the base's signature
    if sig_text is None:
        return problem(f"the trusted signers or creation rules changed, but the change is not signed (no {where}); "
                       f"rules changes are judged by the rules of {base_name}")
    try:
        sig = parse(sig_text, where)
        signer = verify(backend, sig, where)
    except SignatureError as err:
        return problem(err.what)
    if sig.path != rules_path or sig.digest != current:
        return problem(f"{where} signs other rules than these (digest {sig.digest[:19]}, the rules are "
                       f"{current[:19]}): the rules changed after they were signed")
    trusted_as = base_rules.trusted(signer)
    if trusted_as is None:
        return problem(f"the rules change is signed by {signer.fingerprint}, which is not a trusted signer at "
                       f"{base_name}: a commit cannot trust its own signer")
    if base_sig_text is not None:
        try:
            base_version = parse(base_sig_text, where).version
        except SignatureError:
            base_version = 0
        if sig.version <= base_version:
            return problem(f"the rules signature version {sig.version} is not above {base_version} at {base_name}: "
                           "an older signed rules file replayed?")
    return []
