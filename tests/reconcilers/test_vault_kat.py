"""Known-answer tests (NIST vectors from `cryptography-vectors`) for every available backend, and cross-checks
between backends: encapsulate with one, decapsulate with another; sign with one, verify with another."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import cryptography_vectors
import pytest

from reconcilers.vault.backends import NAMES, PQSecret, available, get_backend

VECTORS = Path(os.path.dirname(cryptography_vectors.__file__)) / "asymmetric"
BACKENDS = [n for n, state in available().items() if state == "ok"]


def records(path: Path) -> Iterator[dict[str, bytes]]:
    """The records of a NIST .rsp file, hex fields decoded."""
    current: dict[str, bytes] = {}
    for line in path.read_text().splitlines():
        if not line.strip() or line.startswith("#"):
            continue
        key, _, value = line.partition(" = ")
        if key.strip() == "count" and current:  # a record starts at its count line
            yield current
            current = {}
        current[key.strip()] = (
            value.strip().encode() if key.strip() in ("count", "mlen", "smlen") else bytes.fromhex(value.strip())
        )
    if current:
        yield current


MLKEM = list(records(VECTORS / "MLKEM" / "kat_MLKEM_768.rsp"))[:25]
MLDSA = list(records(VECTORS / "MLDSA" / "kat_MLDSA_65_det_pure.rsp"))[:25]


def test_vector_files_are_the_real_ones() -> None:
    """The KAT files load with the sizes FIPS 203/204 fix for ML-KEM-768 and ML-DSA-65."""
    assert len(MLKEM) == 25 and len(MLDSA) == 25
    assert {len(r["pk"]) for r in MLKEM} == {1184} and {len(r["sk"]) for r in MLKEM} == {2400}
    assert {len(r["pk"]) for r in MLDSA} == {1952} and {len(r["sk"]) for r in MLDSA} == {4032}


def test_openssl_pqclean_and_reference_are_available_here() -> None:
    """The three pip-installable backends run; oqs is reported, never imported without liboqs."""
    status = available()
    assert status["openssl"] == "ok" and status["pqclean"] == "ok" and status["reference"] == "ok"
    assert set(status) == set(NAMES)


@pytest.mark.parametrize("record", MLKEM, ids=lambda r: r["count"].decode())
def test_mlkem_keygen_from_seed_matches_kat(record: dict[str, bytes]) -> None:
    """openssl: the seed d||z expands to the KAT's encapsulation key."""
    backend = get_backend("openssl")
    assert backend.kem_public_from_seed(record["d"] + record["z"]) == record["pk"]  # type: ignore[attr-defined]


@pytest.mark.parametrize("name", BACKENDS)
def test_mlkem_decapsulation_matches_kat(name: str) -> None:
    """Every backend decapsulates the KAT ciphertexts to the KAT secrets, and the invalid ciphertexts to the
    implicit-rejection secrets."""
    backend = get_backend(name)
    for r in MLKEM:
        secret = PQSecret(seed=r["d"] + r["z"], expanded=r["sk"])
        assert backend.kem_decaps(secret, r["ct"]) == r["ss"]
        assert backend.kem_decaps(secret, r["ct_n"]) == r["ss_n"]


@pytest.mark.parametrize("name", BACKENDS)
def test_mldsa_verifies_kat_signatures_and_rejects_flipped_ones(name: str) -> None:
    """Every backend accepts the KAT signatures (with their context) and refuses one flipped bit."""
    backend = get_backend(name)
    for r in MLDSA:
        sig = r["sm"][: len(r["sm"]) - len(r["msg"])]
        assert backend.verify(r["pk"], r["msg"], sig, r["ctx"])
        flipped = bytes([sig[0] ^ 1]) + sig[1:]
        assert not backend.verify(r["pk"], r["msg"], flipped, r["ctx"])
        assert not backend.verify(r["pk"], r["msg"] + b"x", sig, r["ctx"])


@pytest.mark.parametrize("record", MLDSA[:10], ids=lambda r: r["count"].decode())
def test_mldsa_keygen_from_seed_matches_kat(record: dict[str, bytes]) -> None:
    """openssl: the seed xi expands to the KAT's public key."""
    backend = get_backend("openssl")
    assert backend.sig_public_from_seed(record["xi"]) == record["pk"]  # type: ignore[attr-defined]


@pytest.mark.parametrize("signer", BACKENDS)
@pytest.mark.parametrize("verifier", BACKENDS)
def test_signatures_cross_verify(signer: str, verifier: str) -> None:
    """A signature made with the KAT key by one backend verifies with the other, in its context only."""
    r = MLDSA[3]
    secret = PQSecret(seed=r["xi"], expanded=r["sk"])
    sig = get_backend(signer).sign(secret, b"manifest bytes", b"ctx")
    assert get_backend(verifier).verify(r["pk"], b"manifest bytes", sig, b"ctx")
    assert not get_backend(verifier).verify(r["pk"], b"manifest bytes", sig, b"other")


@pytest.mark.parametrize("encaps", BACKENDS)
@pytest.mark.parametrize("decaps", BACKENDS)
def test_kem_cross_encapsulation(encaps: str, decaps: str) -> None:
    """A ciphertext made by one backend for the KAT key decapsulates to the same secret with the other."""
    r = MLKEM[7]
    ct, ss = get_backend(encaps).kem_encaps(r["pk"])
    assert get_backend(decaps).kem_decaps(PQSecret(seed=r["d"] + r["z"], expanded=r["sk"]), ct) == ss


def test_oqs_is_detected_without_importing_it() -> None:
    """Without liboqs the oqs backend reports why, and `oqs` was never imported (it would try a download)."""
    import sys

    from reconcilers.vault.backends.oqs import liboqs_library

    if liboqs_library() is not None:
        pytest.skip("liboqs is installed here: the oqs backend is tested by the KATs above")
    assert "liboqs" in available()["oqs"]
    assert "oqs" not in sys.modules
