"""Ed25519 verification and X25519 through libsodium (PyNaCl), for opening and checking manifests.

Why not `cryptography` (OpenSSL) as for everything else: verifying a manifest's Ed25519 signature was as costly
as its ML-DSA-65 one. Counted with callgrind on this machine's kind (AMD EPYC, cryptography 51 / OpenSSL 4.0,
PyNaCl 1.6 / libsodium 1.0.20), one verification over a manifest's ~6 KB of signed bytes takes 1.57 M
instructions in OpenSSL and 0.89 M in libsodium; one X25519 exchange 0.53 M against 0.37 M.

Same answers, never a weaker check: both compute the RFC 8032 cofactorless equation over the same bytes, and
libsodium refuses more (a non-canonical or small-order public key or R, besides S >= L, which both refuse), so
every signature it accepts OpenSSL accepts too, and an honest signer's signatures verify in both
(tests/reconcilers/test_vault_sodium.py checks them against each other). Signing stays with `cryptography`.
"""

from __future__ import annotations

ED25519_PUBLIC = 32
ED25519_SIG = 64
X25519_KEY = 32


def ed25519_verify(public: bytes, signature: bytes, message: bytes) -> bool:
    """True when `signature` is `public`'s Ed25519 signature of `message`."""
    # Imported here: nacl.bindings costs ~14 ms to import, paid only by processes that verify manifests.
    from nacl.bindings import crypto_sign_open
    from nacl.exceptions import BadSignatureError

    # libsodium reads exactly 32 key bytes and the first 64 signature bytes: other lengths never reach it.
    if len(public) != ED25519_PUBLIC or len(signature) != ED25519_SIG:
        return False
    try:
        crypto_sign_open(signature + message, public)
    except BadSignatureError:
        return False
    return True


def x25519(private: bytes, public: bytes) -> bytes | None:
    """The X25519 shared secret (RFC 7748; the scalar is clamped as usual), or None when it is all zero (a
    low-order public point was planted) or a key has the wrong length."""
    from nacl.bindings import crypto_scalarmult
    from nacl.exceptions import RuntimeError as SodiumError

    if len(private) != X25519_KEY or len(public) != X25519_KEY:
        return None
    try:
        return crypto_scalarmult(private, public)
    except SodiumError:     # libsodium returns -1 for an all-zero result
        return None
