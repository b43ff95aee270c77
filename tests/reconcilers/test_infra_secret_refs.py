"""Secret references in infra resources (issue 11 item 1), through a real pipeline: a real git repo, the real
Nickel evaluator, real sealed manifests, the vault and infra reconcilers joined by the daemon's secrets broker,
a real DuckDB index and a real host root. The canary value must reach the files that reference it and nothing
else: not the plan, the stored actions, the index, the events or any file under the data directory."""

from __future__ import annotations

import json
import os
import stat
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from daemon.git.source import GitSource
from daemon.index.store import Index
from daemon.nickel.evaluator import Evaluator
from daemon.run.pipeline import Pipeline
from daemon.run.ports import SecretsBroker
from reconcilers.base import ReconcilerEnv
from reconcilers.infra.reconciler import InfraReconciler
from reconcilers.vault import envelope, manifest
from reconcilers.vault.keysource import FileKeySource
from reconcilers.vault.reconciler import VaultReconciler
from tests.fixtures import WorkRepo
from tests.vault_fixtures import CANARY, B, SecretWorld, secret_world

REF = '{ secret = "kv/app/db", key = "password" }'


def _infra(body: str) -> str:
    return "{\n  resources = {\n" + body + "\n  },\n}\n"


@dataclass
class World:
    repo: WorkRepo
    secrets: SecretWorld
    pipe: Pipeline
    root: Path
    data: Path
    index: Index

    def manifest(self, values: dict[str, object], path: str = "secrets/app/db.yaml") -> str:
        previous = self.repo.path / path
        return self.secrets.manifest(values, path=path,
                                     previous=previous.read_text() if previous.exists() else None)


@pytest.fixture
def world(tmp_path: Path, evaluator: Evaluator) -> Iterator[World]:
    data, root = tmp_path / "data", tmp_path / "root"
    secrets = secret_world(data)
    index = Index(data / "index.duckdb")
    broker = SecretsBroker(index)
    env = ReconcilerEnv(data_dir=data, settings={"infra": {"root": str(root)}}, evaluator=evaluator)
    vault = VaultReconciler(ReconcilerEnv(data_dir=data, evaluator=evaluator, secrets=broker.for_("vault")))
    infra = InfraReconciler(ReconcilerEnv(data_dir=data, settings=env.settings, evaluator=evaluator,
                                          secrets=broker.for_("infra")))
    broker.provider = vault.secrets()
    repo = WorkRepo(tmp_path / "ops")
    pipe = Pipeline(source=GitSource(str(repo.path), "main", data), index=index,
                    reconcilers={"infra": infra, "vault": vault}, evaluator=evaluator)
    yield World(repo, secrets, pipe, root, data, index)
    pipe.close()
    vault.close()
    index.close()


def _canary_files(folder: Path, canary: str = CANARY) -> list[str]:
    return [str(p) for p in folder.rglob("*") if p.is_file() and canary.encode() in p.read_bytes()]


def test_reference_in_content_reaches_the_file_only(world: World) -> None:
    """A file whose content is a reference gets the value at apply, mode 0600 by default; the plan shows the
    reference and a keyed fingerprint, and no plan, record, index or data file holds the value."""
    first = world.repo.commit({
        "secrets/rules.ncl": world.secrets.rules(),
        "secrets/app/db.yaml": world.manifest({"password": CANARY, "user": "app"}),
        "infra/app.ncl": _infra(f'    pw = {{ kind = \'file, path = "etc/app/pw", content = {REF} }},'),
    })
    report = world.pipe.plan(first)
    assert not report.problems, report.problems
    action = next(a for a in report.actions if a.id == "infra:pw")
    assert "vault:secrets/app/db.yaml" in action.depends_on
    assert "kv/app/db#password hmac-sha256:" in action.summary
    assert CANARY not in json.dumps([[a.summary, a.change, a.compensation] for a in report.actions])
    result = world.pipe.run(first)
    assert result.status == "succeeded", result
    target = world.root / "etc/app/pw"
    assert target.read_text() == CANARY
    assert stat.S_IMODE(os.stat(target).st_mode) == 0o600
    world.index.sync()
    assert _canary_files(world.data) == []
    # Nothing changed: the next run has nothing to do for it (the keyed fingerprints match).
    again = world.pipe.plan(first)
    assert [a.id for a in again.actions if a.reconciler == "infra"] == []


