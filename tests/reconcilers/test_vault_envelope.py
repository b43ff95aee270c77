"""Keys, the hybrid KEM, Shamir, and sealing/opening manifests, including every kind of bad input."""

from __future__ import annotations

import itertools
import os
from dataclasses import replace
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric import x25519

from reconcilers.vault import bech32, envelope, kem, keys, manifest, shamir
from reconcilers.vault.backends import get_backend
from reconcilers.vault.errors import (
    DecryptError,
    KeyFormatError,
    ManifestError,
    NoKeyError,
    SignatureError,
)

OPENSSL = get_backend("openssl")
PQCLEAN = get_backend("pqclean")
SECRET = "correct horse battery staple"
VALUES: dict[str, Any] = {
    "db": {"password": SECRET, "port": 5432, "ratio": 0.1, "big": 2**70, "on": True, "off": False},
    "blob": b"\x00\xff binary",
    "nothing": None,
    "empty": "",
    "hosts": ["a.example", 7, 1.5e300],
    "unicode": "pässwörd ✓",
}


@pytest.fixture(scope="module")
def alice() -> tuple[keys.Identity, keys.SigningKey]:
    return keys.generate(OPENSSL)


@pytest.fixture(scope="module")
def bob() -> tuple[keys.Identity, keys.SigningKey]:
    return keys.generate(PQCLEAN)


def seal(
    ident: keys.Identity, signing: keys.SigningKey, values: dict[str, Any] = VALUES, **kw: Any
) -> manifest.Manifest:
    policy = kw.pop("policy", envelope.Policy(((ident.recipient,),)))
    return envelope.seal(OPENSSL, values, path="secrets/app.yaml", policy=policy, key=signing, **kw)


def ring(*pairs: tuple[keys.Identity, keys.SigningKey]) -> keys.KeyRing:
    return keys.KeyRing(tuple(p[0] for p in pairs), tuple(p[1] for p in pairs))


def reparse(m: manifest.Manifest) -> manifest.Manifest:
    return manifest.parse(manifest.render(m), "secrets/app.yaml")


class TestTextForms:
    def test_bech32m_round_trips_long_payloads(self) -> None:
        """Payloads far over BIP 173's 90 characters round-trip."""
        payload = os.urandom(1300)
        assert bech32.decode(bech32.encode("stratum", payload)) == ("stratum", payload)

    def test_every_single_character_typo_is_caught(self, alice: tuple[keys.Identity, keys.SigningKey]) -> None:
        """Changing any one character of a recipient fails its checksum (sampled positions)."""
        text = alice[0].recipient.text
        for pos in range(8, len(text), 97):
            bad = text[:pos] + ("q" if text[pos] != "q" else "p") + text[pos + 1 :]
            with pytest.raises(KeyFormatError):
                keys.Recipient.parse(bad)

    def test_truncated_and_wrong_kind_keys_are_refused(self, alice: tuple[keys.Identity, keys.SigningKey]) -> None:
        """A truncated recipient and a signer key given as recipient are refused with a clear message."""
        with pytest.raises(KeyFormatError, match=r"checksum|separator"):
            keys.Recipient.parse(alice[0].recipient.text[:-5])
        with pytest.raises(KeyFormatError, match="expected a recipient"):
            keys.Recipient.parse(alice[1].signer.text)

    def test_private_keys_round_trip_and_never_show_in_repr(
        self, alice: tuple[keys.Identity, keys.SigningKey], bob: tuple[keys.Identity, keys.SigningKey]
    ) -> None:
        """Private keys made with either backend (seed form) round-trip; repr shows fingerprints only."""
        for ident, signing in (alice, bob):
            assert keys.parse_identity(ident.text).recipient == ident.recipient
            assert keys.parse_signing_key(signing.text).signer == signing.signer
            assert ident.text not in repr(ident) and "kem:" in repr(ident)
        assert len(alice[0].text) < 100 and len(bob[0].text) < 100  # seeds: short enough to copy onto paper

    def test_key_file_is_0600_and_refused_when_readable_by_others(
        self, tmp_path: Any, alice: tuple[keys.Identity, keys.SigningKey]
    ) -> None:
        """Key files are created 0600 and not read once group/other bits are set."""
        path = tmp_path / "k" / "default.key"
        keys.write_key_file(path, *alice)
        assert path.stat().st_mode & 0o777 == 0o600
        assert keys.read_key_file(path).identities[0].recipient == alice[0].recipient
        path.chmod(0o644)
        with pytest.raises(NoKeyError, match="readable by other users"):
            keys.read_key_file(path)


