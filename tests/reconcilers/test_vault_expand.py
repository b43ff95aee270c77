"""Seed expansion (expand.py) against the NIST known answers, and what it buys: a private key made with any
backend decrypts and signs with every other, and manifests round-trip across backends with such keys."""

from __future__ import annotations

import itertools
import os
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric import ed25519, x25519

from reconcilers.vault import envelope, expand, keys, manifest
from reconcilers.vault.backends import get_backend
from reconcilers.vault.backends.base import PQSecret
from reconcilers.vault.errors import BackendUnavailable
from tests.reconcilers.test_vault_kat import BACKENDS, MLDSA, MLKEM

VALUES: dict[str, Any] = {"db": {"password": "p4ss", "port": 5432}, "on": True, "blob": b"\x00\x01"}


@pytest.fixture(scope="module")
def made_by() -> dict[str, tuple[keys.Identity, keys.SigningKey]]:
    return {name: keys.generate(get_backend(name)) for name in BACKENDS}


@pytest.fixture(scope="module")
def legacy() -> tuple[keys.Identity, keys.SigningKey]:
    """An expanded-only key pair, as the pqclean keygen of an earlier Stratum wrote them."""
    pq = get_backend("pqclean")
    _, kem_secret = pq.kem_keygen()
    sig_pub, sig_secret = pq.sig_keygen()
    assert kem_secret.expanded is not None and sig_secret.expanded is not None
    x_priv = x25519.X25519PrivateKey.generate().private_bytes_raw()
    ed_priv = ed25519.Ed25519PrivateKey.generate().private_bytes_raw()
    ident = keys.parse_identity(keys.bech32.encode(keys.IDENTITY_HRP, b"\x02" + kem_secret.expanded + x_priv))
    signing = keys.parse_signing_key(
        keys.bech32.encode(keys.SIGNING_HRP, b"\x02" + sig_secret.expanded + sig_pub + ed_priv)
    )
    return ident, signing


class TestKnownAnswers:
    @pytest.mark.parametrize("record", MLKEM, ids=lambda r: r["count"].decode())
    def test_mlkem768_expands_d_z_to_the_kat_keys(self, record: dict[str, bytes]) -> None:
        """FIPS 203 KeyGen_internal(d, z) gives the KAT's ek and its 2400-byte dk, byte for byte."""
        assert expand.mlkem768(record["d"] + record["z"]) == (record["pk"], record["sk"])

    @pytest.mark.parametrize("record", MLDSA, ids=lambda r: r["count"].decode())
    def test_mldsa65_expands_xi_to_the_kat_keys(self, record: dict[str, bytes]) -> None:
        """FIPS 204 KeyGen_internal(xi) gives the KAT's pk and its 4032-byte sk, byte for byte."""
        assert expand.mldsa65(record["xi"]) == (record["pk"], record["sk"])

    def test_wrong_seed_sizes_are_refused(self) -> None:
        """A seed of the wrong length is an error, not a silently different key."""
        with pytest.raises(ValueError):
            expand.mlkem768(b"\x00" * 32)
        with pytest.raises(ValueError):
            expand.mldsa65(b"\x00" * 64)

    def test_expansion_agrees_with_openssl_on_fresh_seeds(self) -> None:
        """On random seeds the public halves match what OpenSSL derives (beyond the 25 KAT records)."""
        openssl = get_backend("openssl")
        for _ in range(3):
            seed, xi = os.urandom(64), os.urandom(32)
            assert expand.mlkem768(seed)[0] == openssl.kem_public_from_seed(seed)  # type: ignore[attr-defined]
            assert expand.mldsa65(xi)[0] == openssl.sig_public_from_seed(xi)  # type: ignore[attr-defined]


