"""Keys: recipients (hybrid KEM public keys), signers (hybrid signature public keys), their private halves,
their text forms, and the 0600 key files under the user's config directory.

Text forms (bech32m, checksummed):
    stratum1...                 recipient: ML-KEM-768 encapsulation key + X25519 public key
    stratumsig1...              signer: ML-DSA-65 public key + Ed25519 public key
    STRATUM-SECRET-KEY-1...     identity (decrypts): a 32-byte seed, or expanded keys (older pqclean keygen)
    STRATUM-SIGNING-KEY-1...    signing key: a 32-byte seed, or expanded keys
A seed expands (SHAKE256, as X-Wing does) into the FIPS 203/204 seeds and the classical private keys; every
backend can use a seed key (expand.py). Expanded-only keys still load, for the backends that take them.
"""

from __future__ import annotations

import functools
import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

from reconcilers.vault import bech32
from reconcilers.vault.backends import Backend, PQSecret, get_backend
from reconcilers.vault.backends.base import (
    MLDSA65_EXPANDED,
    MLDSA65_PUBLIC,
    MLKEM768_EXPANDED,
    MLKEM768_PUBLIC,
)
from reconcilers.vault.errors import KeyFormatError, NoKeyError

RECIPIENT_HRP = "stratum"
SIGNER_HRP = "stratumsig"
IDENTITY_HRP = "STRATUM-SECRET-KEY-"
SIGNING_HRP = "STRATUM-SIGNING-KEY-"
_FORM_SEED = 1
_FORM_EXPANDED = 2
_VERSION = 1


def _decode(text: str, hrp: str, what: str) -> bytes:
    try:
        got, payload = bech32.decode(text.strip())
    except bech32.Bech32Error as err:
        raise KeyFormatError(
            f"{what} does not parse: {err}",
            where=_preview(text),
            hint="copy the whole key again; the checksum catches typos and truncation",
        ) from err
    if got != hrp.lower():
        raise KeyFormatError(
            f"expected a {what} starting with {hrp}1, got a {got}1... key",
            where=_preview(text),
            hint="recipients start with stratum1, signers with stratumsig1",
        )
    if not payload:
        raise KeyFormatError(f"empty {what}", where=_preview(text))
    return payload


def _preview(text: str) -> str:
    # Only a public key's head is ever shown; private keys are never echoed (callers pass public text only).
    text = text.strip()
    return text[:14] + "..." if not text.upper().startswith("STRATUM-S") else "<private key>"


@dataclass(frozen=True, slots=True)
class Recipient:
    """A hybrid KEM public key: who can decrypt."""

    mlkem: bytes
    x25519: bytes

    @classmethod
    def parse(cls, text: str) -> Recipient:
        """Parse `stratum1...`; KeyFormatError when malformed."""
        raw = _decode(text, RECIPIENT_HRP, "recipient")
        if raw[0] != _VERSION or len(raw) != 1 + MLKEM768_PUBLIC + 32:
            raise KeyFormatError(
                "recipient has an unknown version or a wrong length",
                where=_preview(text),
                hint="was it made by a newer Stratum? upgrade, or copy it again",
            )
        return cls(mlkem=raw[1 : 1 + MLKEM768_PUBLIC], x25519=raw[1 + MLKEM768_PUBLIC :])

    @property
    def text(self) -> str:
        """The copyable `stratum1...` form."""
        return bech32.encode(RECIPIENT_HRP, bytes([_VERSION]) + self.mlkem + self.x25519)

    @property
    def fingerprint(self) -> str:
        """A short id written into manifests: `kem:` + 32 hex digits of SHA-256 over both public keys."""
        return "kem:" + hashlib.sha256(self.mlkem + self.x25519).hexdigest()[:32]


@dataclass(frozen=True, slots=True)
class Signer:
    """A hybrid signature public key: who may sign manifests."""

    mldsa: bytes
    ed25519: bytes

    @classmethod
    def parse(cls, text: str) -> Signer:
        """Parse `stratumsig1...`; KeyFormatError when malformed."""
        raw = _decode(text, SIGNER_HRP, "signer key")
        if raw[0] != _VERSION or len(raw) != 1 + MLDSA65_PUBLIC + 32:
            raise KeyFormatError("signer key has an unknown version or a wrong length", where=_preview(text))
        return cls(mldsa=raw[1 : 1 + MLDSA65_PUBLIC], ed25519=raw[1 + MLDSA65_PUBLIC :])

    @staticmethod
    @functools.lru_cache(maxsize=256)
    def parse_cached(text: str) -> Signer:
        """`parse`, memoized: every manifest of a repo names one of a few signers (errors are not cached)."""
        return Signer.parse(text)

    @property
    def text(self) -> str:
        """The copyable `stratumsig1...` form."""
        return bech32.encode(SIGNER_HRP, bytes([_VERSION]) + self.mldsa + self.ed25519)

    @property
    def fingerprint(self) -> str:
        """`sig:` + 32 hex digits of SHA-256 over both public keys."""
        return "sig:" + hashlib.sha256(self.mldsa + self.ed25519).hexdigest()[:32]