class TestShamir:
    def test_every_threshold_subset_rebuilds_the_secret(self) -> None:
        """For k-of-n up to 5, every k-subset rebuilds the secret and k-1 shares do not."""
        secret = os.urandom(32)
        for n in range(1, 6):
            for k in range(1, n + 1):
                shares = shamir.split(secret, k, n)
                for subset in itertools.combinations(shares, k):
                    assert shamir.combine(list(subset)) == secret
                if k > 1:
                    assert shamir.combine(shares[: k - 1]) != secret

    def test_bad_share_sets_are_refused(self) -> None:
        """Duplicate x, x = 0 and unequal lengths are errors, not silent garbage."""
        shares = shamir.split(b"k" * 32, 2, 3)
        with pytest.raises(ValueError):
            shamir.combine([shares[0], shares[0]])
        with pytest.raises(ValueError):
            shamir.combine([(0, b"x" * 32), shares[1]])
        with pytest.raises(ValueError):
            shamir.combine([shares[0], (2, b"x")])


class TestHybridKem:
    def test_both_backends_agree(
        self, alice: tuple[keys.Identity, keys.SigningKey], bob: tuple[keys.Identity, keys.SigningKey]
    ) -> None:
        """Encapsulating with either backend decapsulates to the same secret with the key's own backend."""
        for ident, dec in ((alice[0], OPENSSL), (bob[0], PQCLEAN)):
            for enc in (OPENSSL, PQCLEAN):
                ct, ss = kem.encapsulate(enc, ident.recipient)
                assert kem.decapsulate(dec, ident, ct, "t") == ss

    def test_changing_either_half_changes_the_secret(self, alice: tuple[keys.Identity, keys.SigningKey]) -> None:
        """Replacing the X25519 share, or flipping an ML-KEM byte, yields a different secret: both bind."""
        ct, ss = kem.encapsulate(OPENSSL, alice[0].recipient)
        other_x = x25519.X25519PrivateKey.generate().public_key().public_bytes_raw()
        assert kem.decapsulate(OPENSSL, alice[0], ct[:-32] + other_x, "t") != ss
        assert kem.decapsulate(OPENSSL, alice[0], bytes([ct[0] ^ 1]) + ct[1:], "t") != ss

    def test_the_combiner_binds_the_public_keys(self) -> None:
        """The same shared secrets under different recipient keys give different outputs."""
        a = kem.combine(b"m" * 32, b"x" * 32, b"c" * 1088, b"e" * 32, b"p" * 1184, b"q" * 32)
        b = kem.combine(b"m" * 32, b"x" * 32, b"c" * 1088, b"e" * 32, b"P" * 1184, b"q" * 32)
        assert a != b and len(a) == 32


