"""KV paths of manifests and keyed fingerprints (issue 11 item 1): the default mapping, a signed `kv_path`, and
fingerprints that are keyed per daemon (never a plain hash of the value)."""

from __future__ import annotations

import hashlib
import os
import stat
from pathlib import Path

import pytest

from reconcilers.errors import InputError
from reconcilers.vault import envelope, manifest
from reconcilers.vault.errors import SignatureError
from reconcilers.vault.fingerprints import FingerprintKey
from reconcilers.vault.keys import KeyRing
from reconcilers.vault.kvpath import default_kv_path, parse_reference
from tests.vault_fixtures import CANARY, B, secret_world


def test_default_kv_path_is_the_path_under_secrets_without_extension() -> None:
    """secrets/app/db.yaml is kv/app/db; .yml too."""
    assert default_kv_path("secrets/app/db.yaml") == "kv/app/db"
    assert default_kv_path("secrets/x.yml") == "kv/x"


@pytest.mark.parametrize("text", ["kv/app/db", "kv/#x", "kv/a/../b#x", "secrets/a.txt#x", "etc/passwd#x",
                                  "kv/a#x..y", "kv/a#"])
def test_malformed_references_are_refused(text: str) -> None:
    """A reference without a key, leaving the tree, or naming neither kind is an InputError."""
    with pytest.raises(InputError):
        parse_reference(text)


def test_signed_kv_path_is_kept_across_edits_and_covered_by_the_signature(tmp_path: Path) -> None:
    """A manifest sealed with kv_path carries it in its signed block; a re-seal keeps it; editing it by hand
    breaks the signature (nobody can point a KV path at another manifest unsigned)."""
    world = secret_world(tmp_path)
    policy = envelope.Policy((tuple(world.recipients()),))
    sealed = envelope.seal(B, {"password": CANARY}, path="secrets/db.yaml", policy=policy, key=world.user,
                           kv_path="kv/custom/db")
    text = manifest.render(sealed)
    parsed = manifest.parse(text, "secrets/db.yaml")
    assert parsed.meta.kv_path == "kv/custom/db"
    envelope.verify(B, parsed, "secrets/db.yaml")
    opened = envelope.open_manifest(B, parsed, KeyRing((world.user_identity,), ()), "secrets/db.yaml")
    again = envelope.seal(B, {"password": CANARY + "2"}, path="secrets/db.yaml", policy=policy, key=world.user,
                          previous=opened)
    assert again.meta.kv_path == "kv/custom/db"
    forged = manifest.parse(text.replace("kv/custom/db", "kv/other/db"), "secrets/db.yaml")
    with pytest.raises(SignatureError):
        envelope.verify(B, forged, "secrets/db.yaml")


def test_fingerprints_are_keyed_per_daemon_and_the_key_is_private(tmp_path: Path) -> None:
    """Two daemons fingerprint the same bytes differently, neither equals a plain SHA-256, and the key file is
    0600 and stable across restarts."""
    a, b = FingerprintKey(tmp_path / "a" / "fp.key"), FingerprintKey(tmp_path / "b" / "fp.key")
    value = b"hunter2"
    fa, fb = a.of(b"content", value), b.of(b"content", value)
    assert fa != fb and fa.startswith("hmac-sha256:")
    assert hashlib.sha256(value).hexdigest()[:24] not in (fa, fb)
    assert stat.S_IMODE(os.stat(tmp_path / "a" / "fp.key").st_mode) == 0o600
    assert FingerprintKey(tmp_path / "a" / "fp.key").of(b"content", value) == fa


def test_locating_references_never_creates_the_daemons_key(tmp_path: Path) -> None:
    """Checking who can decrypt reads the daemon's public recipient only when its key exists: a `stratum
    validate` on a machine without the daemon's key makes none."""
    from reconcilers.base import ReconcilerEnv
    from reconcilers.vault.reconciler import VaultReconciler

    vault = VaultReconciler(ReconcilerEnv(data_dir=tmp_path))
    assert vault.recipient_fingerprint() is None
    assert not (tmp_path / "vault" / "daemon.key").exists()
    world = secret_world(tmp_path)                     # makes the daemon's key where the daemon reads it
    assert vault.recipient_fingerprint() == world.daemon.fingerprint
