"""Password elements: sealed into a secret manifest through the vault layer (real crypto), referenced from the
generated Nickel, never written in clear anywhere on the branch."""

from __future__ import annotations

from pathlib import Path

import pygit2
import pytest

from reconcilers.errors import InputError
from reconcilers.forms.reconciler import load_forms
from reconcilers.forms.secrets import vault_sealer
from reconcilers.forms.session import FormSession
from reconcilers.infra.load import load_infra
from reconcilers.vault import envelope, keys, manifest
from tests.reconcilers.forms.conftest import OpsRepo
from tests.vault_fixtures import CANARY, B, secret_world

FORM = '''[form]
name = "db-user"
title = "A database user"
target = "infra/db-users/{name}.ncl"
template = "forms/templates/db-user.ncl.j2"

[[elements]]
name = "name"
pattern = "[a-z]+"

[[elements]]
name = "password"
type = "password"
min_length = 8
'''
TEMPLATE = '''{ resources = { {{ name }}-ref = { kind = 'file, path = "etc/db/{{ name }}.ref",
  content = {{ ncl.password }}, mode = "0600" } } }
'''


def _session(ops: OpsRepo, ring: keys.KeyRing) -> FormSession:
    snap = ops.source.snapshot("main")
    form = load_forms(snap).forms["db-user"]
    return FormSession(form, snap, ops.evaluator, writer=ops.writer, environ={},
                       seal=vault_sealer(ops.evaluator, lambda: ring))


def test_a_password_becomes_a_manifest_and_only_its_reference_reaches_nickel(tmp_path: Path, ops: OpsRepo) -> None:
    """The branch holds a manifest that opens to the password; no file or message holds the plaintext."""
    world = secret_world(tmp_path / "data")
    ops.work.commit({"forms/db-user.toml": FORM, "forms/templates/db-user.ncl.j2": TEMPLATE,
                     "secrets/rules.ncl": world.rules()}, message="db form")
    ring = keys.KeyRing((world.user_identity,), (world.user,))
    session = _session(ops, ring)
    try:
        checked = session.check({"name": "reports", "password": CANARY})
        assert checked.ok, checked.errors
        sub = session.submit(checked.answers, "alice@example.com")
    finally:
        session.close()
    repo = pygit2.Repository(str(ops.work.path))
    commit = repo.revparse_single(sub.branch)
    assert CANARY not in commit.message
    path = "secrets/forms/db-user-reports.yaml"
    for name in sub.files:
        text = commit.tree[name].data.decode()
        assert CANARY not in text, name
    nickel = commit.tree["infra/db-users/reports.ncl"].data.decode()
    # The infra contract's secret reference (the manifest's KV path), resolved by the vault at apply time only.
    assert '{ "secret" = "kv/forms/db-user-reports", "key" = "password" }' in nickel
    infra = load_infra(ops.source.snapshot(sub.commit), ops.evaluator)
    assert infra.problems == ()
    assert list(infra.resources["reports-ref"].fields["secrets"].values()) == ["kv/forms/db-user-reports#password"]
    opened = envelope.open_manifest(B, manifest.parse(commit.tree[path].data.decode(), path), ring, path)
    assert opened.values == {"password": CANARY}


def test_a_signer_the_rules_do_not_trust_is_refused_before_any_commit(tmp_path: Path, ops: OpsRepo) -> None:
    """Sealing with a key that secrets/rules.ncl does not trust would be rejected later: refused now."""
    world = secret_world(tmp_path / "data")
    ops.work.commit({"forms/db-user.toml": FORM, "forms/templates/db-user.ncl.j2": TEMPLATE,
                     "secrets/rules.ncl": world.rules()}, message="db form")
    stranger_identity, stranger = keys.generate(B)
    session = _session(ops, keys.KeyRing((stranger_identity,), (stranger,)))
    try:
        with pytest.raises(InputError, match="not a trusted signer"):
            session.preview(session.check({"name": "reports", "password": CANARY}).answers)
    finally:
        session.close()
