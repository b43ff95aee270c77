"""The `stratum` command line without a daemon: init, validate, plan, apply, status, log, drift, rollback, the
apply lock and unusable repository paths. The spine's verbs run here with the infra reconciler alone
(the other parts test their own verbs)."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import structlog
from click.testing import CliRunner, Result

from daemon.cli.main import cli
from reconcilers import registry
from tests.fixtures import git

ROOT = Path(__file__).resolve().parents[2]
TEMPLATE_ACTIONS = [
    "infra:app-config",
    "infra:app-current",
    "infra:app-dir",
    "infra:app-init",
    "infra:app-service",
    "infra:app-tls-cert",
    "infra:app-tls-key",
    "infra:motd",
]


@pytest.fixture(autouse=True)
def spine_only(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Only the infra reconciler is registered; logging is reset after each command (it binds the
    runner's stderr)."""
    for name in [n for n in registry.REGISTRY if n != "infra"]:
        monkeypatch.delitem(registry.REGISTRY, name)
    yield
    structlog.reset_defaults()


class Cli:
    """Runs `stratum` in-process against one repo, data dir and root."""

    def __init__(self, tmp: Path) -> None:
        self.repo = tmp / "ops"
        self.data = tmp / "data"
        self.root = tmp / "root"
        self.runner = CliRunner()

    def __call__(self, *args: str, repo: Path | str | None = None) -> Result:
        """Invoke a verb with --repo/--data-dir/--root filled in (init takes none)."""
        argv = list(args)
        if args[0] != "init":
            argv += ["--repo", str(repo or self.repo), "--data-dir", str(self.data), "--root", str(self.root)]
        return self.runner.invoke(cli, argv, catch_exceptions=False)

    def json(self, *args: str) -> Any:
        """Invoke with JSON output and decode stdout."""
        result = self(*args, "--output", "json")
        return json.loads(result.stdout)

    def commit(self, files: dict[str, str | None], message: str = "change") -> str:
        """Write/delete files in the ops repo, commit, return the id."""
        for rel, content in files.items():
            if content is None:
                (self.repo / rel).unlink()
            else:
                (self.repo / rel).parent.mkdir(parents=True, exist_ok=True)
                (self.repo / rel).write_text(content)
        git(self.repo, "add", "-A")
        git(self.repo, "commit", "-q", "-m", message)
        return git(self.repo, "rev-parse", "HEAD")

    def motd(self, text: str) -> str:
        """The template's motd file with another text."""
        source = (self.repo / "infra/motd.ncl").read_text()
        start = source.index('content = "') + len('content = "')
        end = source.index('"', start)
        return source[:start] + text + source[end:]


@pytest.fixture
def run(tmp_path: Path) -> Cli:
    """A CLI whose ops repo was made by `stratum init`."""
    c = Cli(tmp_path)
    result = c("init", str(c.repo))
    assert result.exit_code == 0, result.output
    return c


# -- init ----------------------------------------------------------------------------------------------------
def test_init_lays_down_the_template_and_commits(run: Cli) -> None:
    """init copies the template (no packaging markers) into a new repo with one commit and a clean tree."""
    files = sorted(git(run.repo, "ls-files").splitlines())
    assert {
        "stratum.ncl",
        ".pre-commit-config.yaml",
        "infra/app.ncl",
        "infra/motd.ncl",
        "templates/app-config.toml.j2",
    } <= set(files)
    assert not any(".stratum-data" in f or "__init__" in f for f in files)
    assert git(run.repo, "rev-list", "--count", "HEAD") == "1"
    assert git(run.repo, "status", "--porcelain") == ""
    assert git(run.repo, "branch", "--show-current") == "main"


def test_init_names_the_repository(tmp_path: Path) -> None:
    """--name goes into stratum.ncl."""
    c = Cli(tmp_path)
    assert c("init", str(c.repo), "--name", "payments-ops").exit_code == 0
    assert 'name = "payments-ops"' in (c.repo / "stratum.ncl").read_text()


def test_init_refuses_a_non_empty_directory(tmp_path: Path) -> None:
    """init never writes into a directory that has content."""
    c = Cli(tmp_path)
    c.repo.mkdir()
    (c.repo / "mine.txt").write_text("keep")
    result = c("init", str(c.repo))
    assert result.exit_code == 1
    assert "exists and is not empty" in result.stderr
    assert sorted(p.name for p in c.repo.iterdir()) == ["mine.txt"]


# -- validate ------------------------------------------------------------------------------------------------
def test_validate_a_fresh_repo_is_ok(run: Cli) -> None:
    """The example repo validates clean."""
    result = run("validate")
    assert result.exit_code == 0, result.output
    assert result.stdout.strip() == "ok: no problems found"