@dataclass(frozen=True, slots=True, repr=False)
class Identity:
    """A private hybrid KEM key (repr never shows it)."""

    recipient: Recipient
    mlkem: PQSecret
    x25519: bytes
    payload: bytes

    def __repr__(self) -> str:
        return f"Identity({self.recipient.fingerprint})"

    @property
    def text(self) -> str:
        """The `STRATUM-SECRET-KEY-1...` form (upper case, as age writes its secret keys)."""
        return bech32.encode(IDENTITY_HRP, self.payload).upper()


@dataclass(frozen=True, slots=True, repr=False)
class SigningKey:
    """A private hybrid signature key (repr never shows it)."""

    signer: Signer
    mldsa: PQSecret
    ed25519: bytes
    payload: bytes

    def __repr__(self) -> str:
        return f"SigningKey({self.signer.fingerprint})"

    @property
    def text(self) -> str:
        """The `STRATUM-SIGNING-KEY-1...` form."""
        return bech32.encode(SIGNING_HRP, self.payload).upper()


def _identity_from_payload(payload: bytes) -> Identity:
    form, body = payload[0], payload[1:]
    if form == _FORM_SEED and len(body) == 32:
        material = hashlib.shake_256(b"stratum/kem/v1" + body).digest(96)
        seed, x_priv = material[:64], material[64:]
        ek = get_backend("openssl").kem_public_from_seed(seed)  # type: ignore[attr-defined]
        secret = PQSecret(seed=seed)
    elif form == _FORM_EXPANDED and len(body) == MLKEM768_EXPANDED + 32:
        dk, x_priv = body[:MLKEM768_EXPANDED], body[MLKEM768_EXPANDED:]
        # FIPS 203: dk = dk_pke (384*k bytes) || ek || H(ek) || z, so the public key sits inside.
        ek = dk[1152 : 1152 + MLKEM768_PUBLIC]
        if hashlib.sha3_256(ek).digest() != dk[1152 + MLKEM768_PUBLIC : 1152 + MLKEM768_PUBLIC + 32]:
            raise KeyFormatError(
                "the expanded ML-KEM key fails its internal hash check",
                where="<private key>",
                hint="the key file is damaged; restore it from your backup",
            )
        secret = PQSecret(expanded=dk)
    else:
        raise KeyFormatError(
            "unknown private key form", where="<private key>", hint="was it made by a newer Stratum? upgrade"
        )
    from cryptography.hazmat.primitives.asymmetric import x25519

    x_pub = x25519.X25519PrivateKey.from_private_bytes(x_priv).public_key().public_bytes_raw()
    return Identity(Recipient(bytes(ek), x_pub), secret, x_priv, payload)


def _signing_from_payload(payload: bytes) -> SigningKey:
    form, body = payload[0], payload[1:]
    if form == _FORM_SEED and len(body) == 32:
        material = hashlib.shake_256(b"stratum/sig/v1" + body).digest(64)
        xi, ed_priv = material[:32], material[32:]
        pk = get_backend("openssl").sig_public_from_seed(xi)  # type: ignore[attr-defined]
        secret = PQSecret(seed=xi)
    elif form == _FORM_EXPANDED and len(body) == MLDSA65_EXPANDED + MLDSA65_PUBLIC + 32:
        sk, pk = body[:MLDSA65_EXPANDED], body[MLDSA65_EXPANDED : MLDSA65_EXPANDED + MLDSA65_PUBLIC]
        ed_priv = body[MLDSA65_EXPANDED + MLDSA65_PUBLIC :]
        if sk[:32] != pk[:32]:  # FIPS 204: both start with rho
            raise KeyFormatError("the expanded ML-DSA key does not match its public key", where="<private key>")
        secret = PQSecret(expanded=sk)
    else:
        raise KeyFormatError(
            "unknown signing key form", where="<private key>", hint="was it made by a newer Stratum? upgrade"
        )
    from cryptography.hazmat.primitives.asymmetric import ed25519

    ed_pub = ed25519.Ed25519PrivateKey.from_private_bytes(ed_priv).public_key().public_bytes_raw()
    return SigningKey(Signer(bytes(pk), ed_pub), secret, ed_priv, payload)


def parse_identity(text: str) -> Identity:
    """Parse `STRATUM-SECRET-KEY-1...`."""
    return _identity_from_payload(_decode(text, IDENTITY_HRP, "secret key"))


def parse_signing_key(text: str) -> SigningKey:
    """Parse `STRATUM-SIGNING-KEY-1...`."""
    return _signing_from_payload(_decode(text, SIGNING_HRP, "signing key"))


