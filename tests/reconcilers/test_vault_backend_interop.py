"""Two-way interop of whole manifests across every available crypto backend (issue 11 item 4): keys made by
one backend, a manifest sealed and signed by it, verified and opened by every other one; the reference backend
(pure Python, kyber-py + dilithium-py) among them."""

from __future__ import annotations

from dataclasses import replace

import pytest

from reconcilers.vault import envelope, keys, manifest
from reconcilers.vault.backends import available, get_backend
from reconcilers.vault.errors import SignatureError

BACKENDS = [n for n, state in available().items() if state == "ok"]


def test_the_reference_backend_is_among_them() -> None:
    """The pure-Python backend runs here (its packages are test dependencies)."""
    assert "reference" in BACKENDS and "openssl" in BACKENDS


@pytest.mark.parametrize("sealer", BACKENDS)
@pytest.mark.parametrize("opener", BACKENDS)
def test_manifest_sealed_by_one_backend_opens_with_another(sealer: str, opener: str) -> None:
    """Keys and manifest from `sealer`; `opener` verifies both signatures, unwraps the data key (ML-KEM hybrid)
    and decrypts; a flipped signature byte is refused by `opener` too."""
    a, b = get_backend(sealer), get_backend(opener)
    identity, signing = keys.generate(a)
    policy = envelope.Policy(((identity.recipient,),))
    sealed = envelope.seal(a, {"db": {"password": "s3cret"}, "n": 7}, path="secrets/x.yaml", policy=policy,
                           key=signing)
    parsed = manifest.parse(manifest.render(sealed), "secrets/x.yaml")
    assert envelope.verify(b, parsed, "secrets/x.yaml").text == signing.signer.text
    opened = envelope.open_manifest(b, parsed, keys.KeyRing((identity,), ()), "secrets/x.yaml")
    assert opened.values == {"db": {"password": "s3cret"}, "n": 7}
    bad = bytearray(parsed.meta.sig_mldsa65)
    bad[10] ^= 1
    forged = replace(parsed, meta=replace(parsed.meta, sig_mldsa65=bytes(bad)))
    with pytest.raises(SignatureError):
        envelope.verify(b, forged, "secrets/x.yaml")
