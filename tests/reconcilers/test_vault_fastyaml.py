"""The fast manifest reader returns exactly what yaml.safe_load returns, or None (the general loader then
decides): on every shape the writer emits, on tricky scalars that YAML types or quotes, and on hostile input."""

from __future__ import annotations

import random
from typing import Any

import pytest
import yaml

from reconcilers.vault import envelope, fastyaml, keys, manifest
from reconcilers.vault.backends import get_backend
from reconcilers.vault.errors import ManifestError

TRICKY = ["yes", "no", "on", "off", "true", "null", "~", "", "1.5", "1e5", "0x1F", "012", "+1", "1_000", "1:20",
          ".inf", "2001-12-14", "=", "<<", "a: b", "#x", "-x", "- x", "'q'", "a'b", '"d"', "kem:abc", "x:", ":x",
          "ENC[AES256_GCM,data:AA==,iv:BB==,tag:CC==,type:str]", "é", "a b", " lead", "trail ", "[x]", "{y}",
          "x # c", "&a", "*a", "!t", "|", ">", "%", "@", "`", "?", ",", "0", "7", "-3", "123456789012345",
          "FALSE", "False", "falsey", "Norway", "NULL", "nulls", "offset", "Yes", "yesyes", "t2EyhzSKWS+/=",
          "00", "0123", "10", "99999999999999999999999", "1_0"]


def _value(rng: random.Random, depth: int) -> Any:
    roll = rng.random()
    if depth < 4 and roll < 0.25:
        return {rng.choice([*TRICKY, "db", "k1", "password"]): _value(rng, depth + 1) for _ in range(rng.randint(0, 3))}
    if depth < 4 and roll < 0.4:
        return [_value(rng, depth + 1) for _ in range(rng.randint(0, 3))]
    if roll < 0.5:
        return rng.randint(-5, 10**12)
    if roll < 0.55:
        return rng.choice([True, False, None, 1.5])
    return rng.choice(TRICKY)


def _same(text: str) -> Any:
    """The fast result, after checking it equals (types included) yaml.safe_load's whenever it is not None."""
    fast = fastyaml.load(text)
    if fast is not None:
        assert repr(fast) == repr(yaml.safe_load(text)), text
    return fast


def test_random_documents_as_the_writer_emits_them() -> None:
    """2,000 random documents with tricky keys and scalars: the fast reader agrees with YAML or stands aside."""
    rng = random.Random(20261207)
    taken = 0
    for _ in range(2000):
        doc = {rng.choice(["db", "api", *TRICKY]): _value(rng, 0) for _ in range(rng.randint(1, 4))}
        taken += _same(manifest.dump_yaml(doc)) is not None
    assert taken > 200        # the subset is not empty: plenty of these take the fast path


def test_every_sealed_manifest_takes_the_fast_path() -> None:
    """Manifests as sealed (one and two key groups, lists, nested values) are read by the fast path."""
    b = get_backend("openssl")
    ids = [keys.generate(b) for _ in range(2)]
    for groups, threshold in (((ids[0][0].recipient,),), 1), (((ids[0][0].recipient,), (ids[1][0].recipient,)), 2):
        values = {"db": {"password": "p", "port": 5432, "hosts": ["a", "b"]}, "flag": True, "raw": b"\x00"}
        text = manifest.render(envelope.seal(b, values, path="secrets/x.yaml",
                                             policy=envelope.Policy(groups, threshold), key=ids[0][1]))
        assert _same(text) is not None


def test_hostile_or_unusual_input_goes_to_the_general_loader() -> None:
    """Anchors, tags, comments, flow style, tabs, controls, non-ASCII, duplicate keys, depth beyond the cap,
    documents markers, null values and multi-line scalars: None, never a guess."""
    levels = fastyaml.MAX_DEPTH + 5
    deep = "".join(f"{'  ' * i}k:\n" for i in range(levels)) + f"{'  ' * levels}v: 1\n"
    for text in ["a: &x 1\nb: *x\n", "a: !!str 1\n", "# c\na: 1\n", "a: {b: 1}\n", "a:\tb\n", "a: b\x07\n",
                 "a: é\n", "a: 1\na: 2\n", deep, "---\na: 1\n", "a:\n", "a: b\n  c\n", "- a\n", "a: 'x\n  y'\n",
                 "a:\n  - b\n   - c\n", "a: b\r\n", "", "a: 1\n b: 2\n"]:
        assert _same(text) is None, text


def test_a_key_that_is_not_a_string_is_refused_on_the_general_path() -> None:
    """The key check skipped for the fast reader (which reads string keys only) still runs on the general
    loader's documents: a manifest whose key YAML reads as an int is refused, naming the key."""
    b = get_backend("openssl")
    ident, signing = keys.generate(b)
    text = manifest.render(envelope.seal(b, {"db": {"password": "p"}}, path="secrets/x.yaml",
                                         policy=envelope.Policy(((ident.recipient,),)), key=signing))
    edited = text.replace("  password:", "  5432:", 1)
    assert fastyaml.load(edited) is None
    with pytest.raises(ManifestError, match=r"key 5432 is not a string"):
        manifest.parse(edited, "secrets/x.yaml")


def test_the_resolver_shortcuts_rest_on_yaml_own_table() -> None:
    """The two shortcuts taken without PyYAML's resolver hold for it: a plain scalar of 6+ characters starting
    with a letter whose only implicit types are bool/null is a string, and `0` / `[1-9][0-9]*` is an int."""
    rng = random.Random(7)
    alphabet = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789+/="
    for first in sorted(fastyaml._WORD_FIRST):
        for word in ("true", "false", "yes", "no", "on", "off", "null"):
            for form in (word, word.capitalize(), word.upper()):
                if form[0] == first:
                    assert len(form) <= fastyaml._WORD_MAX
        for n in range(6, 30):
            text = first + "".join(rng.choice(alphabet) for _ in range(n - 1))
            assert _same(f"k: {text}\n") == {"k": text}
    for text in ["0", "7", "10", "4294967296", "99999999999999999999999"]:
        assert _same(f"k: {text}\n") == {"k": int(text)}
    assert all(_same(f"k: {text}\n") in (None, yaml.safe_load(f"k: {text}\n")) for text in ("00", "0123", "1_0"))