class TestSealOpen:
    def test_typed_values_round_trip_exactly(self, alice: tuple[keys.Identity, keys.SigningKey]) -> None:
        """str, int (big too), float, bool, bytes, null, lists and unicode come back with their types."""
        opened = envelope.open_manifest(OPENSSL, reparse(seal(*alice)), ring(alice), "f")
        assert opened.values == VALUES
        assert type(opened.values["db"]["on"]) is bool and type(opened.values["db"]["port"]) is int
        assert isinstance(opened.values["blob"], bytes)

    def test_no_plaintext_in_the_file(self, alice: tuple[keys.Identity, keys.SigningKey]) -> None:
        """The rendered manifest holds no plaintext value."""
        text = manifest.render(seal(*alice))
        assert SECRET not in text and "5432" not in text and "a.example" not in text

    def test_a_manifest_from_one_backend_opens_with_the_other(
        self, alice: tuple[keys.Identity, keys.SigningKey], bob: tuple[keys.Identity, keys.SigningKey]
    ) -> None:
        """Written with pqclean for an openssl key and a pqclean key: each opens it with its own backend."""
        policy = envelope.Policy(((alice[0].recipient, bob[0].recipient),))
        m = reparse(envelope.seal(PQCLEAN, VALUES, path="secrets/app.yaml", policy=policy, key=bob[1]))
        assert envelope.open_manifest(OPENSSL, m, ring(alice), "f").values == VALUES
        assert envelope.open_manifest(PQCLEAN, m, ring(bob), "f").values == VALUES

    def test_unchanged_values_keep_their_exact_ciphertext(self, alice: tuple[keys.Identity, keys.SigningKey]) -> None:
        """Re-sealing after changing one value changes only that value's ciphertext (and the metadata)."""
        first = reparse(seal(*alice))
        opened = envelope.open_manifest(OPENSSL, first, ring(alice), "f")
        changed = {**VALUES, "db": {**VALUES["db"], "port": 5433}}
        second = reparse(seal(*alice, values=changed, previous=opened))
        old, new = dict(manifest.leaves(first.data)), dict(manifest.leaves(second.data))
        assert [k for k in old if old[k] != new[k]] == [("db", "port")]
        assert second.meta.key_groups == first.meta.key_groups
        assert second.meta.version > first.meta.version

    def test_rotate_changes_every_ciphertext(self, alice: tuple[keys.Identity, keys.SigningKey]) -> None:
        """Rotation draws a new data key: no ciphertext survives."""
        first = reparse(seal(*alice))
        opened = envelope.open_manifest(OPENSSL, first, ring(alice), "f")
        second = reparse(seal(*alice, previous=opened, rotate=True))
        old, new = dict(manifest.leaves(first.data)), dict(manifest.leaves(second.data))
        assert all(old[k] != new[k] for k in old)
        assert envelope.open_manifest(OPENSSL, second, ring(alice), "f").values == VALUES

    def test_key_groups_need_the_threshold(
        self, alice: tuple[keys.Identity, keys.SigningKey], bob: tuple[keys.Identity, keys.SigningKey]
    ) -> None:
        """2-of-3 groups: one group's key is not enough; two are; the error says how many opened."""
        carol = keys.generate(OPENSSL)
        policy = envelope.Policy(((alice[0].recipient,), (bob[0].recipient,), (carol[0].recipient,)), 2)
        m = reparse(seal(*alice, policy=policy))
        with pytest.raises(NoKeyError, match="open 1 of the 2 key group"):
            envelope.open_manifest(OPENSSL, m, ring(alice), "f")
        assert envelope.open_manifest(OPENSSL, m, ring(alice, carol), "f").values == VALUES