def generate(backend: Backend) -> tuple[Identity, SigningKey]:
    """A new identity and signing key, always in seed form: OpenSSL loads the FIPS seeds and the other backends
    expand them (expand.py), so a key made with any backend works with every backend. The pair is tried once
    with `backend` (encapsulate/decapsulate, sign/verify) before it is returned."""
    identity = _identity_from_payload(bytes([_FORM_SEED]) + os.urandom(32))
    signing = _signing_from_payload(bytes([_FORM_SEED]) + os.urandom(32))
    ciphertext, shared = backend.kem_encaps(identity.recipient.mlkem)
    signature = backend.sign(signing.mldsa, b"stratum keygen self-test", b"")
    if backend.kem_decaps(identity.mlkem, ciphertext) != shared or not backend.verify(
        signing.signer.mldsa, b"stratum keygen self-test", signature, b""
    ):
        raise KeyFormatError(
            f"the new key pair fails its self-test with the {backend.name} backend",
            hint="report this: the backend and the seed expansion disagree",
        )
    return identity, signing


@dataclass(frozen=True, slots=True)
class KeyRing:
    """The private keys a user (or the daemon) holds."""

    identities: tuple[Identity, ...] = ()
    signing_keys: tuple[SigningKey, ...] = ()
    sources: tuple[str, ...] = ()

    def signing_key(self) -> SigningKey:
        """The first signing key; NoKeyError when there is none."""
        if not self.signing_keys:
            raise NoKeyError(
                "no signing key found",
                where=", ".join(self.sources) or str(keys_dir()),
                hint="run `stratum secret keygen`, or point STRATUM_KEY_FILE at your key file",
            )
        return self.signing_keys[0]


def keys_dir() -> Path:
    """`$XDG_CONFIG_HOME/stratum/keys` (default `~/.config/stratum/keys`)."""
    base = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base) / "stratum" / "keys"


def render_key_file(identity: Identity, signing: SigningKey, comment: str = "") -> str:
    """The text of a key file: public forms as comments, then both private lines."""
    lines = ["# Stratum private keys. Keep this file 0600 and out of every repository."]
    if comment:
        lines.append(f"# {comment}")
    lines += [
        f"# recipient: {identity.recipient.text}",
        f"# signer: {signing.signer.text}",
        identity.text,
        signing.text,
        "",
    ]
    return "\n".join(lines)


def write_key_file(path: Path, identity: Identity, signing: SigningKey, comment: str = "") -> None:
    """Create `path` with mode 0600 (its folder 0700); refuse to overwrite an existing key file."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError as err:
        raise NoKeyError(
            "a key file already exists here",
            where=str(path),
            hint="choose another --name, or delete the old file if you really mean to",
        ) from err
    with os.fdopen(fd, "w") as fh:
        fh.write(render_key_file(identity, signing, comment))


def read_key_file(path: Path) -> KeyRing:
    """The keys in one key file; refuses files readable by group or others."""
    try:
        mode = path.stat().st_mode
        text = path.read_text()
    except OSError as err:
        raise NoKeyError(
            f"cannot read key file: {err.strerror}",
            where=str(path),
            hint="run `stratum secret keygen` or fix STRATUM_KEY_FILE",
        ) from err
    if mode & 0o077:
        raise NoKeyError("key file is readable by other users", where=str(path), hint=f"chmod 600 {path}")
    return keyring_from_text(text, str(path))


def keyring_from_text(text: str, source: str) -> KeyRing:
    """The keys in the text of a key file (`source` names where it came from, in errors and the ring)."""
    identities: list[Identity] = []
    signing: list[SigningKey] = []
    for number, line in enumerate(text.splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        try:
            if line.upper().startswith(IDENTITY_HRP + "1"):
                identities.append(parse_identity(line))
            elif line.upper().startswith(SIGNING_HRP + "1"):
                signing.append(parse_signing_key(line))
            else:
                raise KeyFormatError("not a Stratum private key line")
        except KeyFormatError as err:
            raise KeyFormatError(err.what, where=f"{source}:{number}", hint=err.hint) from err
    return KeyRing(tuple(identities), tuple(signing), (source,))


def load_keyring(files: list[Path] | None = None) -> KeyRing:
    """Keys from `files`, else from STRATUM_KEY_FILE (os.pathsep-separated), else every *.key in keys_dir"""
    if not files:
        env = os.environ.get("STRATUM_KEY_FILE")
        files = [Path(p) for p in env.split(os.pathsep) if p] if env else sorted(keys_dir().glob("*.key"))
    rings = [read_key_file(p) for p in files]
    return KeyRing(
        tuple(i for r in rings for i in r.identities),
        tuple(s for r in rings for s in r.signing_keys),
        tuple(s for r in rings for s in r.sources),
    )
