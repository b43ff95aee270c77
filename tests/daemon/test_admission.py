"""Admission end to end (daemon/control/admission.py): a real Pipeline over a real git repo, DuckDB index and local
provider root judges each commit by its signature (real ssh-keygen keys) and by Cedar change control
(policies/*.cedar, teams from host settings); the CLI shows and enforces the same decisions."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

import pygit2
import pytest
import structlog
from click.testing import CliRunner, Result

from daemon.cli.main import cli
from daemon.control import admission
from daemon.control.admission import AdmissionSettings, admission_settings
from daemon.control.policy import parse_policies
from daemon.nickel.evaluator import Evaluator
from daemon.package_data import template_dir
from daemon.run.pipeline import RunResult
from daemon.settings import load_settings
from reconcilers import registry
from tests.fixtures import (
    SshKeys,
    Stack,
    WorkRepo,
    commit_with,
    git,
    infra,
    make_ssh_keys,
    resource,
    run_tool,
    ssh_signing,
    tree_of,
    with_signature,
)

needs_ssh = pytest.mark.usefixtures("ssh_keys")   # the fixture fails loudly when ssh-keygen is missing

ALICE = "alice@example.com"
BOB = "bob@example.com"
MOTD = resource("motd", "file", path="etc/motd", content="v1\n")           # infra/base.ncl:3
WEB = resource("web", "file", path="etc/web.conf", content="port = 80\n", labels={"env": "dev"})   # :4
BASE = {"stratum.ncl": '{ name = "test-ops" }\n', "infra/base.ncl": infra(MOTD, WEB)}
# alice is the admin; resources labelled env=prod are for the ops team only (lines matter: reasons cite them).
POLICY = """\
// change control of the tests' ops repo
@id("admins")
permit(principal == Stratum::User::"alice@example.com",
       action in [Stratum::Action::"create", Stratum::Action::"change", Stratum::Action::"delete"], resource);

@id("prod-is-ops-only")
forbid(principal, action, resource)
  when { resource.hasTag("env") && resource.getTag("env") == "prod" }
  unless { principal in Stratum::Team::"ops" };
"""
GRANT = POLICY + '\n@id("bob-may-change")\npermit(principal == Stratum::User::"bob@example.com", action, resource);\n'


def motd(text: str, *more: str) -> dict[str, str]:
    """BASE's infra file with another motd text and `more` resources after web (line 5 on)."""
    return {"infra/base.ncl": infra(MOTD.replace("v1", text), WEB, *more)}


def prod_db(content: str = "db\n") -> str:
    """A resource labelled env=prod, for the ops-only policy."""
    return resource("db", "file", path="etc/db.conf", content=content, labels={"env": "prod"})


# -- real commits by real people -----------------------------------------------------------------------------
def commit(repo: WorkRepo, files: Mapping[str, str | None], *, author: str = ALICE, key: Path | None = None,
           message: str = "change") -> str:
    """Commit `files` authored by `author` (the committer is a CI bot), signed with the SSH key `key` when
    given; returns the commit id."""
    env = {"GIT_AUTHOR_NAME": author.split("@")[0], "GIT_AUTHOR_EMAIL": author,
           "GIT_COMMITTER_NAME": "CI", "GIT_COMMITTER_EMAIL": "ci@example.com"}
    return commit_with(repo, files, signing=ssh_signing(key) if key else (), message=message, env=env)


def forge(repo: WorkRepo, signed: str, tree_from: str) -> str:
    """A commit carrying `signed`'s signature but `tree_from`'s tree (a signature copied elsewhere), made the
    tip of main."""
    forged = with_signature(pygit2.Repository(str(repo.path)), signed, tree_from)
    run_tool(["git", "update-ref", "refs/heads/main", forged], repo.path)
    return forged


@pytest.fixture(scope="module")
def ssh_keys(tmp_path_factory: pytest.TempPathFactory) -> SshKeys:
    """Key pairs made once per module with the host's ssh-keygen (failing, never skipping, without it)."""
    return make_ssh_keys(tmp_path_factory.mktemp("ssh-keys"))


# -- the pipeline and its host settings ----------------------------------------------------------------------
def host(stack: Stack, toml: str, name: str = "stratumd.toml") -> AdmissionSettings:
    """Write host settings, build the admission settings from them as the daemon does, and hand them to the
    pipeline (what start-up or a SIGHUP reload does)."""
    config = stack.tmp / name
    config.write_text(toml)
    settings = load_settings({"repo": str(stack.source.location), "data_dir": stack.data}, env={}, config=config)
    stack.pipeline.admission = admission_settings(settings, str(config))
    return stack.pipeline.admission


