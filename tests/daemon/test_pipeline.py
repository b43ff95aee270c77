"""One run end to end against a real repo, index, Nickel worker and host root: apply, prune, drift, rollback,
rejected revisions (nothing half-applied, the last good revision in force), notes, interrupted runs."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from daemon.run.plan import Executor
from reconcilers.base import Action, ApplyContext, InventoryItem, Outcome, Problem, Reconciler
from tests.fixtures import Raw, Stack, WorkRepo, infra, resource, tree_of

BASE = {
    "stratum.ncl": '{ name = "test-ops" }\n',
    "infra/base.ncl": infra(
        resource("motd", "file", path="etc/motd", content="v1\n"),
        resource("srv", "directory", path="srv", mode="0750"),
        resource("conf", "file", path="srv/app.conf", content="port = 1\n", mode="0600", depends_on=["srv"]),
    ),
}


@pytest.fixture
def good(repo: WorkRepo, stack: Stack) -> str:
    """BASE committed and applied: the last good revision."""
    rev = repo.commit(BASE, "base")
    result = stack.run(rev)
    assert result.status == "succeeded", result
    return rev


def _log(tmp: Path) -> Path:
    return tmp / "commands.log"


# -- apply ---------------------------------------------------------------------------------------------------
def test_every_local_kind_is_applied(repo: WorkRepo, stack: Stack) -> None:
    """Files (content, template), directories, links, guarded commands and unit files land under the root."""
    rev = repo.commit(
        {
            "templates/app.toml.j2": 'name = "{{ name }}"\nport = {{ port }}\n',
            "infra/all.ncl": 'let app = { name = "hello", port = 8080 } in\n'
            + infra(
                resource("dir", "directory", path="srv/hello", mode="0700"),
                resource(
                    "cfg",
                    "file",
                    path="srv/hello/app.toml",
                    template="templates/app.toml.j2",
                    vars=Raw("app"),
                    mode="0640",
                    depends_on=["dir"],
                ),
                resource("current", "symlink", path="srv/current", target="srv/hello"),
                resource(
                    "init",
                    "command",
                    run="echo ran >> srv/hello/init.log",
                    creates="srv/hello/init.log",
                    depends_on=["dir"],
                ),
                resource(
                    "unit", "systemd_unit", name="hello.service", content="[Service]\nExecStart=/bin/true\n"
                ),
            ),
        }
    )
    result = stack.run(rev)
    assert result.status == "succeeded", result
    assert sorted(a for a, _ in result.actions) == [
        "infra:cfg",
        "infra:current",
        "infra:dir",
        "infra:init",
        "infra:unit",
    ]
    root = stack.root
    assert (root / "srv/hello/app.toml").read_text() == 'name = "hello"\nport = 8080\n'
    assert tree_of(root)["srv/hello/app.toml"][1] == "0640"
    assert tree_of(root)["srv/hello"][:2] == ("dir", "0700")
    assert tree_of(root)["srv/current"] == ("link", "", "hello")
    assert (root / "srv/hello/init.log").read_text() == "ran\n"
    assert (root / "etc/systemd/system/hello.service").read_text() == "[Service]\nExecStart=/bin/true\n"
    assert stack.inventory_ids() == {"dir", "cfg", "current", "init", "unit"}
    assert stack.state("last_good_revision") == rev
    assert stack.state("last_applied_revision") == rev
    assert stack.state("last_applied_revision:infra") == rev
    again = stack.run(rev)
    assert again.status == "succeeded" and again.actions == ()
    assert (root / "srv/hello/init.log").read_text() == "ran\n"


def test_a_successful_run_is_recorded_with_a_git_note(good: str, stack: Stack) -> None:
    """The run row is finalized and the commit carries a `stratum: succeeded` note naming the run."""
    [run] = stack.index.query_dicts("SELECT id, status, trigger, finished, duration_ms FROM runs")
    assert run["status"] == "succeeded" and run["trigger"] == "test" and run["finished"] is not None
    note = stack.source.note(good)
    assert note is not None
    assert note.startswith(f"stratum: succeeded\nrun: {run['id']}\n")
    assert "actions: 3" in note


def test_changed_files_are_indexed_against_the_last_applied_revision(
    repo: WorkRepo, good: str, stack: Stack
) -> None:
    """The index records which files a revision added, modified and deleted."""
    rev = repo.commit(
        {
            "infra/base.ncl": BASE["infra/base.ncl"].replace("v1", "v2"),
            "stratum.ncl": None,
            "infra/more.ncl": infra(),
        }
    )
    assert stack.run(rev).status == "succeeded"
    rows = stack.index.query("SELECT path, change FROM changed_files WHERE revision = ? ORDER BY path", [rev])
    assert rows == [("infra/base.ncl", "modified"), ("infra/more.ncl", "added"), ("stratum.ncl", "deleted")]


# -- prune ---------------------------------------------------------------------------------------------------
def test_a_resource_removed_from_the_repo_is_removed_from_the_host(
    repo: WorkRepo, good: str, stack: Stack
) -> None:
    """Dropping `conf` deletes srv/app.conf and forgets it; the rest stays."""
    rev = repo.commit(
        {
            "infra/base.ncl": infra(
                resource("motd", "file", path="etc/motd", content="v1\n"),
                resource("srv", "directory", path="srv", mode="0750"),
            )
        }
    )
    result = stack.run(rev)
    assert result.status == "succeeded"
    assert result.actions == (("infra:conf", "done"),)
    assert not (stack.root / "srv/app.conf").exists()
    assert (stack.root / "srv").is_dir() and (stack.root / "etc/motd").exists()
    assert stack.inventory_ids() == {"motd", "srv"}


def test_prune_false_keeps_the_file_when_the_resource_goes(repo: WorkRepo, stack: Stack) -> None:
    """A resource with `prune = false` leaves its file on the host when removed from the repo."""
    repo.commit(
        {
            "infra/a.ncl": infra(
                resource("keep", "file", path="keep.txt", content="k", prune=False),
                resource("drop", "file", path="drop.txt", content="d"),
            )
        }
    )
    assert stack.run().status == "succeeded"
    repo.commit({"infra/a.ncl": infra()})
    assert stack.run().status == "succeeded"
    assert (stack.root / "keep.txt").read_text() == "k"
    assert not (stack.root / "drop.txt").exists()
    assert stack.inventory_ids() == set()


def test_pruning_a_directory_with_its_files_removes_both(repo: WorkRepo, good: str, stack: Stack) -> None:
    """Removing the directory and its file together deletes the file first, then the now empty directory."""
    repo.commit({"infra/base.ncl": infra(resource("motd", "file", path="etc/motd", content="v1\n"))})
    result = stack.run()
    assert result.status == "succeeded", result
    assert [a for a, _ in result.actions] == ["infra:conf", "infra:srv"]
    assert not (stack.root / "srv").exists()


# -- drift ---------------------------------------------------------------------------------------------------
def test_drift_is_corrected_or_only_detected_per_resource(repo: WorkRepo, stack: Stack) -> None:
    """Host edits to a 'correct resource are reverted by the next run; 'detect ones are reported and kept."""
    rev = repo.commit(
        {
            "infra/a.ncl": infra(
                resource("fixed", "file", path="fixed.txt", content="repo\n", drift=Raw("'correct")),
                resource("watched", "file", path="watched.txt", content="repo\n", drift=Raw("'detect")),
            )
        }
    )
    assert stack.run(rev).status == "succeeded"
    (stack.root / "fixed.txt").write_text("edited on host\n")
    (stack.root / "watched.txt").write_text("edited on host\n")
    (stack.root / "watched.txt").chmod(0o600)
    report = stack.pipeline.plan(rev)
    assert [a.id for a in report.actions] == ["infra:fixed"]
    assert "content differs" in report.actions[0].summary
    drift = sorted(report.drift, key=lambda p: p.message)
    assert [(p.path, p.line) for p in drift] == [("infra/a.ncl", 3), ("infra/a.ncl", 4)]
    assert drift[0].message == "drift on file fixed (fixed.txt): content differs; policy correct"
    assert drift[1].message == "drift on file watched (watched.txt): content differs; policy detect"
    assert stack.run(rev).status == "succeeded"
    assert (stack.root / "fixed.txt").read_text() == "repo\n"
    assert (stack.root / "watched.txt").read_text() == "edited on host\n"


def test_a_deleted_file_is_drift_and_recreated(good: str, stack: Stack) -> None:
    """A managed file deleted on the host is recreated by the next run of the same revision."""
    (stack.root / "etc/motd").unlink()
    assert [p.message for p in stack.pipeline.plan(good).drift] == [
        "drift on file motd (etc/motd): missing; policy correct"
    ]
    assert stack.run(good).status == "succeeded"
    assert (stack.root / "etc/motd").read_text() == "v1\n"


# -- rollback ------------------------------------------------------------------------------------------------
def _failing_revision(tmp: Path) -> dict[str, str]:
    log = str(_log(tmp))
    return {
        "infra/base.ncl": BASE["infra/base.ncl"].replace("v1", "v2").replace("port = 1", "port = 2"),
        "infra/cmds.ncl": infra(
            resource("new", "file", path="srv/new.txt", content="new\n", depends_on=["srv"]),
            resource(
                "c1",
                "command",
                run="echo c1 >> $LOG",
                compensate="echo undo c1 >> $LOG",
                env={"LOG": log},
                depends_on=["new", "motd", "conf"],
            ),
            resource(
                "c2",
                "command",
                run="echo c2 >> $LOG",
                compensate="echo undo c2 >> $LOG",
                env={"LOG": log},
                depends_on=["c1"],
            ),
            resource(
                "c3",
                "command",
                run="echo c3 >> $LOG; echo broken >&2; exit 3",
                env={"LOG": log},
                depends_on=["c2"],
            ),
            resource("never", "file", path="never.txt", content="x", depends_on=["c3"]),
        ),
    }


def test_a_failed_apply_rolls_back_to_the_last_good_revision(
    tmp_path: Path, repo: WorkRepo, good: str, stack: Stack
) -> None:
    """Compensations run in reverse, changed files get their good content back, new files go: the host is
    byte for byte the last good revision's, and the run ends `rolled_back` naming the failed action."""
    before = tree_of(stack.root)
    rev = repo.commit(_failing_revision(tmp_path))
    result = stack.run(rev)
    assert result.status == "rolled_back", result
    assert "infra:c3 failed" in result.message and "command exited 3: broken" in result.message
    assert f"rolled back to {good[:12]}" in result.message
    assert _log(tmp_path).read_text() == "c1\nc2\nc3\nundo c2\nundo c1\n"
    assert tree_of(stack.root) == before
    assert stack.state("last_good_revision") == good
    assert stack.state("last_applied_revision") == good
    assert stack.state("last_attempted_revision") == rev
    assert stack.inventory_ids() == {"motd", "srv", "conf"}
    statuses = dict(
        stack.index.query("SELECT action_id, status FROM actions WHERE run_id = ?", [result.run_id])
    )
    assert statuses["infra:c3"] == "failed"
    assert statuses["infra:c2#compensate"] == statuses["infra:c1#compensate"] == "compensated"
    assert "infra:never" not in statuses
    assert (stack.source.note(rev) or "").startswith("stratum: rolled_back\n")
    fixed = repo.commit({"infra/cmds.ncl": None})
    assert stack.run(fixed).status == "succeeded"
    assert (stack.root / "etc/motd").read_text() == "v2\n"