def test_changed_secret_reapplies_every_user_after_the_manifest(world: World) -> None:
    """A new value of the secret re-applies each resource using it (a template's vars and a command's env too)
    in the same run, each ordered after the manifest's action; resources using another key are untouched."""
    base = {
        "secrets/rules.ncl": world.secrets.rules(),
        "secrets/app/db.yaml": world.manifest({"password": CANARY, "user": "app"}),
        "templates/app.conf.j2": "user={{ user }}\npassword={{ password }}\n",
        "infra/app.ncl": _infra("\n".join([
            f"    pw = {{ kind = 'file, path = \"pw\", content = {REF} }},",
            "    conf = { kind = 'file, path = \"app.conf\", template = \"templates/app.conf.j2\", vars = {"
            ' user = { secret = "kv/app/db", key = "user" }, password = ' + REF + " } },",
            "    user = { kind = 'file, path = \"user\", content = { secret = \"kv/app/db\", key = \"user\" } },",
            "    cmd = { kind = 'command, run = \"printf %s \\\"$PW\\\" > from-env; echo $PW\","
            f" env = {{ PW = {REF} }} }},",
        ])),
    }
    assert world.pipe.run(world.repo.commit(base)).status == "succeeded"
    assert (world.root / "app.conf").read_text() == f"user=app\npassword={CANARY}\n"
    assert (world.root / "from-env").read_text() == CANARY
    new = CANARY + "-two"
    second = world.repo.commit({"secrets/app/db.yaml": world.manifest({"password": new, "user": "app"})})
    report = world.pipe.plan(second)
    ids = {a.id: a for a in report.actions}
    assert set(ids) == {"vault:secrets/app/db.yaml", "infra:pw", "infra:conf", "infra:cmd"}
    for rid in ("infra:pw", "infra:conf", "infra:cmd"):
        assert "vault:secrets/app/db.yaml" in ids[rid].depends_on
    result = world.pipe.run(second)
    assert result.status == "succeeded", result
    assert (world.root / "pw").read_text() == new
    assert (world.root / "app.conf").read_text() == f"user=app\npassword={new}\n"
    assert (world.root / "from-env").read_text() == new
    world.index.sync()
    assert _canary_files(world.data) == []         # not even the command's echo of the value
    assert _canary_files(world.data, new) == []


def test_host_edit_of_a_secret_file_is_drift_and_corrected(world: World) -> None:
    """Someone edits a file holding a secret: the keyed fingerprints differ, the next run rewrites it."""
    first = world.repo.commit({
        "secrets/rules.ncl": world.secrets.rules(),
        "secrets/app/db.yaml": world.manifest({"password": CANARY}),
        "infra/app.ncl": _infra(f'    pw = {{ kind = \'file, path = "pw", content = {REF}, mode = "0640" }},'),
    })
    assert world.pipe.run(first).status == "succeeded"
    assert stat.S_IMODE(os.stat(world.root / "pw").st_mode) == 0o640
    (world.root / "pw").write_text("tampered")
    report = world.pipe.plan(first)
    assert [a.id for a in report.actions] == ["infra:pw"]
    assert world.pipe.run(first, trigger="drift").status == "succeeded"
    assert (world.root / "pw").read_text() == CANARY