def signing_toml(keys: SshKeys, require: bool = True) -> str:
    """A [signing] section trusting alice's key as alice@example.com (its allowed-signers file beside the keys)."""
    allowed = keys.allowed(keys.alice.parent / "allowed_signers")
    return f"[signing]\nrequire_signed_commits = {'true' if require else 'false'}\n" \
           f"allowed_signers = {json.dumps(str(allowed))}\n"


def teams_toml(*ops: str) -> str:
    """A [policy] section whose ops team has the given members."""
    return f"[policy]\nteams = {{ ops = {json.dumps(list(ops))} }}\n"


@dataclass(frozen=True)
class Before:
    """What a rejected run must leave exactly as it was."""

    tree: dict[str, tuple[str, str, str]]
    inventory: set[str]
    good: str | None


def before(stack: Stack) -> Before:
    """The host root, inventory and last good revision now."""
    return Before(tree_of(stack.root), stack.inventory_ids(), stack.state("last_good_revision"))


def assert_rejected(stack: Stack, result: RunResult, was: Before) -> None:
    """The run is `rejected` and nothing of it was applied: root, inventory and last good revision unchanged."""
    assert result.status == "rejected", result
    assert result.actions == ()
    assert "the last good revision stays in force" in result.message
    assert tree_of(stack.root) == was.tree
    assert stack.inventory_ids() == was.inventory
    assert stack.state("last_good_revision") == stack.state("last_applied_revision") == was.good
    assert stack.state("last_attempted_revision") == result.revision


def problems(result: RunResult) -> list[tuple[str, int, str]]:
    """(path, line, message) of each problem of a run."""
    return [(p.path, p.line, p.message) for p in result.problems]


# -- 1. provenance -------------------------------------------------------------------------------------------
@pytest.fixture
def signed_good(repo: WorkRepo, stack: Stack, ssh_keys: SshKeys) -> str:
    """Signatures required, alice trusted; BASE committed signed by alice and applied."""
    host(stack, signing_toml(ssh_keys))
    rev = commit(repo, BASE, key=ssh_keys.alice, message="base")
    result = stack.run(rev)
    assert result.status == "succeeded", result
    return rev


@needs_ssh
def test_a_commit_signed_by_an_allowed_signer_is_applied(repo: WorkRepo, stack: Stack, ssh_keys: SshKeys,
                                                         signed_good: str) -> None:
    """With signatures required, a commit signed by a key in allowed signers is applied and becomes the last
    good revision."""
    assert (stack.root / "etc/motd").read_text() == "v1\n"
    rev = commit(repo, motd("v2", resource("new", "file", path="etc/new", content="new\n")), key=ssh_keys.alice)
    result = stack.run(rev)
    assert result.status == "succeeded", result
    assert (stack.root / "etc/motd").read_text() == "v2\n"
    assert (stack.root / "etc/new").read_text() == "new\n"
    assert stack.state("last_applied_revision") == stack.state("last_good_revision") == rev


@needs_ssh
def test_an_unsigned_commit_is_rejected_and_the_last_good_revision_stays(
        repo: WorkRepo, stack: Stack, ssh_keys: SshKeys, signed_good: str) -> None:
    """With signatures required, an unsigned commit is rejected as a whole saying signed commits are required;
    nothing of it is applied; a signed commit on top does not carry it in (every commit since the last good
    revision must be signed); once the branch is rewritten without it, the signed commit applies."""
    was = before(stack)
    rev = commit(repo, motd("v2-must-not-land", resource("new", "file", path="etc/new", content="x\n")))
    result = stack.run(rev)
    assert_rejected(stack, result, was)
    [problem] = result.problems
    assert problem.message == f"commit {rev[:12]} rejected: signed commits are required; the commit is not signed"
    assert problem.reconciler == "signing" and "git commit -S" in problem.hint
    assert not (stack.root / "etc/new").exists()
    assert (stack.root / "etc/motd").read_text() == "v1\n"
    on_top = commit(repo, motd("v3"), key=ssh_keys.alice)
    result = stack.run(on_top)
    assert_rejected(stack, result, was)
    [problem] = result.problems
    assert problem.message.startswith(f"commit {rev[:12]} rejected: signed commits are required")
    run_tool(["git", "reset", "-q", "--hard", signed_good], repo.path)
    fixed = commit(repo, motd("v3"), key=ssh_keys.alice)
    assert stack.run(fixed).status == "succeeded"
    assert (stack.root / "etc/motd").read_text() == "v3\n"


