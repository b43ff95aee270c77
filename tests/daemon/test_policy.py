"""Cedar change control: who may create, change or delete what, read from policies/*.cedar in a real commit;
problems point at file:line:col; forbids win; no policies means off; scale to thousands of changes."""

from __future__ import annotations

import time
from pathlib import Path

import cedarpy
import pytest

from daemon.control.policy import (
    MAX_POLICY_BYTES,
    MAX_POLICY_FILES,
    Change,
    ChangeContext,
    Policies,
    PolicyResource,
    authorize,
    diff_resources,
    load_policies,
    policy_file_changes,
    schema,
)
from daemon.git.source import GitSource, Snapshot
from daemon.package_data import nickel_dir
from reconcilers.base import Problem
from tests.fixtures import WorkRepo

ALICE = "alice@example.com"
BOB = "bob@example.com"
CTX = ChangeContext(branch="main", signed=True, changed_paths=("infra/base.ncl",))


def snapshot(tmp_path: Path, files: dict[str, str | bytes | None], *more: dict[str, str | bytes | None]) -> Snapshot:
    """A snapshot of the last of one or more commits of `files` in a fresh work repo."""
    repo = WorkRepo(tmp_path / "repo")
    for commit in (files, *more):
        repo.commit(commit)
    return GitSource(str(repo.path), "main", tmp_path / "data").snapshot("main")


def load(tmp_path: Path, files: dict[str, str | bytes | None]) -> tuple[Policies, list[Problem]]:
    """The policies of a one-commit repo holding `files`."""
    return load_policies(snapshot(tmp_path, files))


def loaded(tmp_path: Path, files: dict[str, str | bytes | None]) -> Policies:
    """Policies that must load without problems."""
    policies, problems = load(tmp_path, files)
    assert problems == []
    return policies


def res(rid: str = "motd", labels: dict[str, str] | None = None, *, digest: str = "d1", kind: str = "file",
        path: str = "etc/motd", reconciler: str = "infra", source: str = "infra/base.ncl") -> PolicyResource:
    """One infra resource as change control sees it."""
    return PolicyResource(reconciler, rid, kind, path, "local", labels or {}, digest, source, 3)


def one(policies: Policies, change: Change, principal: str = ALICE, context: ChangeContext = CTX,
        teams: dict[str, list[str]] | None = None) -> tuple[bool, str, tuple[str, ...]]:
    """The single decision on one change, as (allowed, reason, policies)."""
    [d] = authorize(policies, principal, [change], context, teams or {})
    return d.allowed, d.reason, d.policies


# -- who may ------------------------------------------------------------------------------------------------
def test_permit_by_principal(tmp_path: Path) -> None:
    """A permit naming a user allows that user and no one else."""
    policies = loaded(tmp_path, {"policies/base.cedar":
                                 'permit(principal == Stratum::User::"alice@example.com", action, resource);\n'})
    assert one(policies, Change("change", res())) == (
        True, "allowed by permit policy policies/base.cedar:1", ("policies/base.cedar:1",))
    assert one(policies, Change("change", res()), principal=BOB)[0] is False


def test_permit_via_team_membership(tmp_path: Path) -> None:
    """A permit for a team allows its members (host settings) and denies everyone else."""
    policies = loaded(tmp_path, {"policies/teams.cedar":
                                 '@id("ops-may-create")\n'
                                 'permit(principal in Stratum::Team::"ops", action == Stratum::Action::"create",'
                                 ' resource);\n'})
    teams = {"ops": [ALICE], "dev": [BOB]}
    allowed, reason, ids = one(policies, Change("create", res()), teams=teams)
    assert allowed and ids == ("ops-may-create",)
    assert reason == "allowed by permit policy ops-may-create (policies/teams.cedar:2)"
    assert one(policies, Change("create", res()), principal=BOB, teams=teams)[0] is False
    assert one(policies, Change("delete", res()), teams=teams)[0] is False


def test_forbid_on_a_prod_tag_wins_over_permit(tmp_path: Path) -> None:
    """A forbid matching the resource's `env=prod` label (a Cedar tag) denies what a permit allows."""
    policies = loaded(tmp_path, {"policies/base.cedar":
                                 "permit(principal, action, resource);\n"
                                 "\n"
                                 '@id("prod-freeze")\n'
                                 "forbid(principal, action, resource)\n"
                                 '  when { resource.hasTag("env") && resource.getTag("env") == "prod" };\n'})
    assert one(policies, Change("change", res(labels={"env": "prod"}))) == (
        False, "denied by forbid policy prod-freeze (policies/base.cedar:4)", ("prod-freeze",))
    assert one(policies, Change("change", res(labels={"env": "dev"})))[0] is True
    assert one(policies, Change("change", res()))[0] is True


