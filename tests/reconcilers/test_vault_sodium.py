"""libsodium's Ed25519 verification and X25519 (sodium.py) give OpenSSL's answers on honest input, refuse what
they must, and a manifest with either signature broken is still refused with the same message, by the open
path and by the daemon's check. Real keys and signatures from `cryptography`; nothing is mocked."""

from __future__ import annotations

import os
from dataclasses import replace

import pytest
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric import ed25519, x25519

from reconcilers.vault import check, envelope, kem, keys, manifest, sodium
from reconcilers.vault.backends import get_backend
from reconcilers.vault.errors import DecryptError, SignatureError

B = get_backend("openssl")
PATH = "secrets/app.yaml"


@pytest.fixture(scope="module")
def alice() -> tuple[keys.Identity, keys.SigningKey]:
    return keys.generate(B)


def _sealed(alice: tuple[keys.Identity, keys.SigningKey]) -> manifest.Manifest:
    ident, signing = alice
    return envelope.seal(B, {"db": {"password": "pw", "port": 5432}}, path=PATH,
                         policy=envelope.Policy(((ident.recipient,),)), key=signing)


def _openssl_accepts(public: bytes, signature: bytes, message: bytes) -> bool:
    try:
        ed25519.Ed25519PublicKey.from_public_bytes(public).verify(signature, message)
    except (InvalidSignature, ValueError):
        return False
    return True


def test_ed25519_agrees_with_openssl_on_good_and_tampered_signatures() -> None:
    """For random keys and messages (empty to 20 KB), a signature made by `cryptography` verifies in both, and
    a flipped bit of the message, the signature or the key is refused by both."""
    for size in (0, 1, 63, 64, 6000, 20000):
        key = ed25519.Ed25519PrivateKey.generate()
        public = key.public_key().public_bytes_raw()
        message = os.urandom(size)
        sig = key.sign(message)
        assert sodium.ed25519_verify(public, sig, message) and _openssl_accepts(public, sig, message)
        for pos in (0, 31, 32, 63):
            bad_sig = sig[:pos] + bytes([sig[pos] ^ 1]) + sig[pos + 1:]
            assert not sodium.ed25519_verify(public, bad_sig, message)
            assert not _openssl_accepts(public, bad_sig, message)
        if size:
            bad_msg = bytes([message[0] ^ 0x80]) + message[1:]
            assert not sodium.ed25519_verify(public, sig, bad_msg) and not _openssl_accepts(public, sig, bad_msg)
        other = ed25519.Ed25519PrivateKey.generate().public_key().public_bytes_raw()
        assert not sodium.ed25519_verify(other, sig, message) and not _openssl_accepts(other, sig, message)


def test_ed25519_refuses_wrong_lengths_without_reading_past_them() -> None:
    """A short or long key or signature is a refusal (libsodium would read a fixed 32/64 bytes)."""
    key = ed25519.Ed25519PrivateKey.generate()
    public, sig = key.public_key().public_bytes_raw(), key.sign(b"m")
    assert sodium.ed25519_verify(public, sig, b"m")
    for bad_public, bad_sig in ((public[:31], sig), (public + b"\x00", sig), (public, sig[:63]),
                                (public, sig + b"\x00"), (b"", b"")):
        assert not sodium.ed25519_verify(bad_public, bad_sig, b"m")


def test_ed25519_refuses_the_small_order_key_that_signs_everything() -> None:
    """The identity point as public key with R = identity and S = 0 satisfies the verification equation for
    every message; libsodium refuses it (small-order key and R), so the switch never weakens a check."""
    identity_point = b"\x01" + b"\x00" * 31
    forged = identity_point + b"\x00" * 32
    for message in (b"", b"stratum-manifest-v1\x00{}", os.urandom(100)):
        assert not sodium.ed25519_verify(identity_point, forged, message)


def test_x25519_agrees_with_openssl_and_refuses_low_order_points() -> None:
    """Random (unclamped) private keys give OpenSSL's shared secret; a low-order point gives None."""
    for _ in range(20):
        private_raw = os.urandom(32)
        mine = x25519.X25519PrivateKey.from_private_bytes(private_raw)
        peer = x25519.X25519PrivateKey.generate().public_key()
        assert sodium.x25519(private_raw, peer.public_bytes_raw()) == mine.exchange(peer)
    for low_order in (b"\x00" * 32, b"\x01" + b"\x00" * 31):
        assert sodium.x25519(os.urandom(32), low_order) is None
    assert sodium.x25519(os.urandom(31), os.urandom(32)) is None


def test_a_planted_low_order_x25519_share_is_a_decrypt_error(alice: tuple[keys.Identity, keys.SigningKey]) -> None:
    """kem.decapsulate turns an all-zero exchange into DecryptError naming the place, as before."""
    ct, _ = kem.encapsulate(B, alice[0].recipient)
    with pytest.raises(DecryptError, match="X25519 share is invalid") as err:
        kem.decapsulate(B, alice[0], ct[:-32] + b"\x00" * 32, "secrets/app.yaml: stratum.key_groups[0][0]")
    assert "key_groups[0][0]" in str(err.value)


@pytest.mark.parametrize("field, message", [
    ("sig_ed25519", "stratum.signature.ed25519: the Ed25519 signature does not verify"),
    ("sig_mldsa65", "stratum.signature.mldsa65: the ML-DSA-65 signature does not verify"),
])
def test_a_manifest_with_one_bad_signature_is_refused_with_its_message(
    alice: tuple[keys.Identity, keys.SigningKey], field: str, message: str
) -> None:
    """Either signature with one bit flipped (the other intact) is refused by opening and by the check, and
    the message names that signature."""
    m = _sealed(alice)
    sig: bytes = getattr(m.meta, field)
    flipped = sig[:10] + bytes([sig[10] ^ 1]) + sig[11:]
    meta = replace(m.meta, sig_ed25519=flipped) if field == "sig_ed25519" else replace(m.meta, sig_mldsa65=flipped)
    tampered = replace(m, meta=meta)
    text = manifest.render(tampered)
    with pytest.raises(SignatureError) as err:
        envelope.open_manifest(B, manifest.parse(text, PATH), keys.KeyRing((alice[0],), (alice[1],)), PATH)
    assert message in str(err.value)
    checked, problems = check.check_manifest(B, text, PATH, None)
    assert checked is None and len(problems) == 1
    assert problems[0].message == message + ": the file changed after it was signed"


def test_an_honest_manifest_still_opens(alice: tuple[keys.Identity, keys.SigningKey]) -> None:
    """Sealed with `cryptography`'s Ed25519 and X25519, opened with libsodium's: the values come back."""
    text = manifest.render(_sealed(alice))
    opened = envelope.open_manifest(B, manifest.parse(text, PATH), keys.KeyRing((alice[0],), (alice[1],)), PATH)
    assert opened.values == {"db": {"password": "pw", "port": 5432}}