def test_validate_reports_file_and_line_and_exits_1(run: Cli) -> None:
    """A staged contract violation is reported as file:line:col on stderr with exit code 1."""
    broken = run.motd("hi").replace("drift = 'correct,", "drift = 'sometimes,")
    (run.repo / "infra/motd.ncl").write_text(broken)
    git(run.repo, "add", "infra/motd.ncl")
    result = run("validate")
    assert result.exit_code == 1
    line = next(i for i, text in enumerate(broken.splitlines(), 1) if "sometimes" in text)
    assert f"infra/motd.ncl:{line}:" in result.stderr
    assert result.stdout.strip() == "1 problem(s)"
    assert run("validate", "--rev", "HEAD").exit_code == 0
    data = run.json("validate")
    assert data["ok"] is False
    assert (data["problems"][0]["path"], data["problems"][0]["line"]) == ("infra/motd.ncl", line)


def test_validate_checks_a_committed_revision(run: Cli) -> None:
    """--rev validates that commit, not the staged tree."""
    bad = run.commit(
        {"infra/x.ncl": '{ resources = { x = { kind = \'file, path = "../x", content = "" } } }\n'}
    )
    git(run.repo, "rm", "-q", "--cached", "infra/x.ncl")
    assert run("validate").exit_code == 0
    result = run("validate", "--rev", bad)
    assert result.exit_code == 1
    assert "infra/x.ncl:1:" in result.stderr and "contains `..`" in result.stderr


# -- plan ----------------------------------------------------------------------------------------------------
def test_plan_formats(run: Cli) -> None:
    """The same plan as JSON, text and markdown; nothing is applied."""
    data = run.json("plan")
    assert sorted(a["id"] for a in data["actions"]) == TEMPLATE_ACTIONS
    assert data["problems"] == [] and data["drift"] == []
    text = run("plan")
    assert text.exit_code == 0
    assert text.stdout.startswith(f"Plan for {git(run.repo, 'rev-parse', 'HEAD')[:12]}\n")
    assert "infra: 7 to create, 1 to run" in text.stdout
    assert "  + create file etc/motd (0644)" in text.stdout
    md = run("plan", "--format", "markdown")
    assert md.stdout.startswith("<!-- stratum-plan part 1/1 -->\n### Stratum plan for `")
    assert "#### infra: 7 to create, 1 to run" in md.stdout
    assert "| + | create file etc/motd (0644) |  |" in md.stdout
    assert not run.root.exists() or list(run.root.iterdir()) == []


def test_plan_of_a_bad_revision_exits_1_with_the_problem(run: Cli) -> None:
    """A rejected plan lists the located problem and exits 1."""
    run.commit({"infra/motd.ncl": run.motd("hi").replace("kind = 'file", "kind = 'fiel")})
    result = run("plan")
    assert result.exit_code == 1
    assert "REJECTED: 1 problem(s)" in result.stdout
    assert "infra/motd.ncl:" in result.stdout


def test_plan_between_base_and_head_is_the_pull_request_view(run: Cli) -> None:
    """--base/--head shows only what head changes over base."""
    base = git(run.repo, "rev-parse", "HEAD")
    head = run.commit({"infra/motd.ncl": run.motd("new motd")})
    data = run.json("plan", "--base", base, "--head", head)
    assert [(a["kind"], a["id"]) for a in data["actions"]] == [("update", "infra:motd")]
    assert data["base"] == base and data["revision"] == head


# -- apply, status, log --------------------------------------------------------------------------------------
def test_apply_status_and_log(run: Cli) -> None:
    """apply creates the example; status shows per-reconciler revisions and Ready; a rejected commit flips
    Ready
    to False with its reason and keeps the applied revision; log lists both runs newest first."""
    good = git(run.repo, "rev-parse", "HEAD")
    applied = run("apply")
    assert applied.exit_code == 0, applied.output
    assert applied.stdout.startswith(f"succeeded: {good[:12]} run ")
    assert (run.root / "etc/motd").read_text().startswith("Welcome!")
    assert (run.root / "srv/hello/config.toml").exists()
    status = run.json("status")
    infra = status["reconcilers"]["infra"]
    assert set(status["reconcilers"]) == {"infra"}
    assert infra["last_attempted_revision"] == infra["last_applied_revision"] == good
    [ready] = infra["conditions"]
    assert (ready["type"], ready["status"], ready["reason"]) == ("Ready", "True", "ReconciliationSucceeded")
    # the template's two certificate files wait for a vault this host does not run, and status says so
    assert ready["message"].startswith(f"applied revision {good[:12]}; 2 action(s) waiting, first: file app-tls-")
    bad = run.commit({"infra/motd.ncl": run.motd("x").replace("path = ", "paht = ")})
    rejected = run("apply", "--output", "json")
    assert rejected.exit_code == 1
    assert json.loads(rejected.stdout)["status"] == "rejected"
    infra = run.json("status")["reconcilers"]["infra"]
    assert (infra["last_attempted_revision"], infra["last_applied_revision"]) == (bad, good)
    [cond] = infra["conditions"]
    assert (cond["status"], cond["reason"]) == ("False", "ValidationFailed")
    assert "last good revision stays in force" in cond["message"]
    runs = run.json("log")
    assert [(r["revision"], r["status"]) for r in runs] == [(bad, "rejected"), (good, "succeeded")]
    assert runs[0]["problems"][0]["path"] == "infra/motd.ncl"
    assert runs[1]["duration_ms"] > 0 and runs[1]["trigger"] == "cli"