@needs_ssh
def test_a_commit_signed_by_an_unknown_key_is_rejected_naming_the_key(
        repo: WorkRepo, stack: Stack, ssh_keys: SshKeys, signed_good: str) -> None:
    """A commit signed by a key that is not in allowed signers (mallory's) is rejected, and the problem says
    which key and why."""
    was = before(stack)
    rev = commit(repo, motd("mallory was here"), key=ssh_keys.mallory)
    result = stack.run(rev)
    assert_rejected(stack, result, was)
    [problem] = result.problems
    assert problem.message.startswith(f"commit {rev[:12]} rejected: signed commits are required; ssh key SHA256:")
    assert problem.message.endswith("is not in the allowed signers file")
    assert (stack.root / "etc/motd").read_text() == "v1\n"


@needs_ssh
def test_a_signature_copied_from_another_commit_is_rejected(
        repo: WorkRepo, stack: Stack, ssh_keys: SshKeys, signed_good: str) -> None:
    """alice's good signature copied onto a commit with another tree (the branch moved to it) does not
    verify: the revision is rejected and its tree is never applied."""
    was = before(stack)
    evil = commit(repo, motd("evil", resource("backdoor", "file", path="etc/backdoor", content="x\n")))
    run_tool(["git", "reset", "-q", "--hard", signed_good], repo.path)
    approved = commit(repo, motd("approved"), key=ssh_keys.alice)
    forged = forge(repo, approved, evil)
    assert stack.source.verify_signature(approved, stack.pipeline.admission.signing).valid
    result = stack.run("main")
    assert result.revision == forged
    assert_rejected(stack, result, was)
    [problem] = result.problems
    assert problem.message.startswith(f"commit {forged[:12]} rejected: signed commits are required; "
                                      "the ssh signature is not valid for this commit")
    assert not (stack.root / "etc/backdoor").exists()


@needs_ssh
def test_the_principal_is_the_verified_signer_not_the_author(
        repo: WorkRepo, stack: Stack, ssh_keys: SshKeys) -> None:
    """With signatures checked, the Cedar principal is the verified signer, whoever the author claims to be;
    an unsigned commit falls back to its author's email and is not `signed` for policies."""
    host(stack, signing_toml(ssh_keys, require=False) + teams_toml())
    rev = commit(repo, {**BASE, "policies/base.cedar": POLICY}, author=BOB, key=ssh_keys.alice)
    admission = stack.pipeline.plan(rev).admission
    assert admission is not None and admission.problems == ()
    assert (admission.principal, admission.signed, admission.control) == (ALICE, True, "on")
    assert stack.run(rev).status == "succeeded"
    unsigned = commit(repo, motd("v2"), author=ALICE)
    report = stack.pipeline.plan(unsigned)
    assert report.admission is not None and (report.admission.principal, report.admission.signed) == (ALICE, False)
    assert report.problems == ()


# -- 2. Cedar change control ---------------------------------------------------------------------------------
@pytest.fixture
def governed(repo: WorkRepo, stack: Stack) -> str:
    """Signatures off, ops = [carol]; BASE with POLICY committed by alice and applied."""
    host(stack, teams_toml("carol@example.com"))
    rev = commit(repo, {**BASE, "policies/base.cedar": POLICY}, message="base with policies")
    result = stack.run(rev)
    assert result.status == "succeeded", result
    return rev


def test_a_change_the_policies_permit_is_applied(repo: WorkRepo, stack: Stack, governed: str) -> None:
    """alice (permitted by `admins`) changes, creates and deletes resources: the commit is applied and every
    decision names the permitting policy."""
    rev = commit(repo, {"infra/base.ncl": infra(MOTD.replace("v1", "v2"),
                                                resource("new", "file", path="etc/new", content="n\n"))})
    report = stack.pipeline.plan(rev)
    assert report.admission is not None and report.admission.principal == ALICE
    assert sorted((d.change.action, d.change.resource.uid, d.allowed, d.policies)
                  for d in report.admission.decisions) == [
        ("change", "infra:motd", True, ("admins",)),
        ("create", "infra:new", True, ("admins",)),
        ("delete", "infra:web", True, ("admins",)),
    ]
    result = stack.run(rev)
    assert result.status == "succeeded", result
    assert (stack.root / "etc/motd").read_text() == "v2\n"
    assert (stack.root / "etc/new").exists() and not (stack.root / "etc/web.conf").exists()


def test_a_change_the_policies_deny_is_rejected_at_the_resource(repo: WorkRepo, stack: Stack, governed: str,
                                                                ) -> None:
    """bob (the author: signatures are off) is permitted nothing: his change is rejected; the problem for a
    prod resource names the forbid by its @id and location, and each problem points at the resource's
    file:line."""
    was = before(stack)
    rev = commit(repo, motd("bob's motd", prod_db()), author=BOB)
    result = stack.run(rev)
    assert_rejected(stack, result, was)
    assert sorted(problems(result)) == [
        ("infra/base.ncl", 3, "no permit policy allows bob@example.com to change infra:motd"),
        ("infra/base.ncl", 5, "denied by forbid policy prod-is-ops-only (policies/base.cedar:7)"),
    ]
    assert {p.reconciler for p in result.problems} == {"policy"}
    assert str(result.problems[0]).startswith("infra/base.ncl:")
    assert not (stack.root / "etc/db.conf").exists()