@pytest.mark.parametrize(("reference", "expected"), [
    ('{ secret = "kv/app/nope", key = "password" }', "no manifest under secrets/ has KV path kv/app/nope"),
    ('{ secret = "kv/app/db", key = "nope" }', "secrets/app/db.yaml has no key nope"),
    ('{ secret = "secrets/app/gone.yaml", key = "x" }', "secrets/app/gone.yaml is not in the revision"),
    ('{ secret = "/etc/shadow", key = "x" }', "leaves the secrets"),
    ('{ secret = "etc/shadow", key = "x" }', "names neither a KV path"),
])
def test_bad_reference_is_a_validate_error_naming_resource_and_reference(world: World, reference: str,
                                                                         expected: str) -> None:
    """A reference to a missing manifest or key is a validate problem naming the resource, its file:line and
    the reference; nothing is applied."""
    rev = world.repo.commit({
        "secrets/rules.ncl": world.secrets.rules(),
        "secrets/app/db.yaml": world.manifest({"password": CANARY}),
        "infra/app.ncl": _infra(f"    pw = {{ kind = 'file, path = \"pw\", content = {reference} }},"),
    })
    result = world.pipe.run(rev)
    assert result.status == "rejected"
    text = json.dumps([[p.message, p.path, p.line] for p in result.problems])
    assert expected in text and "resource pw" in text and '"infra/app.ncl", 3' in text
    assert not (world.root / "pw").exists()


def test_undecryptable_secret_is_a_validate_error(world: World) -> None:
    """A manifest the daemon is not a recipient of cannot feed a resource: rejected at validate."""
    only_user = SecretWorld(world.secrets.user, world.secrets.user_identity, world.secrets.user_identity.recipient)
    rev = world.repo.commit({
        "secrets/rules.ncl": world.secrets.rules(),
        "secrets/app/db.yaml": only_user.manifest({"password": CANARY}, path="secrets/app/db.yaml"),
        "infra/app.ncl": _infra(f"    pw = {{ kind = 'file, path = \"pw\", content = {REF} }},"),
    })
    result = world.pipe.run(rev)
    assert result.status == "rejected"
    assert any("daemon cannot decrypt secrets/app/db.yaml" in p.message and "resource pw" in p.message
               for p in result.problems), result.problems


def test_a_daemon_with_another_key_is_named_when_the_apply_cannot_read_the_secret(world: World) -> None:
    """A manifest sealed for another daemon's key (the walk: `stratum secret init` run without the demo
    daemon's --data-dir) passes validate while this daemon has no key yet, so nothing can be compared; the
    apply then fails, rolls back, and names this daemon's key beside the hint, so the mismatch with the
    recipients `secret init` printed shows at once. Before, the message named no key."""
    rev = world.repo.commit({
        "secrets/rules.ncl": world.secrets.rules(),
        "secrets/app/db.yaml": world.manifest({"password": CANARY}),
        "infra/app.ncl": _infra(f"    pw = {{ kind = 'file, path = \"pw\", content = {REF} }},"),
    })
    (world.data / "vault" / "daemon.key").unlink()      # this daemon is not the one the manifest was sealed for
    result = world.pipe.run(rev)
    assert result.status in ("failed", "rolled_back"), result
    mine = FileKeySource(world.data / "vault" / "daemon.key", create=False).recipient().fingerprint
    assert mine != world.secrets.daemon.fingerprint
    assert f"this daemon's key is {mine[:16]}" in result.message, result.message
    assert "stratum secret daemon-key" in result.message
    assert not (world.root / "pw").exists() and not _canary_files(world.data)


def test_old_manifest_reference_form_still_works(world: World) -> None:
    """`secrets/x.yaml#key` written as the reference keeps working."""
    rev = world.repo.commit({
        "secrets/rules.ncl": world.secrets.rules(),
        "secrets/app/db.yaml": world.manifest({"db": {"password": CANARY}}),
        "infra/app.ncl": _infra("    pw = { kind = 'file, path = \"pw\", content = "
                                '{ secret = "secrets/app/db.yaml", key = "db.password" } },'),
    })
    assert world.pipe.run(rev).status == "succeeded"
    assert (world.root / "pw").read_text() == CANARY