def test_a_first_revision_that_fails_rolls_back_to_nothing(
    tmp_path: Path, repo: WorkRepo, stack: Stack
) -> None:
    """With no good revision yet, everything the failed run created is removed again."""
    rev = repo.commit(
        {
            "infra/a.ncl": infra(
                resource("d", "directory", path="d"),
                resource("f", "file", path="d/f.txt", content="x", depends_on=["d"]),
                resource("boom", "command", run="exit 1", depends_on=["f"]),
            )
        }
    )
    result = stack.run(rev)
    assert result.status == "rolled_back", result
    assert "rolled back to the empty state" in result.message
    assert tree_of(stack.root) == {}
    assert stack.inventory_ids() == set()
    assert stack.state("last_good_revision") is None


# -- rejected revisions --------------------------------------------------------------------------------------
def _outside_link(stack: Stack) -> None:
    outside = stack.tmp / "outside"
    outside.mkdir()
    (stack.root / "out").symlink_to(outside)


REJECTED: list[
    tuple[str, dict[str, str | bytes | None], Callable[[Stack], None] | None, list[tuple[str, int, str]]]
] = [
    (
        "nickel syntax error",
        {"infra/new.ncl": '{\n  resources = {\n    x = { kind = \'file path = "x" },\n  },\n}\n'},
        None,
        [("infra/new.ncl", 3, "unexpected token")],
    ),
    (
        "contract violation",
        {"infra/new.ncl": infra(resource("x", "file", path="x", content="x", mode="rwxr-xr-x"))},
        None,
        [("infra/new.ncl", 3, "a mode is an octal string")],
    ),
    (
        "unknown field",
        {"infra/new.ncl": infra(resource("x", "file", path="x", contnet="typo"))},
        None,
        [("infra/new.ncl", 3, "extra field `contnet`")],
    ),
    (
        "unknown kind",
        {"infra/new.ncl": infra(resource("x", "volcano", path="x"))},
        None,
        [("infra/new.ncl", 3, "unknown kind `volcano`")],
    ),
    (
        "duplicate ids across two files",
        {
            "infra/zz.ncl": infra(
                resource("y", "file", path="y", content="y"),
                resource("motd", "file", path="other-motd", content="x"),
            )
        },
        None,
        [("infra/zz.ncl", 4, "duplicate resource id 'motd': also declared in infra/base.ncl:3")],
    ),
    (
        "dependency cycle",
        {
            "infra/new.ncl": infra(
                resource("x", "file", path="x", content="x", depends_on=["y"]),
                resource("y", "file", path="y", content="y", depends_on=["z"]),
                resource("z", "file", path="z", content="z", depends_on=["x"]),
            )
        },
        None,
        [("infra/new.ncl", 0, "dependency cycle: ")],
    ),
    (
        "unknown dependency",
        {"infra/new.ncl": infra(resource("x", "file", path="x", content="x", depends_on=["ghost"]))},
        None,
        [("infra/new.ncl", 3, "resource x depends on unknown resource 'ghost'")],
    ),
    (
        "path escaping with ..",
        {"infra/new.ncl": infra(resource("x", "file", path="srv/../../etc/passwd", content="x"))},
        None,
        [("infra/new.ncl", 3, "contains `..`")],
    ),
    (
        "absolute path",
        {"infra/new.ncl": infra(resource("x", "file", path="/etc/passwd", content="x"))},
        None,
        [("infra/new.ncl", 3, "is absolute")],
    ),
    (
        "symlink target escaping",
        {"infra/new.ncl": infra(resource("x", "symlink", path="l", target="../../etc"))},
        None,
        [("infra/new.ncl", 3, "contains `..`")],
    ),
    (
        "host symlink pointing out of the root",
        {"infra/new.ncl": infra(resource("x", "file", path="out/pwned", content="x"))},
        _outside_link,
        [("infra/new.ncl", 3, "resource x: path 'out/pwned' leads out of the root")],
    ),
    (
        "two resources on one path",
        {"infra/new.ncl": infra(resource("x", "file", path="etc/motd", content="x"))},
        None,
        [("infra/new.ncl", 3, "both manage etc/motd")],
    ),
    (
        "template variable missing",
        {
            "templates/t.j2": "port = {{ port }}\n",
            "infra/new.ncl": infra(
                resource("x", "file", path="x", template="templates/t.j2", vars={"name": "a"})
            ),
        },
        None,
        [("infra/new.ncl", 3, "resource x: template templates/t.j2 failed: 'port' is undefined")],
    ),
    (
        "template syntax error",
        {
            "templates/t.j2": "ok\n{% if %}\n",
            "infra/new.ncl": infra(resource("x", "file", path="x", template="templates/t.j2")),
        },
        None,
        [("templates/t.j2", 2, "template syntax")],
    ),
    (
        "template not in the commit",
        {"infra/new.ncl": infra(resource("x", "file", path="x", template="templates/missing.j2"))},
        None,
        [("infra/new.ncl", 3, "template templates/missing.j2 is not in the commit")],
    ),
    (
        "template sandbox escape",
        {
            "templates/t.j2": "{{ ''.__class__.__mro__ }}\n",
            "infra/new.ncl": infra(resource("x", "file", path="x", template="templates/t.j2")),
        },
        None,
        [("infra/new.ncl", 3, "template templates/t.j2 failed")],
    ),
    (
        "content and template both",
        {
            "templates/t.j2": "x\n",
            "infra/new.ncl": infra(resource("x", "file", path="x", content="x", template="templates/t.j2")),
        },
        None,
        [("infra/new.ncl", 3, "exactly one of `content` or `template`")],
    ),
    (
        "bad systemd unit name",
        {"infra/new.ncl": infra(resource("x", "systemd_unit", name="../../evil", content="x"))},
        None,
        [("infra/new.ncl", 3, "is not a systemd unit name")],
    ),
    (
        "bad resource id",
        {"infra/new.ncl": infra('    "Bad Id" = { kind = \'file, path = "x", content = "x" },')},
        None,
        [("infra/new.ncl", 3, "resource id 'Bad Id' must be lowercase")],
    ),
    (
        "non-UTF-8 file",
        {"infra/new.ncl": infra(resource("x", "file", path="x", content="caf\xe9")).encode("latin-1")},
        None,
        [("infra/new.ncl", 0, "UTF-8")],
    ),
    (
        "binary file",
        {"infra/new.ncl": b"\x7fELF\x02\x01\x01\x00\x00\x00"},
        None,
        [("infra/new.ncl", 0, "binary")],
    ),
    (
        "file over the size limit",
        {"infra/new.ncl": "# " + "x" * (1024 * 1024 + 1) + "\n{}\n"},
        None,
        [("infra/new.ncl", 0, "limit")],
    ),
    (
        "import of a host file",
        {"infra/new.ncl": 'let p = import "/etc/hostname" as \'Text in\n' + infra()},
        None,
        [("infra/new.ncl", 1, "'/etc/hostname' leaves the repository")],
    ),
    (
        "broken repo settings",
        {"stratum.ncl": '{ name = "x", infra = { parallelism = -1 } }\n'},
        None,
        [("stratum.ncl", 1, "")],
    ),
]