def test_no_matching_permit_is_denied_with_a_sentence(tmp_path: Path) -> None:
    """Cedar denies by default, and the reason says who may not do what to which resource."""
    policies = loaded(tmp_path, {"policies/base.cedar":
                                 'permit(principal, action, resource) when { resource.kind == "directory" };\n'})
    assert one(policies, Change("delete", res())) == (
        False, "no permit policy allows alice@example.com to delete infra:motd", ())


def test_denials_name_the_id_or_the_file_and_line(tmp_path: Path) -> None:
    """A forbid without @id is named by its file:line (of `forbid`), one with @id by the id and location."""
    policies = loaded(tmp_path, {
        "policies/a.cedar": "permit(principal, action, resource);\n",
        "policies/deep/b.cedar": "// no deletes\n\n  forbid(principal, action == Stratum::Action::\"delete\", "
                                 "resource);\n",
        "policies/c.cedar": '@id("no-units")\nforbid(principal, action, resource) when { resource.kind == '
                            '"systemd_unit" };\n'})
    assert policies.files == ("policies/a.cedar", "policies/c.cedar", "policies/deep/b.cedar")
    assert one(policies, Change("delete", res())) == (
        False, "denied by forbid policy policies/deep/b.cedar:3", ("policies/deep/b.cedar:3",))
    allowed, reason, ids = one(policies, Change("create", res(kind="systemd_unit")))
    assert (allowed, ids) == (False, ("no-units",))
    assert reason == "denied by forbid policy no-units (policies/c.cedar:2)"


def test_without_policies_change_control_is_off(tmp_path: Path) -> None:
    """No policies/*.cedar: every change is allowed and the decision says why; policy files are bootstrap."""
    policies = loaded(tmp_path, {"infra/base.ncl": "{}\n", "policies/README.md": "not a policy\n"})
    assert not policies and policies.files == ()
    assert one(policies, Change("delete", res())) == (
        True, "change control is off: the repo has no policies/*.cedar", ())
    [add] = policy_file_changes([("policies/base.cedar", "added")])
    assert one(policies, add) == (True, "bootstrap: no policies in force, so policy files may be added", ())


def test_an_empty_policy_file_turns_change_control_on(tmp_path: Path) -> None:
    """A policy file without policies is change control with nothing permitted (Cedar denies by default)."""
    policies = loaded(tmp_path, {"policies/base.cedar": "// nothing yet\n"})
    assert policies and len(policies) == 0
    assert one(policies, Change("create", res()))[0] is False


# -- context ------------------------------------------------------------------------------------------------
def test_policies_can_require_a_signed_commit(tmp_path: Path) -> None:
    """`when { context.signed }` allows signed commits only."""
    policies = loaded(tmp_path, {"policies/base.cedar": "permit(principal, action, resource) when "
                                                        "{ context.signed };\n"})
    assert one(policies, Change("change", res()))[0] is True
    unsigned = ChangeContext(branch="main", signed=False, changed_paths=CTX.changed_paths)
    assert one(policies, Change("change", res()), context=unsigned)[0] is False


def test_policies_can_read_the_changed_paths_and_branch(tmp_path: Path) -> None:
    """`context.changed_paths` holds every path of the revision and `context.branch` its branch."""
    policies = loaded(tmp_path, {"policies/base.cedar":
                                 "permit(principal, action, resource);\n"
                                 '@id("hands-off-vault")\n'
                                 "forbid(principal, action, resource)\n"
                                 '  when { context.changed_paths.contains("vault/rules.toml") && '
                                 'context.branch == "main" };\n'})
    touching = ChangeContext("main", True, ("infra/base.ncl", "vault/rules.toml"))
    assert one(policies, Change("change", res()), context=touching)[:2] == (
        False, "denied by forbid policy hands-off-vault (policies/base.cedar:3)")
    assert one(policies, Change("change", res()))[0] is True
    assert one(policies, Change("change", res()), context=ChangeContext("dev", True, touching.changed_paths))[0]