class TestBadInput:
    """Each: a clear error naming file and key path, no plaintext in the message."""

    def _text(self, alice: tuple[keys.Identity, keys.SigningKey]) -> str:
        return manifest.render(seal(*alice))

    def _open(self, text: str, keyring: keys.KeyRing) -> None:
        m = manifest.parse(text, "secrets/app.yaml")
        envelope.open_manifest(OPENSSL, m, keyring, "secrets/app.yaml")

    def _no_secret(self, err: pytest.ExceptionInfo[Exception]) -> None:
        assert SECRET not in str(err.value) and "secrets/app.yaml" in str(err.value)

    def test_bit_flipped_value(self, alice: tuple[keys.Identity, keys.SigningKey]) -> None:
        """A flipped ciphertext bit fails the signature; with the signature re-made, the value's tag fails."""
        m = seal(*alice)
        enc = manifest.parse_enc(m.data["db"]["password"])
        assert enc is not None
        bad = replace(enc, data=bytes([enc.data[0] ^ 1]) + enc.data[1:]).render()
        tampered = replace(m, data={**m.data, "db": {**m.data["db"], "password": bad}})
        with pytest.raises(SignatureError) as err:
            self._open(manifest.render(tampered), ring(alice))
        self._no_secret(err)
        # An insider who can sign still cannot forge a value: AES-GCM refuses it, naming the key path.
        resigned = envelope.sign(OPENSSL, tampered, alice[1])
        with pytest.raises(DecryptError, match=r"db\.password") as err2:
            self._open(manifest.render(resigned), ring(alice))
        self._no_secret(err2)

    def test_truncated_value(self, alice: tuple[keys.Identity, keys.SigningKey]) -> None:
        """A truncated ENC string is a plaintext value now, and reported by key path."""
        text = self._text(alice)
        line = next(ln for ln in text.splitlines() if "password:" in ln)
        with pytest.raises(ManifestError, match=r"db\.password"):
            self._open(text.replace(line, line[:60]), ring(alice))

    def test_swapped_values_between_keys(self, alice: tuple[keys.Identity, keys.SigningKey]) -> None:
        """Two values swapped (and the file re-signed by an insider) fail: the key path is authenticated."""
        m = seal(*alice, values={"a": "one", "b": "two"})
        swapped = envelope.sign(OPENSSL, replace(m, data={"a": m.data["b"], "b": m.data["a"]}), alice[1])
        with pytest.raises(DecryptError, match=r": a"):
            self._open(manifest.render(swapped), ring(alice))

    def test_recipient_block_removed(self, alice: tuple[keys.Identity, keys.SigningKey]) -> None:
        """Removing the key groups is a manifest error that says nobody could decrypt."""
        text = self._text(alice)
        start = text.index("  key_groups:")
        end = text.index("  signer:")
        with pytest.raises(ManifestError, match="key_groups"):
            self._open(text[:start] + text[end:], ring(alice))

    def test_wrong_private_key(self, alice: tuple[keys.Identity, keys.SigningKey]) -> None:
        """Someone else's key: NoKeyError naming the file."""
        with pytest.raises(NoKeyError) as err:
            self._open(self._text(alice), ring(keys.generate(OPENSSL)))
        self._no_secret(err)

    def test_planted_recipient_with_a_changed_kem_ciphertext(
        self, alice: tuple[keys.Identity, keys.SigningKey]
    ) -> None:
        """A KEM ciphertext changed and re-signed by an insider: the wrap does not open (implicit rejection)."""
        m = seal(*alice)
        w = m.meta.key_groups[0][0]
        bad = replace(w, enc=bytes([w.enc[5] ^ 4]).join([w.enc[:5], w.enc[6:]]))
        resigned = envelope.sign(OPENSSL, replace(m, meta=replace(m.meta, key_groups=((bad,),))), alice[1])
        with pytest.raises(DecryptError, match=r"key_groups\[0\]\[0\]"):
            self._open(manifest.render(resigned), ring(alice))

    def test_malformed_yaml(self, alice: tuple[keys.Identity, keys.SigningKey]) -> None:
        """Broken YAML: a ManifestError with file and line."""
        with pytest.raises(ManifestError, match=r"secrets/app\.yaml:\d+: malformed YAML"):
            self._open("a: [unclosed\n  b: c\n", ring(alice))

    def test_newer_format_version(self, alice: tuple[keys.Identity, keys.SigningKey]) -> None:
        """A manifest from a newer format says so and asks for an upgrade."""
        text = self._text(alice).replace("  format: 1\n", "  format: 2\n")
        with pytest.raises(ManifestError, match="newer format version") as err:
            self._open(text, ring(alice))
        assert "upgrade" in str(err.value)

    def test_untrusted_signature_is_detectable(
        self, alice: tuple[keys.Identity, keys.SigningKey], bob: tuple[keys.Identity, keys.SigningKey]
    ) -> None:
        """Re-signed by another key, the manifest verifies, but as that signer: trust is the rules' call."""
        m = envelope.sign(PQCLEAN, seal(*alice), bob[1])
        assert envelope.verify(OPENSSL, reparse(m), "f").fingerprint == bob[1].signer.fingerprint