@pytest.mark.parametrize(
    "files, prepare, expected", [pytest.param(f, p, e, id=name) for name, f, p, e in REJECTED]
)
def test_a_bad_revision_is_rejected_and_nothing_is_applied(
    repo: WorkRepo,
    good: str,
    stack: Stack,
    files: dict[str, str | bytes | None],
    prepare: Callable[[Stack], None] | None,
    expected: list[tuple[str, int, str]],
) -> None:
    """The run ends `rejected` with the problem located; the host root, inventory and last good revision are
    exactly as before (even the parts of the revision that were valid); the next good commit applies."""
    if prepare is not None:
        prepare(stack)
    before = tree_of(stack.root)
    outside = tree_of(stack.tmp / "outside")
    files = {**files, "infra/base.ncl": BASE["infra/base.ncl"].replace("v1", "v2-must-not-land")}
    rev = repo.commit(files, "bad")
    result = stack.run(rev)
    assert result.status == "rejected", result
    assert result.actions == ()
    found = [(p.path, p.line, p.message) for p in result.problems]
    for path, line, words in expected:
        assert any(p == path and (line == 0 or ln == line) and words in m for p, ln, m in found), found
    assert tree_of(stack.root) == before
    assert tree_of(stack.tmp / "outside") == outside
    assert stack.inventory_ids() == {"motd", "srv", "conf"}
    assert stack.state("last_good_revision") == good
    assert stack.state("last_applied_revision") == good
    assert stack.state("last_attempted_revision") == rev
    note = stack.source.note(rev) or ""
    assert note.startswith("stratum: rejected\n")
    assert f"problem: {result.problems[0]}" in note
    [row] = stack.index.query_dicts("SELECT status, problems FROM runs WHERE id = ?", [result.run_id])
    assert row["status"] == "rejected"
    assert json.loads(row["problems"])[0]["path"] == result.problems[0].path
    # The pipeline keeps working: revert the bad files, change the motd, apply.
    fixed = repo.commit(
        {
            **{p: None for p in files if p not in BASE},
            **BASE,
            "infra/base.ncl": BASE["infra/base.ncl"].replace("v1", "v3"),
        },
        "fix",
    )
    after = stack.run(fixed)
    if prepare is None:
        assert after.status == "succeeded", after
        assert (stack.root / "etc/motd").read_text() == "v3\n"
        assert stack.state("last_good_revision") == fixed


