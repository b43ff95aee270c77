"""Key types the engine issues for: generation, the signature hash each uses, and PEM forms.

`rsa` (2048/3072/4096), `ec` (P-256/P-384/P-521), `ed25519`, and `ml-dsa-65` (FIPS 204; cryptography 51 signs
X.509 certificates, CSRs, CRLs and OCSP responses with it). ML-DSA private keys export only as seeds (PKCS#8).
"""

from __future__ import annotations

from typing import Any

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, mldsa, padding, rsa
from cryptography.hazmat.primitives.asymmetric.types import (
    CertificateIssuerPrivateKeyTypes,
    CertificateIssuerPublicKeyTypes,
    PublicKeyTypes,
)

from reconcilers.vault.pki.errors import PkiError

KEY_TYPES = ("rsa", "ec", "ed25519", "ml-dsa-65")
DEFAULT_BITS = {"rsa": 2048, "ec": 256, "ed25519": 0, "ml-dsa-65": 0}
_CURVES: dict[int, ec.EllipticCurve] = {224: ec.SECP224R1(), 256: ec.SECP256R1(), 384: ec.SECP384R1(),
                                        521: ec.SECP521R1()}
_RSA_BITS = (2048, 3072, 4096, 8192)

PrivateKey = CertificateIssuerPrivateKeyTypes


def check_key_type(key_type: str, key_bits: int) -> int:
    """The key size to use for `key_type` (0 = the type's default); an error names what is allowed."""
    if key_type not in KEY_TYPES:
        raise PkiError(f"key_type {key_type!r} is not supported", hint=f"use one of {', '.join(KEY_TYPES)}")
    bits = key_bits or DEFAULT_BITS[key_type]
    if key_type == "rsa" and bits not in _RSA_BITS:
        raise PkiError(f"key_bits {bits} is not valid for rsa", hint="use 2048, 3072, 4096 or 8192")
    if key_type == "ec" and bits not in _CURVES:
        raise PkiError(f"key_bits {bits} is not valid for ec", hint="use 224, 256, 384 or 521")
    if key_type in ("ed25519", "ml-dsa-65"):
        bits = 0
    return bits


def generate(key_type: str, key_bits: int = 0) -> PrivateKey:
    """A new private key of the type and size."""
    bits = check_key_type(key_type, key_bits)
    if key_type == "rsa":
        return rsa.generate_private_key(public_exponent=65537, key_size=bits)
    if key_type == "ec":
        return ec.generate_private_key(_CURVES[bits])
    if key_type == "ed25519":
        return ed25519.Ed25519PrivateKey.generate()
    return mldsa.MLDSA65PrivateKey.generate()


def type_of(key: PrivateKey | PublicKeyTypes) -> str:
    """The engine's name for a key's type (private or public)."""
    if isinstance(key, rsa.RSAPrivateKey | rsa.RSAPublicKey):
        return "rsa"
    if isinstance(key, ec.EllipticCurvePrivateKey | ec.EllipticCurvePublicKey):
        return "ec"
    if isinstance(key, ed25519.Ed25519PrivateKey | ed25519.Ed25519PublicKey):
        return "ed25519"
    if isinstance(key, mldsa.MLDSA65PrivateKey | mldsa.MLDSA65PublicKey):
        return "ml-dsa-65"
    raise PkiError(f"a key of type {type(key).__name__} is not supported", hint=f"use one of {', '.join(KEY_TYPES)}")


def issuer_public(key: PublicKeyTypes) -> CertificateIssuerPublicKeyTypes:
    """The key as one that can sign certificates (for the authority key identifier), or an error."""
    if isinstance(key, rsa.RSAPublicKey | ec.EllipticCurvePublicKey | ed25519.Ed25519PublicKey
                  | mldsa.MLDSA65PublicKey):
        return key
    raise PkiError(f"a {type(key).__name__} cannot sign certificates here", hint=f"use one of {', '.join(KEY_TYPES)}")


def bits_of(key: PrivateKey | PublicKeyTypes) -> int:
    """The key's size in bits where the type has sizes (rsa, ec), else 0."""
    if isinstance(key, rsa.RSAPrivateKey | rsa.RSAPublicKey | ec.EllipticCurvePrivateKey | ec.EllipticCurvePublicKey):
        return int(key.key_size)
    return 0


SignHash = hashes.SHA256 | hashes.SHA384 | hashes.SHA512


def hash_for(key: PrivateKey) -> SignHash | None:
    """The digest a signature by `key` uses (None for the types that hash internally: ed25519, ML-DSA)."""
    if isinstance(key, ec.EllipticCurvePrivateKey):
        if key.key_size == 384:
            return hashes.SHA384()
        return hashes.SHA512() if key.key_size == 521 else hashes.SHA256()
    if isinstance(key, rsa.RSAPrivateKey):
        return hashes.SHA256()
    return None


def sign_bytes(key: PrivateKey, data: bytes) -> bytes:
    """Sign `data` exactly as `CertificateRevocationListBuilder.sign(key, hash_for(key))` signs a TBS."""
    digest = hash_for(key)
    if isinstance(key, rsa.RSAPrivateKey):
        assert digest is not None
        return key.sign(data, padding.PKCS1v15(), digest)
    if isinstance(key, ec.EllipticCurvePrivateKey):
        assert digest is not None
        return key.sign(data, ec.ECDSA(digest))
    if isinstance(key, ed25519.Ed25519PrivateKey | mldsa.MLDSA65PrivateKey):
        return key.sign(data)
    raise PkiError(f"cannot sign with a {type(key).__name__}")


def private_pem(key: PrivateKey) -> str:
    """PKCS#8 PEM, unencrypted (it lives inside the vault's barrier or is handed to the caller once)."""
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption()).decode()


def private_key_type_label(key: PrivateKey) -> str:
    """Vault's `private_key_type` field."""
    return type_of(key)


def load_private(pem: str) -> PrivateKey:
    """Load a PKCS#8 PEM private key the engine wrote."""
    key: Any = serialization.load_pem_private_key(pem.encode(), password=None)
    type_of(key)
    return key  # type: ignore[no-any-return]
