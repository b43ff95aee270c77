"""The fast paths of manifest.py give the answers of the plain definitions they replaced: the signed bytes
(canonical_json: orjson, `json` as the fallback) are exactly what `json.dumps(sort_keys=True,
separators=(",", ":"), ensure_ascii=False)` writes, so manifests signed before the change verify after it and
the other way round; plaintext_paths lists what the `leaves` walk lists. Generated trees (hypothesis) and the
edge cases by name."""

from __future__ import annotations

import json
from dataclasses import replace
from typing import Any

from cryptography.hazmat.primitives.asymmetric import ed25519
from hypothesis import given, settings
from hypothesis import strategies as st

from reconcilers.vault import envelope, keys, manifest, sodium
from reconcilers.vault.backends import get_backend


def _reference(body: Any) -> bytes:
    return json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


# Any text but lone surrogates (no UTF-8 form: both encoders refuse them, as the format always did).
_TEXT = st.text(st.characters(exclude_categories=["Cs"]), max_size=20)
_LEAF = st.one_of(_TEXT, st.integers(min_value=-(2**80), max_value=2**80), st.booleans(), st.none())
_TREE = st.recursive(
    _LEAF,
    lambda inner: st.one_of(st.lists(inner, max_size=5), st.dictionaries(_TEXT, inner, max_size=6)),
    max_leaves=25,
)


@settings(max_examples=60, deadline=None)
@given(st.dictionaries(_TEXT, _TREE, max_size=6))
def test_generated_trees_encode_as_json_does(body: dict[str, Any]) -> None:
    """Keys in any order and script (sorted by code point in both), every escape, big ints: same bytes."""
    assert manifest.canonical_json(body) == _reference(body)


def test_the_edge_cases_by_name() -> None:
    """Control characters, quotes, backslashes, DEL, U+2028, astral characters, 64-bit limits and beyond,
    deep nesting and empty containers."""
    cases: list[Any] = [
        {"\x00\x1f\x7f\u2028\u2029": "\b\f\n\r\t\"\\/", "é": "✓", "𝄞": "\U0001f600"},
        {"b": 1, "a": {"d": [], "c": {}}, "B": -(2**63), "A": 2**64 - 1, "z": 2**64, "y": -(2**63) - 1},
        {"k": [[[[["deep"]]]]], "": ""},
    ]
    deep: Any = "leaf"
    for _ in range(300):                                # past orjson's nesting limit: the json fallback
        deep = {"n": deep}
    cases.append(deep)
    for body in cases:
        assert manifest.canonical_json(body) == _reference(body)


def test_a_manifest_signed_over_json_bytes_verifies() -> None:
    """Signed over `json.dumps` bytes (how every manifest before this change was signed), with non-ASCII key
    paths: envelope.verify, now over orjson's bytes, accepts it."""
    b = get_backend("openssl")
    ident, signing = keys.generate(b)
    m = envelope.seal(b, {"dé": {"pässword": "x", "ключ": 1}, "a\"b": "q"}, path="secrets/x.yaml",
                      policy=envelope.Policy(((ident.recipient,),)), key=signing)
    unsigned = {"data": m.data, manifest.META_KEY: m.meta.unsigned()}
    legacy = manifest.SIGNED_PREFIX + _reference(unsigned)
    assert manifest.signed_bytes(m) == legacy
    sig_pq = b.sign(signing.mldsa, legacy, envelope.SIG_CONTEXT)
    sig_ed = ed25519.Ed25519PrivateKey.from_private_bytes(signing.ed25519).sign(envelope.SIG_CONTEXT + legacy)
    legacy_signed = replace(m, meta=replace(m.meta, sig_mldsa65=sig_pq, sig_ed25519=sig_ed))
    reparsed = manifest.parse(manifest.render(legacy_signed), "secrets/x.yaml")
    assert envelope.verify(b, reparsed, "secrets/x.yaml").fingerprint == signing.signer.fingerprint
    assert sodium.ed25519_verify(signing.signer.ed25519, sig_ed, envelope.SIG_CONTEXT + legacy)


_ENC_TEXT = "ENC[AES256_GCM,data:AA==,iv:BBBBBBBBBBBBBBBB,tag:CCCCCCCCCCCCCCCCCCCCCC==,type:str]"
_BAD_B64 = "ENC[AES256_GCM,data:A=A=,iv:B,tag:C,type:str]"
_MAYBE_ENC = st.one_of(st.just(_ENC_TEXT), st.just(_ENC_TEXT[:-2]), st.just(_BAD_B64), _LEAF)


@settings(max_examples=80, deadline=None)
@given(st.recursive(_MAYBE_ENC, lambda inner: st.one_of(st.lists(inner, max_size=4),
                                                          st.dictionaries(_TEXT, inner, max_size=4)), max_leaves=20))
def test_plaintext_paths_lists_what_the_leaves_walk_lists(tree: Any) -> None:
    """Every leaf that is not a valid ENC[...] string (bad base64, cut short, not a string), in file order."""
    expected = [p for p, v in manifest.leaves(tree) if not (isinstance(v, str) and manifest.parse_enc(v) is not None)]
    assert manifest.plaintext_paths(tree) == expected