def test_duplicate_ids_name_both_places(repo: WorkRepo, good: str, stack: Stack) -> None:
    """A duplicated id is reported at the second declaration and names the first one's file and line."""
    repo.commit({"infra/other.ncl": infra(resource("conf", "file", path="other.conf", content="x"))})
    result = stack.run()
    assert [str(p) for p in result.problems] == [
        "infra/other.ncl:3: duplicate resource id 'conf': also declared in infra/base.ncl:5 "
        "(hint: resource ids are unique across infra/)"
    ]


def test_a_dependency_cycle_is_named_in_full(repo: WorkRepo, stack: Stack) -> None:
    """The cycle's members appear in order, closing the loop, at the file of its first member."""
    repo.commit(
        {
            "infra/a.ncl": infra(
                resource("a", "directory", path="a", depends_on=["b"]),
                resource("b", "directory", path="b", depends_on=["a"]),
            )
        }
    )
    [problem] = stack.run().problems
    assert problem.path == "infra/a.ncl" and problem.line in (3, 4)
    assert problem.message in ("dependency cycle: a -> b -> a", "dependency cycle: b -> a -> b")


def test_a_crashing_reconciler_rejects_the_revision_and_the_pipeline_survives(
    repo: WorkRepo, good: str, stack: Stack
) -> None:
    """An unexpected exception in a reconciler's load rejects the revision with an internal-error problem."""

    class Broken(Reconciler[Any, Any]):
        name = "broken"

        def load(self, snap: Any) -> Any:
            raise RuntimeError("kaboom")

        def observe(self, desired: Any, inventory: list[InventoryItem]) -> Any:
            return None

        def plan(self, desired: Any, observed: Any, inventory: list[InventoryItem]) -> list[Any]:
            return []

        def apply(self, action: Action, ctx: ApplyContext) -> Outcome:
            raise AssertionError("never called: plan is empty")

    stack.pipeline.reconcilers = {**stack.pipeline.reconcilers, "broken": Broken()}
    before = tree_of(stack.root)
    rev = repo.commit({"infra/base.ncl": BASE["infra/base.ncl"].replace("v1", "v2")})
    result = stack.run(rev)
    assert result.status == "rejected"
    assert [p.message for p in result.problems] == [
        "internal error in the broken reconciler: RuntimeError: kaboom"
    ]
    assert tree_of(stack.root) == before
    stack.pipeline.reconcilers = {"infra": stack.infra}
    assert stack.run(rev).status == "succeeded"