def test_status_before_any_run(run: Cli) -> None:
    """With no run yet, Ready is Unknown with reason NoRunYet."""
    infra = run.json("status")["reconcilers"]["infra"]
    assert infra["last_applied_revision"] is None
    assert infra["conditions"][0]["reason"] == "NoRunYet"


# -- drift and rollback --------------------------------------------------------------------------------------
def test_drift_exit_codes(run: Cli) -> None:
    """drift exits 0 with nothing drifted and 1 listing each drifted resource at its declaration."""
    assert run("apply").exit_code == 0
    clean = run("drift")
    assert clean.exit_code == 0 and clean.stdout.strip() == "no drift"
    (run.root / "etc/motd").write_text("hand edit\n")
    found = run("drift")
    assert found.exit_code == 1
    assert (
        "infra/motd.ncl:" in found.stdout and "drift on file motd (etc/motd): content differs" in found.stdout
    )
    [item] = run.json("drift")
    assert item["path"] == "infra/motd.ncl" and "policy correct" in item["message"]


def test_rollback_applies_an_earlier_revision(run: Cli) -> None:
    """rollback REV puts the host back to REV's content and records REV as applied."""
    first = git(run.repo, "rev-parse", "HEAD")
    assert run("apply").exit_code == 0
    run.commit({"infra/motd.ncl": run.motd("second")})
    assert run("apply").exit_code == 0
    assert (run.root / "etc/motd").read_text() == "second"
    result = run("rollback", first[:12])
    assert result.exit_code == 0, result.output
    assert (run.root / "etc/motd").read_text().startswith("Welcome!")
    assert run.json("status")["last_applied_revision"] == first
    assert run.json("log")[0]["trigger"] == "rollback"


def test_rollback_to_an_unknown_revision_is_a_clear_error(run: Cli) -> None:
    """An unknown revision exits 1 naming it."""
    result = run("rollback", "nope")
    assert result.exit_code == 1
    assert "error: unknown revision 'nope'" in result.stderr


# -- lock and bad repositories -------------------------------------------------------------------------------
def test_a_second_apply_while_the_lock_is_held_is_a_lock_error(run: Cli) -> None:
    """While another process holds the apply lock, `stratum apply` exits 1 naming it and applies nothing."""
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            textwrap.dedent(f"""
            import sys
            from pathlib import Path
            from daemon.service.lock import ApplyLock
            lock = ApplyLock(Path({str(run.data)!r}))
            lock.acquire()
            print("ready", flush=True)
            sys.stdin.readline()
        """),
        ],
        cwd=ROOT,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "ready"
        result = run("apply")
        assert result.exit_code == 1
        assert f"error: another Stratum process (pid {holder.pid}) is applying to {run.data}" in result.stderr
        assert "hint:" in result.stderr
        assert not (run.root / "etc/motd").exists()
    finally:
        assert holder.stdin is not None and holder.stdout is not None
        holder.stdin.close()
        holder.wait(timeout=30)
        holder.stdout.close()
    assert run("apply").exit_code == 0


@pytest.mark.parametrize("verb", ["validate", "plan", "apply", "status"])
def test_a_missing_repo_path_is_a_clear_error(run: Cli, tmp_path: Path, verb: str) -> None:
    """Every verb given a repo path that does not exist exits 1 with `error:` and the path, no traceback."""
    missing = tmp_path / "no-such-repo"
    result = run(verb, repo=missing)
    if verb == "status":
        assert result.exit_code == 0  # status reads the index only: no repository needed
        return
    assert result.exit_code == 1
    assert result.stderr.startswith(f"error: repository path {missing} does not exist")
    assert "Traceback" not in result.output


def test_a_directory_that_is_not_a_repo_is_a_clear_error(run: Cli, tmp_path: Path) -> None:
    """A plain directory as --repo exits 1 saying it is not a git repository."""
    plain = tmp_path / "plain"
    plain.mkdir()
    result = run("apply", repo=plain)
    assert result.exit_code == 1
    assert f"error: {plain} is not a git repository" in result.stderr


def test_an_unreadable_repository_is_a_clear_error(run: Cli) -> None:
    """A repository git cannot read (a corrupt config) exits 1 with `cannot open repository`."""
    (run.repo / ".git" / "config").write_bytes(b"[core\x00\xff")
    result = run("validate")
    assert result.exit_code == 1
    assert result.stderr.startswith(f"error: cannot open repository {run.repo}")
    assert "hint: check that the path is readable" in result.stderr


def test_status_without_a_daemon_reports_an_unavailable_reconciler(
    run: Cli, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A registered reconciler that cannot be built is Ready=False with reason Unavailable, not succeeded."""
    monkeypatch.setitem(registry.REGISTRY, "ghost", "reconcilers.ghost.reconciler:GhostReconciler")
    assert run("apply").exit_code == 0
    ghost = run.json("status")["reconcilers"]["ghost"]
    assert (ghost["conditions"][0]["status"], ghost["conditions"][0]["reason"]) == ("False", "Unavailable")