# -- problems -----------------------------------------------------------------------------------------------
def test_a_syntax_error_is_located_at_file_line_col(tmp_path: Path) -> None:
    """A Cedar syntax error names its file, line and column; the other files still parse; nothing is judged
    with the incomplete set."""
    policies, problems = load(tmp_path, {
        "policies/good.cedar": "permit(principal, action, resource);\n",
        "policies/bad.cedar": "permit(principal, action, resource);\n"
                              "\n"
                              "forbid(principal, action, resource)\n"
                              '  when { resource.kind == };\n'})
    [p] = problems
    assert (p.path, p.line, p.col, p.reconciler) == ("policies/bad.cedar", 4, 28, "policy")
    assert "unexpected token `}`" in p.message
    assert str(p).startswith("policies/bad.cedar:4:28: Cedar syntax error")
    assert policies and not policies.complete and policies.ids == ("policies/good.cedar:1",)
    allowed, reason, _ = one(policies, Change("create", res()))
    assert not allowed and "did not all load" in reason


@pytest.mark.parametrize(("text", "line", "col", "words"), [
    ("permit(principal, action, resource)\n", 1, 36, "unexpected end of input"),
    ("permit(principal, action, resource) when { true }\npermit(principal, action, resource);\n", 2, 7,
     "unexpected token"),
    ("// a comment\npermit(principal, action, resource) when { principal.isNice() };\n", 2, 54,
     "`isNice` is not a valid method"),
    ('permit(principal, action, resource) when {\n  resource.path like "etc/*\n};\n', 2, 22, "invalid token"),
    ("@id(\"a\")\n@id(\"b\")\npermit(principal, action, resource);\n", 2, 1, "duplicate annotation"),
])
def test_syntax_errors_of_each_kind_are_located(tmp_path: Path, text: str, line: int, col: int, words: str) -> None:
    """Parser errors (token, end of input, lexer) and AST errors (methods, annotations) each get a position."""
    _, [p] = load(tmp_path, {"policies/x.cedar": text})
    assert (p.line, p.col) == (line, col), str(p)
    assert words in p.message


def test_a_schema_violation_names_the_attribute_and_policy(tmp_path: Path) -> None:
    """An attribute the schema does not know (`resource.owner`) is a problem naming it, its policy and position,
    once per policy that uses it."""
    policies, problems = load(tmp_path, {"policies/base.cedar":
                                         "permit(principal, action, resource);\n"
                                         '@id("owners")\n'
                                         "permit(principal, action, resource)\n"
                                         '  when { resource.owner == "alice" };\n'
                                         'forbid(principal, action, resource) when { resource.owner == "bob" };\n'})
    assert [(p.path, p.line, p.col) for p in problems] == [("policies/base.cedar", 4, 19),
                                                           ("policies/base.cedar", 5, 53)]
    assert "policy owners" in problems[0].message and "attribute `owner`" in problems[0].message
    assert "policy policies/base.cedar:5 " in problems[1].message
    assert "resource.hasTag" in problems[0].hint
    assert not policies.complete


def test_an_unguarded_tag_read_is_a_schema_problem(tmp_path: Path) -> None:
    """`resource.getTag` without `resource.hasTag` first cannot be proven safe: a problem, not a runtime error."""
    _, [p] = load(tmp_path, {"policies/base.cedar": 'forbid(principal, action, resource) when '
                                                    '{ resource.getTag("env") == "prod" };\n'})
    assert "tag" in p.message and (p.line, p.col) == (1, 60)


def test_a_duplicate_id_across_files_is_a_problem(tmp_path: Path) -> None:
    """An @id used in two files is a problem at the second one, naming the first."""
    policies, [p] = load(tmp_path, {"policies/a.cedar": '@id("freeze")\nforbid(principal, action, resource);\n',
                                    "policies/b.cedar": '\n@id("freeze")\npermit(principal, action, resource);\n'})
    assert (p.path, p.line) == ("policies/b.cedar", 3)
    assert "duplicate policy id 'freeze'" in p.message and "policies/a.cedar:2" in p.message
    assert policies.ids == ("freeze",) and not policies.complete


def test_templates_are_refused(tmp_path: Path) -> None:
    """A template (`?principal`) authorizes nothing until linked, which change control never does: a problem."""
    _, [p] = load(tmp_path, {"policies/a.cedar": "permit(principal == ?principal, action, resource);\n"})
    assert "templates" in p.message and (p.line, p.col) == (1, 1)