def test_every_reconciler_gets_its_last_applied_revision(repo: WorkRepo, stack: Stack) -> None:
    """After a successful run each reconciler, with or without inventory, records the revision it applied."""

    class Stateless(Reconciler[Any, Any]):
        name = "stateless"

        def load(self, snap: Any) -> Any:
            return None

        def validate(self, desired: Any) -> list[Problem]:
            return []

        def observe(self, desired: Any, inventory: list[InventoryItem]) -> Any:
            return None

        def plan(self, desired: Any, observed: Any, inventory: list[InventoryItem]) -> list[Any]:
            return []

        def apply(self, action: Action, ctx: ApplyContext) -> Outcome:
            raise AssertionError("never called: plan is empty")

    stack.pipeline.reconcilers = {**stack.pipeline.reconcilers, "stateless": Stateless()}
    rev = repo.commit(BASE)
    assert stack.run(rev).status == "succeeded"
    assert stack.state("last_applied_revision:infra") == rev
    assert stack.state("last_applied_revision:stateless") == rev


# -- interrupted runs ----------------------------------------------------------------------------------------
def _interrupt(tmp_path: Path, repo: WorkRepo, stack: Stack, good: str) -> tuple[str, str]:
    """Start applying a revision and 'die' after two of its actions: the run stays `running`."""
    log = str(_log(tmp_path))
    rev = repo.commit(
        {
            "infra/base.ncl": BASE["infra/base.ncl"].replace("v1", "v2"),
            "infra/more.ncl": infra(
                resource("extra", "file", path="srv/extra.txt", content="extra\n", depends_on=["srv"]),
                resource(
                    "hook",
                    "command",
                    run="echo hook >> $LOG",
                    compensate="echo undo hook >> $LOG",
                    env={"LOG": log},
                ),
            ),
        }
    )
    actions = stack.pipeline._plan(stack.pipeline.load(rev))
    assert {a.id for a in actions} == {"infra:motd", "infra:extra", "infra:hook"}
    run_id = stack.index.start_run(rev, "test", good)
    stack.index.set_run_plan(run_id, actions)
    first = [a for a in actions if a.id in ("infra:extra", "infra:hook")]
    result = Executor({"infra": stack.infra}, stack.index).execute(run_id, first, ApplyContext(run_id, rev))
    assert result.ok
    assert (stack.root / "srv/extra.txt").exists()
    assert [r["id"] for r in stack.index.interrupted_runs()] == [run_id]
    return run_id, rev