def test_unit_receives_secrets_as_credential_files(world: World) -> None:
    """A systemd_unit's `credentials` become 0600 files under the runtime directory and LoadCredential= lines;
    the unit file itself holds no value."""
    rev = world.repo.commit({
        "secrets/rules.ncl": world.secrets.rules(),
        "secrets/app/db.yaml": world.manifest({"password": CANARY}),
        "infra/app.ncl": _infra("    unit = { kind = 'systemd_unit, name = \"app.service\", content = "
                                '"[Unit]\\nDescription=app\\n[Service]\\nExecStart=/bin/true\\n", '
                                f"credentials = {{ dbpw = {REF} }} }},"),
    })
    assert world.pipe.run(rev).status == "succeeded"
    unit = (world.root / "etc/systemd/system/app.service").read_text()
    cred = world.data / "run" / "credentials" / "app.service" / "dbpw"
    assert f"[Service]\nLoadCredential=dbpw:{cred}\nExecStart=/bin/true" in unit
    assert CANARY not in unit
    assert cred.read_text() == CANARY
    assert stat.S_IMODE(os.stat(cred).st_mode) == 0o600
    assert list(world.pipe.plan(rev).actions) == []
    gone = world.repo.commit({"infra/app.ncl": _infra("")})
    assert world.pipe.run(gone).status == "succeeded"
    assert not (world.root / "etc/systemd/system/app.service").exists() and not cred.parent.exists()


def test_signed_kv_path_names_the_manifest(world: World) -> None:
    """A manifest whose signed `kv_path` is kv/shared/db answers references to that path, wherever it lives."""
    policy = envelope.Policy((tuple(world.secrets.recipients()),))
    sealed = envelope.seal(B, {"password": CANARY}, path="secrets/elsewhere.yaml", policy=policy,
                           key=world.secrets.user, kv_path="kv/shared/db")
    rev = world.repo.commit({
        "secrets/rules.ncl": world.secrets.rules(),
        "secrets/elsewhere.yaml": manifest.render(sealed),
        "infra/app.ncl": _infra("    pw = { kind = 'file, path = \"pw\", content = "
                                '{ secret = "kv/shared/db", key = "password" } },'),
    })
    assert world.pipe.run(rev).status == "succeeded"
    assert (world.root / "pw").read_text() == CANARY


def test_template_that_transforms_a_secret_is_refused(world: World) -> None:
    """`{{ password | upper }}` would act on a placeholder, not the value: a located validate error."""
    rev = world.repo.commit({
        "secrets/rules.ncl": world.secrets.rules(),
        "secrets/app/db.yaml": world.manifest({"password": CANARY}),
        "templates/t.j2": "{{ password | upper }}\n",
        "infra/app.ncl": _infra("    t = { kind = 'file, path = \"t\", template = \"templates/t.j2\", "
                                f"vars = {{ password = {REF} }} }},"),
    })
    result = world.pipe.run(rev)
    assert result.status == "rejected"
    assert any("changed a secret variable" in p.message for p in result.problems), result.problems


def test_compensation_gets_the_secret_and_failures_are_redacted(world: World) -> None:
    """A command's compensation runs with its secret env resolved again; a failing command that prints the
    value has it replaced by the reference in the recorded error, and nothing under the data dir holds it."""
    rev = world.repo.commit({
        "secrets/rules.ncl": world.secrets.rules(),
        "secrets/app/db.yaml": world.manifest({"password": CANARY}),
        "infra/app.ncl": _infra("\n".join([
            "    setup = { kind = 'command, run = \"true\", compensate = \"printf %s \\\"$PW\\\" > undone\","
            f" env = {{ PW = {REF} }} }},",
            "    leak = { kind = 'command, run = \"echo $PW; exit 3\", depends_on = [\"setup\"],"
            f" env = {{ PW = {REF} }} }},",
        ])),
    })
    result = world.pipe.run(rev)
    assert result.status in ("failed", "rolled_back"), result
    assert (world.root / "undone").read_text() == CANARY
    world.index.sync()
    assert _canary_files(world.data) == []
    assert "[secret kv/app/db#password]" in json.dumps(
        [list(map(str, row)) for row in world.index.query("SELECT * FROM actions")])