def test_oversized_and_non_text_policy_files_are_problems(tmp_path: Path) -> None:
    """A file over the size limit or not UTF-8 is a problem (never a crash), and the set is incomplete."""
    policies, problems = load(tmp_path, {"policies/big.cedar": "//" + "x" * MAX_POLICY_BYTES + "\n",
                                         "policies/bin.cedar": b"permit(\xff);\n",
                                         "policies/ok.cedar": "permit(principal, action, resource);\n"})
    assert [(p.path, "limit" in p.message) for p in problems] == [("policies/big.cedar", True),
                                                                   ("policies/bin.cedar", False)]
    assert "UTF-8" in problems[1].message
    assert not policies.complete and policies.ids == ("policies/ok.cedar:1",)


def test_too_many_policy_files_are_refused(tmp_path: Path) -> None:
    """More than MAX_POLICY_FILES files is one problem, and nothing is allowed under the refused set."""
    files: dict[str, str | bytes | None] = {f"policies/p{i}.cedar": "permit(principal, action, resource);\n"
                                            for i in range(MAX_POLICY_FILES + 1)}
    policies, [p] = load(tmp_path, files)
    assert p.path == "policies" and str(MAX_POLICY_FILES) in p.message
    assert one(policies, Change("create", res()))[0] is False


def test_an_evaluation_error_denies_with_the_error(tmp_path: Path) -> None:
    """A policy that fails at run time (integer overflow) denies, even though Cedar would skip it and allow."""
    policies = loaded(tmp_path, {"policies/base.cedar":
                                 "permit(principal, action, resource);\n"
                                 '@id("overflow")\n'
                                 "forbid(principal, action, resource) when "
                                 "{ 9223372036854775807 + (if context.signed then 1 else 0) > 0 };\n"})
    allowed, reason, ids = one(policies, Change("create", res()))
    assert (allowed, ids) == (False, ("overflow",))
    assert reason.startswith("denied because overflow (policies/base.cedar:3) failed to evaluate: integer overflow")


def test_input_cedar_refuses_denies_instead_of_crashing(tmp_path: Path) -> None:
    """A value Cedar cannot take (a lone surrogate in a label) denies every change with Cedar's reason."""
    policies = loaded(tmp_path, {"policies/base.cedar": "permit(principal, action, resource);\n"})
    allowed, reason, _ = one(policies, Change("create", res(labels={"env": "\ud800"})))
    assert not allowed and reason.startswith("denied: Cedar could not evaluate the request")


def test_the_shipped_schema_parses() -> None:
    """nickel/stratum.cedarschema is valid Cedar schema and declares the three actions."""
    text = (nickel_dir() / "stratum.cedarschema").read_text()
    rendered = str(cedarpy.Schema.from_str(text))
    assert all(f'action "{a}"' in rendered for a in ("create", "change", "delete"))
    assert "tags String" in rendered and schema() is schema()


# -- what changes -------------------------------------------------------------------------------------------
def test_diff_resources_finds_creates_changes_and_deletes() -> None:
    """By uid: new ones are created, a new digest or label is a change (with the old state), gone ones are
    deleted (with their old state); a declaration moving lines is no change."""
    old = [res("a"), res("b"), res("c"), res("d"), res("e", reconciler="vault")]
    moved = PolicyResource("infra", "d", "file", "etc/motd", "local", {}, "d1", "infra/base.ncl", 40)
    new = [res("a"), res("b", digest="d2"), res("c", {"env": "prod"}), moved, res("e"), res("f")]
    changes = diff_resources(old, new)
    assert [(c.action, c.resource.uid) for c in changes] == [
        ("change", "infra:b"), ("change", "infra:c"), ("create", "infra:e"), ("create", "infra:f"),
        ("delete", "vault:e")]
    assert changes[0].before == res("b") and changes[-1].resource == res("e", reconciler="vault")


def test_dropping_a_prod_label_does_not_dodge_a_forbid(tmp_path: Path) -> None:
    """A change is judged on the resource before and after: removing `env=prod` while changing it is denied."""
    policies = loaded(tmp_path, {"policies/base.cedar":
                                 "permit(principal, action, resource);\n"
                                 "forbid(principal, action, resource)\n"
                                 '  when { resource.hasTag("env") && resource.getTag("env") == "prod" };\n'})
    [change] = diff_resources([res(labels={"env": "prod"})], [res(labels={"env": "dev"}, digest="d2")])
    assert one(policies, change)[:2] == (
        False, "denied by forbid policy policies/base.cedar:2, judged on the resource as it was before the change")
    [plain] = diff_resources([res(labels={"env": "dev"})], [res(labels={"env": "dev"}, digest="d2")])
    assert one(policies, plain)[0] is True