def test_an_interrupted_run_is_rolled_back_on_restart(
    tmp_path: Path, repo: WorkRepo, good: str, stack: Stack
) -> None:
    """A run left `running` is resolved by rollback: its compensations run and the host returns to the last
    good revision; the run is finalized `rolled_back` and no run is left running."""
    before = tree_of(stack.root)
    run_id, _ = _interrupt(tmp_path, repo, stack, good)
    stack.close()
    restarted = Stack(tmp_path, repo.path)  # a new process: its own Nickel worker
    try:
        [result] = restarted.pipeline.resolve_interrupted("rollback")
        assert result.run_id == run_id and result.status == "rolled_back", result
        assert "interrupted by a daemon restart" in result.message
        assert _log(tmp_path).read_text() == "hook\nundo hook\n"
        assert tree_of(restarted.root) == before
        assert restarted.index.interrupted_runs() == []
        assert restarted.state("last_good_revision") == good
        assert restarted.inventory_ids() == {"motd", "srv", "conf"}
        assert restarted.pipeline.resolve_interrupted("rollback") == []
    finally:
        restarted.close()


def test_an_interrupted_run_is_resumed_when_asked(
    tmp_path: Path, repo: WorkRepo, good: str, stack: Stack
) -> None:
    """In resume mode the interrupted run is closed as failed and a new run applies the revision fully."""
    run_id, rev = _interrupt(tmp_path, repo, stack, good)
    [result] = stack.pipeline.resolve_interrupted("resume")
    assert result.run_id != run_id and result.status == "succeeded", result
    old = stack.index.query_dicts("SELECT status, message FROM runs WHERE id = ?", [run_id])[0]
    assert old["status"] == "failed" and "resumed in a new run" in old["message"]
    assert stack.index.query("SELECT trigger FROM runs WHERE id = ?", [result.run_id]) == [("resume",)]
    assert (stack.root / "etc/motd").read_text() == "v2\n"
    assert (stack.root / "srv/extra.txt").read_text() == "extra\n"
    assert _log(tmp_path).read_text() == "hook\n"
    assert stack.state("last_good_revision") == rev
    assert stack.index.interrupted_runs() == []