class TestPortableKeys:
    @pytest.mark.parametrize(("maker", "user"), list(itertools.product(BACKENDS, BACKENDS)))
    def test_a_key_made_with_one_backend_decrypts_and_signs_with_another(
        self, made_by: dict[str, tuple[keys.Identity, keys.SigningKey]], maker: str, user: str
    ) -> None:
        """keygen with `maker`, then decapsulate and sign with `user`; every backend accepts the results."""
        ident, signing = made_by[maker]
        use = get_backend(user)
        for other in BACKENDS:
            ct, ss = get_backend(other).kem_encaps(ident.recipient.mlkem)
            assert use.kem_decaps(ident.mlkem, ct) == ss
            sig = use.sign(signing.mldsa, b"message", b"ctx")
            assert get_backend(other).verify(signing.signer.mldsa, b"message", sig, b"ctx")

    @pytest.mark.parametrize(("maker", "sealer", "opener"), list(itertools.product(BACKENDS, BACKENDS, BACKENDS)))
    def test_manifests_round_trip_across_backends_with_keys_of_another(
        self, made_by: dict[str, tuple[keys.Identity, keys.SigningKey]], maker: str, sealer: str, opener: str
    ) -> None:
        """Keys from `maker`, sealed and signed with `sealer`, verified and opened with `opener`."""
        ident, signing = made_by[maker]
        policy = envelope.Policy(((ident.recipient,),))
        sealed = envelope.seal(get_backend(sealer), VALUES, path="secrets/x.yaml", policy=policy, key=signing)
        m = manifest.parse(manifest.render(sealed), "secrets/x.yaml")
        ring = keys.KeyRing((keys.parse_identity(ident.text),), (keys.parse_signing_key(signing.text),))
        assert envelope.open_manifest(get_backend(opener), m, ring, "secrets/x.yaml").values == VALUES

    def test_keygen_writes_the_short_seed_form_with_every_backend(
        self, made_by: dict[str, tuple[keys.Identity, keys.SigningKey]]
    ) -> None:
        """Whatever the backend, the key file holds a 32-byte seed per key (short, portable)."""
        for ident, signing in made_by.values():
            assert len(ident.payload) == 33 and len(signing.payload) == 33
            assert ident.mlkem.seed is not None and signing.mldsa.seed is not None


class TestExpandedOnlyKeys:
    """Keys an earlier Stratum wrote with the pqclean keygen hold only the expanded form."""

    def test_they_still_work_with_pqclean(self, legacy: tuple[keys.Identity, keys.SigningKey]) -> None:
        """An expanded-only key decrypts and signs with the backend that can take it."""
        pq = get_backend("pqclean")
        ct, ss = get_backend("openssl").kem_encaps(legacy[0].recipient.mlkem)
        assert pq.kem_decaps(legacy[0].mlkem, ct) == ss
        assert pq.verify(legacy[1].signer.mldsa, b"m", pq.sign(legacy[1].mldsa, b"m", b""), b"")

    def test_openssl_says_why_it_cannot_use_them(self, legacy: tuple[keys.Identity, keys.SigningKey]) -> None:
        """OpenSSL loads only seeds: a clear error saying so and what to do, never a crash or a wrong result."""
        openssl = get_backend("openssl")
        with pytest.raises(BackendUnavailable) as err:
            openssl.kem_decaps(legacy[0].mlkem, b"\x00" * 1088)
        assert "seed" in err.value.what and "keygen" in (err.value.hint or "")
        with pytest.raises(BackendUnavailable):
            openssl.sign(legacy[1].mldsa, b"m", b"")

    def test_a_seed_key_given_both_forms_uses_them_consistently(self) -> None:
        """A secret carrying seed and expanded forms decapsulates the same with both backends."""
        seed = os.urandom(64)
        ek, dk = expand.mlkem768(seed)
        both = PQSecret(seed=seed, expanded=dk)
        ct, ss = get_backend("pqclean").kem_encaps(ek)
        assert get_backend("openssl").kem_decaps(both, ct) == ss == get_backend("pqclean").kem_decaps(both, ct)