def test_policy_file_changes_from_git(tmp_path: Path) -> None:
    """GitSource.changes between two commits yields policy-file changes (and (path, status) pairs work too)."""
    repo = WorkRepo(tmp_path / "repo")
    first = repo.commit({"policies/a.cedar": "permit(principal, action, resource);\n",
                         "policies/b.cedar": "permit(principal, action, resource);\n", "infra/x.ncl": "{}\n"})
    second = repo.commit({"policies/a.cedar": None, "policies/b.cedar": "// none\n",
                          "policies/sub/c.cedar": "permit(principal, action, resource);\n", "infra/x.ncl": "{ }\n"})
    changed = GitSource(str(repo.path), "main", tmp_path / "data").changes(first, second)
    got = sorted((c.action, c.resource.uid, c.resource.kind, c.resource.source, bool(c.resource.digest))
                 for c in policy_file_changes(changed))
    assert got == [("change", "policy:policies/b.cedar", "policy", "policies/b.cedar", True),
                   ("create", "policy:policies/sub/c.cedar", "policy", "policies/sub/c.cedar", True),
                   ("delete", "policy:policies/a.cedar", "policy", "policies/a.cedar", True)]
    pairs = policy_file_changes([("policies/x.cedar", "renamed"), ("policiesx/y", "added"), ("a/b", "deleted")])
    assert [(c.action, c.resource.uid) for c in pairs] == [("create", "policy:policies/x.cedar")]


def test_policy_changes_are_judged_by_the_policies_given(tmp_path: Path) -> None:
    """Changes to policies/ are authorized like any resource (reconciler "policy"), by the set the caller
    passes: the last good revision's, so a commit cannot approve itself."""
    last_good = loaded(tmp_path / "old", {"policies/base.cedar":
                                          'permit(principal in Stratum::Team::"admins", action, resource)\n'
                                          '  when { resource.reconciler == "policy" };\n'})
    [edit] = policy_file_changes([("policies/base.cedar", "modified")])
    teams = {"admins": [ALICE]}
    assert one(last_good, edit, teams=teams)[0] is True
    assert one(last_good, edit, principal=BOB, teams=teams) == (
        False, "no permit policy allows bob@example.com to change policy:policies/base.cedar", ())
    decision = authorize(last_good, ALICE, [edit], CTX, teams)[0].as_dict()
    assert decision["resource"] == "policy:policies/base.cedar" and decision["allowed"] is True


# -- scale --------------------------------------------------------------------------------------------------
def test_two_hundred_policies_and_five_thousand_changes(tmp_path: Path) -> None:
    """200 policies over 10 files judge 5,000 changes in one call; every decision is the expected one."""
    files: dict[str, str | bytes | None] = {}
    for f in range(10):
        text = ""
        for n in range(20):
            i = f * 20 + n
            if n == 0:
                text += (f'@id("freeze-{f}")\nforbid(principal, action == Stratum::Action::"delete", resource)\n'
                         f'  when {{ resource.hasTag("tier") && resource.getTag("tier") == "t{f}" }};\n')
            else:
                text += (f'permit(principal in Stratum::Team::"team{i % 20}", action, resource)\n'
                         f'  when {{ resource.kind == "file" && resource.path like "srv/{i}/*" }};\n')
        files[f"policies/p{f}.cedar"] = text
    start = time.perf_counter()
    policies = loaded(tmp_path, files)
    loaded_in = time.perf_counter() - start
    assert len(policies) == 200
    teams = {f"team{t}": [ALICE] if t in (1, 2) else [BOB] for t in range(20)}
    changes = [Change("delete" if k % 2 else "change",
                      res(f"r{k}", {"tier": f"t{k % 20}"}, path=f"srv/{k % 200}/file")) for k in range(5000)]
    start = time.perf_counter()
    decisions = authorize(policies, ALICE, changes, CTX, teams)
    took = time.perf_counter() - start
    print(f"\n200 policies loaded in {loaded_in * 1000:.0f} ms; 5,000 changes authorized in {took * 1000:.0f} ms "
          f"({took / 5000 * 1e6:.0f} µs per decision)")
    for k, d in enumerate(decisions):
        i = k % 200
        permitted = i % 20 != 0 and i % 20 in (1, 2)
        frozen = k % 2 == 1 and k % 20 < 10
        assert d.allowed == (permitted and not frozen), (k, d.reason)