# -- pull-request plans --------------------------------------------------------------------------------------
def test_plan_between_two_revisions_reads_no_host(repo: WorkRepo, good: str, stack: Stack) -> None:
    """plan_between shows head against base as if base were applied, whatever the host holds."""
    head = repo.commit(
        {
            "infra/base.ncl": infra(
                resource("motd", "file", path="etc/motd", content="v2\n"),
                resource("srv", "directory", path="srv", mode="0750"),
                resource("new", "directory", path="new"),
            )
        }
    )
    (stack.root / "srv/app.conf").unlink()
    report = stack.pipeline.plan_between(good, head)
    assert report.problems == ()
    assert sorted((a.kind, a.target) for a in report.actions) == [
        ("create", "new"),
        ("delete", "conf"),
        ("update", "motd"),
    ]
    assert isinstance(report.actions[0].summary, str)
    assert [i.resource_id for i in stack.index.inventory("infra")] != []


def test_problem_rendering() -> None:
    """A problem renders as `path:line:col: message (hint: ...)`, dropping what it does not know."""
    assert str(Problem("m", "a.ncl", 3, 7, hint="h")) == "a.ncl:3:7: m (hint: h)"
    assert str(Problem("m", "a.ncl", 3)) == "a.ncl:3: m"
    assert str(Problem("m", "a.ncl")) == "a.ncl: m"
    assert str(Problem("m")) == "m"
    assert InventoryItem("infra", "x", "file").data == "{}"


def _two_sleepers() -> str:
    return infra(
        resource("one", "command", run="echo start >> log; sleep 0.3; echo end >> log"),
        resource("two", "command", run="echo start >> log; sleep 0.3; echo end >> log"),
    )


@pytest.mark.parametrize(("setting", "expected"), [
    ("{ infra = { parallelism = 1 } }", "start\nend\nstart\nend\n"),
    ("{ infra = { parallelism = 2 } }", "start\nstart\nend\nend\n"),
])
def test_the_repo_parallelism_setting_bounds_the_apply(repo: WorkRepo, stack: Stack, setting: str,
                                                       expected: str) -> None:
    """`infra.parallelism` in stratum.ncl bounds how many independent actions run at once (never above the
    host's own limit)."""
    rev = repo.commit({"stratum.ncl": setting, "infra/a.ncl": _two_sleepers()})
    assert stack.run(rev).status == "succeeded"
    assert (stack.root / "log").read_text() == expected