def test_a_prod_change_needs_the_ops_team_from_host_settings(repo: WorkRepo, stack: Stack, governed: str) -> None:
    """alice's change to an env=prod resource is rejected by `prod-is-ops-only` while she is not in ops, and
    the same revision applies once host settings put her in the team."""
    was = before(stack)
    rev = commit(repo, motd("v1", prod_db()))
    result = stack.run(rev)
    assert_rejected(stack, result, was)
    assert problems(result) == [("infra/base.ncl", 5,
                                 "denied by forbid policy prod-is-ops-only (policies/base.cedar:7)")]
    assert host(stack, teams_toml("carol@example.com", ALICE), "reloaded.toml").teams["ops"] == (
        "carol@example.com", ALICE)
    result = stack.run(rev)
    assert result.status == "succeeded", result
    assert (stack.root / "etc/db.conf").read_text() == "db\n"
    # Dropping the label in the same commit does not dodge the forbid: the old state is judged too.
    host(stack, teams_toml("carol@example.com"), "again.toml")
    unlabelled = commit(repo, motd("v1", prod_db("db2\n").replace('labels = { env = "prod" }', "labels = {}")))
    result = stack.run(unlabelled)
    assert result.status == "rejected"
    [(_, _, message)] = problems(result)
    assert message == ("denied by forbid policy prod-is-ops-only (policies/base.cedar:7), judged on the resource "
                       "as it was before the change")


# -- 3. no self-approval -------------------------------------------------------------------------------------
def test_an_unauthorized_commit_cannot_ride_in_under_an_authorized_one(
        repo: WorkRepo, stack: Stack, governed: str) -> None:
    """Two commits pushed together: bob's change (not permitted) and alice's on top. The range is judged commit
    by commit, so the head is rejected naming bob's commit, and neither change is applied."""
    was = before(stack)
    bob = commit(repo, {"infra/base.ncl": infra(MOTD.replace("v1", "bob was here"), WEB)}, author=BOB)
    head = commit(repo, {"infra/extra.ncl": infra(resource("extra", "file", path="etc/extra", content="x\n"))})
    result = stack.run(head)
    assert_rejected(stack, result, was)
    assert problems(result) == [("infra/base.ncl", 3, "no permit policy allows bob@example.com to change infra:motd "
                                                      f"(commit {bob[:12]} by bob@example.com)")]
    report = stack.pipeline.plan(head)
    assert report.admission is not None
    assert [a.principal for a in report.admission.authors] == [BOB, ALICE]
    # alice's own file was touched by her commit only: her change alone decides it.
    extra = [d for d in report.admission.decisions if d.change.resource.uid == "infra:extra"]
    assert [(d.allowed, d.policies) for d in extra] == [(True, ("admins",))]
    assert not (stack.root / "etc/extra").exists()


def test_a_valid_signature_by_a_key_without_email_is_that_key_not_the_claimed_author(
        tmp_path: Path, repo: WorkRepo, stack: Stack, governed: str) -> None:
    """A commit authored as alice but signed by a trusted GPG key whose uid has no email is judged as that key
    (`key:<fingerprint>`), never as alice: the author field is the signer's to choose."""
    home = tmp_path / "gnupg"
    home.mkdir(mode=0o700)
    env = {"GNUPGHOME": str(home)}
    try:
        run_tool(["gpg", "--batch", "--passphrase", "", "--quick-gen-key", "Build Bot", "ed25519", "sign", "never"],
                 tmp_path, env)
        listing = run_tool(["gpg", "--batch", "--with-colons", "--list-keys", "Build Bot"], tmp_path, env)
        fpr = next(line.split(":")[9] for line in listing.splitlines() if line.startswith("fpr:"))
        keyring = tmp_path / "trusted.gpg"
        keyring.write_bytes(subprocess.run(["gpg", "--batch", "--export", fpr], capture_output=True, check=True,
                                           env={**os.environ, **env}).stdout)
        host(stack, teams_toml("carol@example.com") + f"[signing]\ngpg_keyring = {json.dumps(str(keyring))}\n")
        git_env = {**env, "GIT_AUTHOR_NAME": "alice", "GIT_AUTHOR_EMAIL": ALICE}
        rev = commit_with(repo, {"infra/base.ncl": infra(MOTD.replace("v1", "v2"), WEB)}, env=git_env,
                          signing=["-c", "gpg.program=gpg", "-c", f"user.signingkey={fpr}"])
    finally:
        run_tool(["gpgconf", "--kill", "gpg-agent"], tmp_path, env, check=False)
    was = before(stack)
    result = stack.run(rev)
    assert_rejected(stack, result, was)
    assert problems(result) == [("infra/base.ncl", 3, f"no permit policy allows key:{fpr} to change infra:motd")]