def test_a_secret_straddling_the_kept_tail_of_the_output_leaves_no_fragment(world: World) -> None:
    """A failing command's message keeps the tail of its output (400 characters): the value printed so that the
    cut falls inside it must not survive as a fragment (redaction runs on the whole output before the cut)."""
    pad = 400 - 10            # the kept tail starts 10 characters before the value's end
    rev = world.repo.commit({
        "secrets/rules.ncl": world.secrets.rules(),
        "secrets/app/db.yaml": world.manifest({"password": CANARY}),
        "infra/app.ncl": _infra(
            f"    leak = {{ kind = 'command, run = \"printf %s \\\"$PW\\\"; head -c {pad} /dev/zero | tr '\\\\0' y; "
            f"exit 3\", env = {{ PW = {REF} }} }},"),
    })
    result = world.pipe.run(rev)
    assert result.status in ("failed", "rolled_back"), result
    world.index.sync()
    recorded = json.dumps([list(map(str, row)) for row in world.index.query("SELECT * FROM actions")])
    assert "y" * 50 in recorded                   # the tail was recorded ...
    fragments = {CANARY[i:i + 6] for i in range(len(CANARY) - 5)}
    assert [f for f in fragments if f in recorded] == []      # ... and no 6 characters of the value in it
    assert _canary_files(world.data) == []


def test_pull_request_plan_shows_a_changed_secret_and_only_then(world: World) -> None:
    """A pull request's plan (base against head, no host read) updates the resources of a changed secret,
    and plans nothing for a head that leaves it alone."""
    base = world.repo.commit({
        "secrets/rules.ncl": world.secrets.rules(),
        "secrets/app/db.yaml": world.manifest({"password": CANARY}),
        "infra/app.ncl": _infra(f"    pw = {{ kind = 'file, path = \"pw\", content = {REF} }},"),
    })
    same = world.repo.commit({"notes.md": "unrelated\n"})
    assert [a.id for a in world.pipe.plan_between(base, same).actions] == []
    changed = world.repo.commit({"secrets/app/db.yaml": world.manifest({"password": CANARY + "-pr"})})
    report = world.pipe.plan_between(same, changed)
    # (the vault reconciler reads no target for a pull request's plan: only the file's update shows)
    assert [(a.id, a.depends_on) for a in report.actions] == [("infra:pw", ("vault:secrets/app/db.yaml",))]
    assert CANARY not in json.dumps([[a.summary, a.change] for a in report.actions])


def test_plan_after_a_secret_left_a_file_shows_no_plain_hash_of_it(world: World) -> None:
    """A file that held a secret and is now given plain content: the plan's expected-vs-found shows no plain
    hash of what the host holds (a short secret would be found from it) and no diff of it."""
    import hashlib

    first = world.repo.commit({
        "secrets/rules.ncl": world.secrets.rules(),
        "secrets/app/db.yaml": world.manifest({"password": CANARY}),
        "infra/app.ncl": _infra(f'    pw = {{ kind = \'file, path = "pw", content = {REF}, mode = "0644" }},'),
    })
    assert world.pipe.run(first).status == "succeeded"
    plain = world.repo.commit({"infra/app.ncl": _infra('    pw = { kind = \'file, path = "pw", content = "x" },')})
    report = world.pipe.plan(plain)
    text = json.dumps(report.details, default=str)
    assert "infra:pw" in report.details
    assert hashlib.sha256(CANARY.encode()).hexdigest()[:12] not in text and CANARY not in text
    assert world.pipe.run(plain).status == "succeeded"
    assert (world.root / "pw").read_text() == "x"
