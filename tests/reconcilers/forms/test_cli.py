"""`stratum form` as a user runs it: a real `stratum init` repository, the real CLI in a child process, real
git; the answers file backend, refusals with the element named, and `stratum validate` on a broken form."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pygit2
import pytest

from tests.fixtures import git
from tests.proc import ROOT, cli_env

STRATUM = [sys.executable, "-c", "from daemon.cli.main import main; main()"]


def stratum(tmp: Path, *args: str, ok: tuple[int, ...] = (0,)) -> subprocess.CompletedProcess[str]:
    """Run the CLI on the ops repository under `tmp`."""
    done = subprocess.run([*STRATUM, *args, "--repo", str(tmp / "ops"), "--data-dir", str(tmp / "data")],
                          cwd=ROOT, env={**cli_env(), "HOME": str(tmp)}, capture_output=True, text=True, timeout=300,
                          stdin=subprocess.DEVNULL)
    assert done.returncode in ok, (args, done.stdout, done.stderr)
    assert "Traceback" not in done.stdout + done.stderr
    return done


@pytest.fixture
def ops(tmp_path: Path) -> Path:
    """A repository made by `stratum init`."""
    subprocess.run([*STRATUM, "init", str(tmp_path / "ops")], cwd=ROOT, env={**cli_env(), "HOME": str(tmp_path)},
                   capture_output=True, text=True, timeout=120, check=True)
    return tmp_path / "ops"


def test_an_answers_file_makes_a_reviewable_branch_and_prints_the_plan(tmp_path: Path, ops: Path) -> None:
    """`form run --answers`: the kernel's plan of the branch is printed, the branch holds the Nickel, main does
    not move."""
    main = git(ops, "rev-parse", "main")
    (tmp_path / "a.yaml").write_text("name: billing\nport: 9000\nworkers: 3\nruntime: command\n"
                                     "command: /usr/bin/billing --port 9000\nowner: payments\n")
    done = stratum(tmp_path, "form", "run", "local-service", "--answers", str(tmp_path / "a.yaml"))
    # The kernel's pull-request plan of the branch against main (what `stratum plan --base --head` prints).
    branch = done.stdout.split("to branch ")[1].split(":")[0]
    tip = git(ops, "rev-parse", branch)
    assert f"### Stratum plan for `{tip[:12]}` against `{main[:12]}`" in done.stdout
    assert "create systemd_unit etc/systemd/system/billing.service" in done.stdout
    assert "#### Change control" in done.stdout
    assert git(ops, "rev-parse", "main") == main
    repo = pygit2.Repository(str(ops))
    commit = repo.revparse_single(branch)
    assert "Submitted-by: " in commit.message
    nickel = commit.tree["infra/services/billing.ncl"].data.decode()
    assert "/usr/bin/billing --port 9000" in nickel
    # The branch passes the daemon's own checks.
    git(ops, "checkout", "-q", branch)
    assert "ok: no problems found" in stratum(tmp_path, "validate", "--rev", branch).stdout


def test_refused_answers_name_each_element_and_write_nothing(tmp_path: Path, ops: Path) -> None:
    """A port out of range and a hidden-then-required command: exit 1, the element named, no branch."""
    (tmp_path / "a.yaml").write_text("name: billing\nport: 80\nruntime: command\n")
    done = stratum(tmp_path, "form", "run", "local-service", "--answers", str(tmp_path / "a.yaml"), ok=(1,))
    assert "port: must be at least 1024" in done.stderr and "command: is required" in done.stderr
    assert git(ops, "for-each-ref", "--format=%(refname)", "refs/heads") == "refs/heads/main"


def test_validate_reports_a_broken_form_with_file_and_line(tmp_path: Path, ops: Path) -> None:
    """An unknown field in a `when`: `stratum validate` fails with forms/x.toml:line."""
    form = ops / "forms" / "local-service.toml"
    form.write_text(form.read_text().replace('when = "runtime == \\"command\\""', 'when = "runtim == \\"command\\""'))
    git(ops, "add", "-A")
    done = stratum(tmp_path, "validate", "--output", "json", ok=(1,))
    problems = json.loads(done.stdout)["problems"]
    line = next(i + 1 for i, ln in enumerate(form.read_text().splitlines()) if ln.startswith("when = \"runtim"))
    assert [(p["path"], p["line"]) for p in problems] == [("forms/local-service.toml", line)]
    assert "'runtim'" in problems[0]["message"]


def test_dry_run_prints_the_plan_and_commits_nothing(tmp_path: Path, ops: Path) -> None:
    """--dry-run: the same checks and the kernel's plan (of a commit no branch points to), no branch; `form
    list` names the shipped forms."""
    (tmp_path / "a.json").write_text(json.dumps({"name": "web", "port": 8081}))
    done = stratum(tmp_path, "form", "run", "local-service", "--answers", str(tmp_path / "a.json"), "--dry-run")
    assert "3 to create" in done.stdout and "Stratum plan for" in done.stdout
    assert "| + | create systemd_unit etc/systemd/system/web.service (0644) |" in done.stdout
    assert git(ops, "for-each-ref", "--format=%(refname)", "refs/heads") == "refs/heads/main"
    listed = stratum(tmp_path, "form", "list")
    lines = [line.split() for line in listed.stdout.splitlines() if line.strip()]
    assert [line[0] for line in lines] == ["cloud-server", "local-service"]
    assert lines[1][1:4] == ["A", "new", "local"]