def test_policies_reading_changed_paths_are_bounded(repo: WorkRepo, stack: Stack, governed: str,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """A policy reading context.changed_paths makes every request carry them all: past a work budget (lowered
    here to keep the test small) the revision is rejected with the reason, never judged for minutes."""
    paths_policy = POLICY + '\n@id("no-etc-shadow")\nforbid(principal, action, resource)\n' \
        '  when { context.changed_paths.contains("infra/shadow.ncl") };\n'
    assert stack.run(commit(repo, {"policies/base.cedar": paths_policy})).status == "succeeded"
    monkeypatch.setattr(admission, "MAX_PATH_WORK", 3)
    was = before(stack)
    result = stack.run(commit(repo, {"infra/base.ncl": infra(MOTD.replace("v1", "v2"), WEB),
                                     "infra/more.ncl": infra(resource("m", "file", path="etc/m", content="m\n"))}))
    assert_rejected(stack, result, was)
    assert "too large to check" in result.problems[0].message and "changed_paths" in result.problems[0].hint


def test_a_commit_cannot_grant_its_own_author_rights(repo: WorkRepo, stack: Stack, governed: str) -> None:
    """bob's commit granting himself rights in policies/ and using them at once is rejected: the revision's own
    policies would allow the infra change, but the policy change is judged by the last good revision's."""
    was = before(stack)
    rev = commit(repo, {"policies/base.cedar": GRANT, **motd("bob rules")}, author=BOB)
    report = stack.pipeline.plan(rev)
    assert report.admission is not None
    assert sorted((d.change.resource.uid, d.allowed, d.policies) for d in report.admission.decisions) == [
        ("infra:motd", True, ("bob-may-change",)),
        ("policy:policies/base.cedar", False, ()),
    ]
    result = stack.run(rev)
    assert_rejected(stack, result, was)
    assert problems(result) == [
        ("policies/base.cedar", 0, "no permit policy allows bob@example.com to change policy:policies/base.cedar")]
    assert (stack.root / "etc/motd").read_text() == "v1\n"


def test_a_grant_rejected_in_one_commit_stays_rejected_in_the_next(repo: WorkRepo, stack: Stack, governed: str,
                                                                  ) -> None:
    """Granting in one commit and using the grant in the next does not help: the grant is rejected, so the
    second commit's base is still the last good revision and its diff still holds the policy change."""
    was = before(stack)
    grant = commit(repo, {"policies/base.cedar": GRANT}, author=BOB, message="grant")
    assert_rejected(stack, stack.run(grant), was)
    use = commit(repo, motd("bob rules"), author=BOB, message="use")
    result = stack.run(use)
    assert_rejected(stack, result, was)
    assert problems(result) == [
        ("policies/base.cedar", 0, "no permit policy allows bob@example.com to change policy:policies/base.cedar "
                                   f"(commit {grant[:12]} by bob@example.com)")]
    assert (stack.root / "etc/motd").read_text() == "v1\n"


def test_a_policy_change_by_an_admin_applies_and_governs_the_next_commit(
        repo: WorkRepo, stack: Stack, governed: str) -> None:
    """alice (permitted by the policies in force) grants bob rights: that commit applies, and bob's next
    commit is judged by the new policies and applied."""
    grant = commit(repo, {"policies/base.cedar": GRANT}, message="grant bob")
    report = stack.pipeline.plan(grant)
    assert report.admission is not None
    [decision] = report.admission.decisions
    assert (decision.change.action, decision.change.resource.uid, decision.allowed) == (
        "change", "policy:policies/base.cedar", True)
    assert decision.reason == "allowed by permit policy admins (policies/base.cedar:3)"
    assert stack.run(grant).status == "succeeded"
    assert stack.state("last_good_revision") == grant
    result = stack.run(commit(repo, motd("bob's motd"), author=BOB))
    assert result.status == "succeeded", result
    assert (stack.root / "etc/motd").read_text() == "bob's motd\n"


@pytest.mark.parametrize("keep_ref", [True, False])
def test_rewritten_history_does_not_make_new_policies_a_bootstrap(
        tmp_path: Path, repo: WorkRepo, stack: Stack, governed: str, evaluator: Evaluator, keep_ref: bool) -> None:
    """After a force-rewritten history and `git gc`, a process that starts afresh (CLI apply, daemon restart)
    never judges the new tip's policies/ as a bootstrap: the last good commit survives through
    refs/stratum/last-good and its policies reject bob's orphan commit; and when even that ref was deleted, the
    commit is rejected because its base cannot be read. Nothing of it is applied either way."""
    run_tool(["git", "checkout", "-q", "--orphan", "rewrite"], repo.path)
    rev = commit(repo, {**BASE, "policies/base.cedar": GRANT, **motd("bob owns this")}, author=BOB)
    run_tool(["git", "branch", "-f", "main", rev], repo.path)
    run_tool(["git", "checkout", "-q", "main"], repo.path)
    run_tool(["git", "branch", "-q", "-D", "rewrite"], repo.path)
    assert run_tool(["git", "rev-parse", "refs/stratum/last-good"], repo.path).strip() == governed
    if not keep_ref:
        run_tool(["git", "update-ref", "-d", "refs/stratum/last-good"], repo.path)
    run_tool(["git", "reflog", "expire", "--expire=now", "--all"], repo.path)
    run_tool(["git", "gc", "-q", "--prune=now"], repo.path)
    stack.index.close()
    fresh = Stack(tmp_path, repo.path, evaluator=evaluator)
    try:
        host(fresh, teams_toml("carol@example.com"))
        assert fresh.state("last_good_revision") == governed
        was = before(fresh)
        result = fresh.run(rev)
        assert_rejected(fresh, result, was)
        assert (fresh.root / "etc/motd").read_text() == "v1\n"
        expected = "policies/base.cedar" if keep_ref else "can no longer be read"
        assert any(expected in str(p) for p in result.problems), result.problems
    finally:
        fresh.close()


# -- 4. bootstrap --------------------------------------------------------------------------------------------
def test_without_policies_change_control_is_off(repo: WorkRepo, stack: Stack) -> None:
    """A repo without policies/*.cedar applies anyone's commit; admission says control is off and why."""
    host(stack, teams_toml())
    rev = commit(repo, BASE, author=BOB)
    report = stack.pipeline.plan(rev)
    assert report.admission is not None and report.admission.control == "off"
    assert {(d.allowed, d.reason) for d in report.admission.decisions} == {
        (True, "change control is off: no policies")}
    assert len(report.admission.decisions) == 2
    assert stack.run(rev).status == "succeeded"
    assert (stack.root / "etc/motd").read_text() == "v1\n"


def test_the_first_policies_are_a_bootstrap_and_enforced_from_then_on(repo: WorkRepo, stack: Stack) -> None:
    """The commit adding the first policies is allowed as a bootstrap (by anyone: nothing was in force) and its
    resource changes are judged by them; the next commits are judged by those policies."""
    host(stack, teams_toml())
    assert stack.run(commit(repo, BASE, author=BOB)).status == "succeeded"
    first = commit(repo, {"policies/base.cedar": POLICY, **motd("v2")}, author=ALICE, message="policies")
    report = stack.pipeline.plan(first)
    assert report.admission is not None and report.admission.control == "on"
    reasons = {d.change.resource.uid: (d.allowed, d.reason) for d in report.admission.decisions}
    assert reasons == {"policy:policies/base.cedar": (True, "bootstrap: no policies in force at the base revision"),
                       "infra:motd": (True, "allowed by permit policy admins (policies/base.cedar:3)")}
    assert stack.run(first).status == "succeeded"
    was = before(stack)
    result = stack.run(commit(repo, motd("bob's"), author=BOB))
    assert_rejected(stack, result, was)
    assert problems(result) == [("infra/base.ncl", 3, "no permit policy allows bob@example.com to change infra:motd")]
    # alice's commit on top still carries bob's change: judged as bob's too, so rejected ...
    on_top = stack.run(commit(repo, motd("v3"), author=ALICE))
    assert on_top.status == "rejected" and "bob@example.com" in on_top.problems[0].message
    # ... until the branch is rewritten without it.
    git(repo.path, "reset", "-q", "--hard", first)
    assert stack.run(commit(repo, motd("v3"), author=ALICE)).status == "succeeded"
    assert (stack.root / "etc/motd").read_text() == "v3\n"


# -- the CLI -------------------------------------------------------------------------------------------------
@pytest.fixture
def spine_only(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Only the infra reconciler is registered; logging is reset after each command (it binds the runner's
    stderr)."""
    for name in [n for n in registry.REGISTRY if n != "infra"]:
        monkeypatch.delitem(registry.REGISTRY, name)
    yield
    structlog.reset_defaults()


def stratum(*argv: str | Path) -> Result:
    """Run `stratum` in-process."""
    return CliRunner().invoke(cli, [str(a) for a in argv], catch_exceptions=False)


@pytest.mark.usefixtures("spine_only")
class TestValidate:
    SYNTAX = ("permit(principal, action, resource);\n"
              "\n"
              "forbid(principal, action, resource)\n"
              "  when { resource.kind == };\n")
    SCHEMA = ('@id("owners")\n'
              "permit(principal, action, resource)\n"
              '  when { resource.owner == "bob" };\n')

    @pytest.mark.parametrize(("text", "where", "words"), [
        (SYNTAX, "policies/x.cedar:4:28: ", "Cedar syntax error: unexpected token `}`"),
        (SCHEMA, "policies/x.cedar:3:19: ", "policy owners does not fit Stratum's schema"),
    ])
    def test_validate_locates_policy_errors_in_the_staged_tree_and_a_revision(
            self, tmp_path: Path, repo: WorkRepo, text: str, where: str, words: str) -> None:
        """`stratum validate` reports a Cedar syntax error or a schema violation as file:line:col on stderr and
        exits 1, for the staged tree and for a committed revision (`--rev`)."""
        good = commit(repo, {**BASE, "policies/base.cedar": POLICY})
        repo.write({"policies/x.cedar": text})
        run_tool(["git", "add", "policies/x.cedar"], repo.path)
        args = ("validate", "--repo", repo.path, "--data-dir", tmp_path / "data")
        staged = stratum(*args)
        assert staged.exit_code == 1, staged.output
        assert staged.stdout.strip() == "1 problem(s)"
        [line] = staged.stderr.splitlines()[:1]
        assert line.startswith(where + words), staged.stderr
        bad = commit(repo, {})
        run_tool(["git", "reset", "-q", "--hard", good], repo.path)
        assert stratum(*args).exit_code == 0
        committed = stratum(*args, "--rev", bad)
        assert committed.exit_code == 1
        assert committed.stderr.startswith(where + words), committed.stderr


@needs_ssh
@pytest.mark.usefixtures("spine_only")
class TestPlan:
    @pytest.fixture
    def pr(self, tmp_path: Path, repo: WorkRepo, ssh_keys: SshKeys) -> tuple[list[str | Path], str]:
        """A base with POLICY and a host config (alice's key trusted, ops = [carol]); the common arguments."""
        config = tmp_path / "stratumd.toml"
        config.write_text(signing_toml(ssh_keys, require=False) + teams_toml("carol@example.com"))
        base = commit(repo, {**BASE, "policies/base.cedar": POLICY}, key=ssh_keys.alice)
        args: list[str | Path] = ["--repo", repo.path, "--data-dir", tmp_path / "data", "--root", tmp_path / "root",
                                  "--config", config, "--base", base]
        return args, base

    def test_a_denied_head_shows_change_control_and_exits_1(
            self, tmp_path: Path, repo: WorkRepo, ssh_keys: SshKeys, pr: tuple[list[str | Path], str]) -> None:
        """The markdown plan of a head that would be rejected has a Change control section with the principal,
        the signature line and the denial naming the policy; the exit code is 1; JSON carries `admission`."""
        args, base = pr
        head = commit(repo, motd("v1", prod_db()), key=ssh_keys.alice)
        md = stratum("plan", *args, "--head", head, "--format", "markdown")
        assert md.exit_code == 1, md.output
        out = md.stdout
        title = f"### Stratum plan for `{head[:12]}` against `{base[:12]}`"
        assert out.startswith(f"<!-- stratum-plan part 1/1 -->\n{title}")
        assert "**Rejected**: 1 problem(s)" in out
        assert "- `infra/base.ncl:5: denied by forbid policy prod-is-ops-only (policies/base.cedar:7)" in out
        section = out[out.index("#### Change control"):]
        assert f"- principal: `{ALICE}`" in section
        assert re.search(r"^- signature: good ssh signature by alice@example\.com \(SHA256:[^)]+\)$", section, re.M)
        assert "- policies: in force; 0 change(s) allowed, 1 denied" in section
        assert ("| ❌ | create `infra:db` | denied by forbid policy prod-is-ops-only (policies/base.cedar:7) |"
                in section)
        data = json.loads(stratum("plan", *args, "--head", head, "--format", "json").stdout)
        adm = data["admission"]
        assert (adm["principal"], adm["signed"], adm["control"]) == (ALICE, True, "on")
        assert adm["signature"]["valid"] is True and adm["signature"]["method"] == "ssh"
        [decision] = adm["decisions"]
        assert (decision["resource"], decision["allowed"], decision["policies"]) == (
            "infra:db", False, ["prod-is-ops-only"])
        assert (decision["source"], decision["line"]) == ("infra/base.ncl", 5)
        assert data["problems"] == adm["problems"] and len(data["problems"]) == 1
        assert not (tmp_path / "root").exists() or list((tmp_path / "root").iterdir()) == []

    def test_the_exit_code_follows_the_decisions(self, repo: WorkRepo, pr: tuple[list[str | Path], str]) -> None:
        """bob's unsigned head (signatures are not required) shows his principal, `unsigned` and the denial of his
        change, and exits 1; alice's unsigned head shows her change allowed by `admins`, and exits 0."""
        args, _ = pr
        bobs = commit(repo, motd("bob's"), author=BOB)
        md = stratum("plan", *args, "--head", bobs, "--format", "markdown")
        assert md.exit_code == 1
        assert f"- principal: `{BOB}`" in md.stdout
        assert "- signature: unsigned: the commit is not signed" in md.stdout
        assert "| ❌ | change `infra:motd` | no permit policy allows bob@example.com to change infra:motd |" \
            in md.stdout
        run_tool(["git", "reset", "-q", "--hard", "HEAD~1"], repo.path)
        alices = commit(repo, motd("alice's"))
        ok = stratum("plan", *args, "--head", alices, "--format", "markdown")
        assert ok.exit_code == 0, ok.output
        assert "| ~ | update file etc/motd" in ok.stdout
        assert "- policies: in force; 1 change(s) allowed, 0 denied" in ok.stdout
        assert "| ✅ | change `infra:motd` | allowed by permit policy admins (policies/base.cedar:3) |" in ok.stdout


# -- 7. host settings ----------------------------------------------------------------------------------------
@pytest.mark.usefixtures("spine_only")
@pytest.mark.parametrize("verb", [["plan"], ["plan", "--base", "HEAD", "--head", "HEAD"], ["apply"]])
def test_requiring_signatures_without_trust_refuses_to_start(tmp_path: Path, repo: WorkRepo, verb: list[str],
                                                             ) -> None:
    """`require_signed_commits = true` with no allowed_signers or gpg_keyring stops plan and apply before
    anything is opened or applied, with an error naming the settings file and what to set."""
    commit(repo, BASE)
    config = tmp_path / "host" / "stratumd.toml"
    config.parent.mkdir()
    config.write_text("[signing]\nrequire_signed_commits = true\n")
    result = stratum(*verb, "--repo", repo.path, "--data-dir", tmp_path / "data", "--root", tmp_path / "root",
                     "--config", config)
    assert result.exit_code == 1
    assert result.stderr.startswith(
        f"error: {config}: [signing] require_signed_commits is on but no signer is trusted\n"
        "  hint: set allowed_signers"), result.stderr
    assert not (tmp_path / "root").exists()
    assert not (tmp_path / "data" / "index.duckdb").exists()


def test_the_daemon_refuses_to_start_without_trusted_signers(tmp_path: Path, repo: WorkRepo) -> None:
    """`stratumd` with `require_signed_commits = true` and nothing trusted exits 1 at once, naming the file."""
    commit(repo, BASE)
    config = tmp_path / "stratumd.toml"
    config.write_text("[signing]\nrequire_signed_commits = true\n")
    proc = subprocess.run(
        [sys.executable, "-c", "from daemon.cli.main import daemon_main; daemon_main()", "--repo", str(repo.path),
         "--data-dir", str(tmp_path / "data"), "--root", str(tmp_path / "root"), "--config", str(config),
         "--log-format", "json"],
        env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])}, capture_output=True, text=True,
        timeout=120, check=False)
    assert proc.returncode == 1, proc.stderr
    assert f"error: {config}: [signing] require_signed_commits is on but no signer is trusted" in proc.stderr
    assert not (tmp_path / "root").exists()


# -- the `stratum init` template -----------------------------------------------------------------------------
_EXAMPLE = re.compile(r"^// ((?:@id|permit|forbid)\(.*|\s+(?:when|unless) .*)$")


def test_the_template_policy_allows_all_and_its_examples_are_valid() -> None:
    """The template's policies/base.cedar is one permit-all policy `allow-all`; its commented examples, once
    uncommented, load against Stratum's schema."""
    text = (template_dir() / "policies" / "base.cedar").read_text()
    policies, found = parse_policies({"policies/base.cedar": text})
    assert found == [] and policies.ids == ("allow-all",)
    uncommented = "\n".join(m.group(1) if (m := _EXAMPLE.match(line)) else line for line in text.splitlines())
    policies, found = parse_policies({"policies/base.cedar": uncommented})
    assert found == []
    assert set(policies.ids) == {"allow-all", "prod-is-ops-only", "signed-only"}
