"""The interactive CLI backend in a real terminal: `stratum form run` under a pty (pexpect), answered by key
presses; a value the element refuses shows its message under the prompt and the question stays."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pexpect
import pygit2
import pytest

from tests.fixtures import git
from tests.proc import ROOT, cli_env

STRATUM = [sys.executable, "-c", "from daemon.cli.main import main; main()"]
DOWN, ENTER, KILL_LINE = "\x1b[B", "\r", "\x15"


@pytest.mark.slow
def test_a_person_answers_in_the_terminal_and_gets_a_branch(tmp_path: Path) -> None:
    """Name, a refused port then a good one, defaults kept, the select moved to `command`, confirm: the plan is
    printed and the branch holds what was typed."""
    ops = tmp_path / "ops"
    env = {**cli_env(), "HOME": str(tmp_path), "TERM": "xterm", "COLUMNS": "120", "LINES": "40"}
    subprocess.run([*STRATUM, "init", str(ops)], cwd=ROOT, env=env, capture_output=True, timeout=120, check=True)
    child = pexpect.spawn(STRATUM[0], [*STRATUM[1:], "form", "run", "local-service", "--repo", str(ops),
                                        "--data-dir", str(tmp_path / "data")],
                          cwd=str(ROOT), env=env, encoding="utf-8", timeout=60, dimensions=(40, 120))
    log = tmp_path / "terminal.log"
    fh = log.open("w")
    child.logfile_read = fh
    try:
        child.expect("Service name")
        child.send("shop" + ENTER)
        child.expect("TCP port")
        child.send(KILL_LINE + "80" + ENTER)
        child.expect("must be at least 1024")
        child.send(KILL_LINE + "9200" + ENTER)
        child.expect("Worker processes")
        child.send(ENTER)
        child.expect("What runs the service")
        child.send(DOWN + ENTER)
        child.expect("Command to run")
        child.send("/usr/bin/shop --port 9200" + ENTER)
        child.expect("Restart it when it fails")
        child.send("y")
        child.expect("Owning team")
        child.send(ENTER)
        child.expect("to branch (forms/local-service/[^:]+):")
        branch = child.match.group(1)
        child.expect(pexpect.EOF)
    except (pexpect.TIMEOUT, pexpect.EOF):
        fh.flush()
        shown = log.read_text()[-3000:]
        raise AssertionError(f"the terminal did not show what was expected; see {log}:\n{shown}") from None
    finally:
        child.close()
        fh.close()
    assert child.exitstatus == 0
    commit = pygit2.Repository(str(ops)).revparse_single(branch)
    text = commit.tree["infra/services/shop.ncl"].data.decode()
    assert '"/usr/bin/shop --port 9200"' in text and "Restart=on-failure" in text
    assert '"port":9200' in text.splitlines()[0]
    assert git(ops, "rev-parse", "--abbrev-ref", "HEAD") == "main"


@pytest.mark.slow
def test_the_cloud_server_form_in_the_terminal_makes_a_branch_and_prints_the_kernels_plan(tmp_path: Path) -> None:
    """The second shipped form under a pty: defaults taken with Enter, the volume asked for once confirmed;
    the kernel's plan is printed (rejected here: this fresh host configures no cloud provider, and it says
    what to add) and the branch holds the server."""
    ops = tmp_path / "ops"
    env = {**cli_env(), "HOME": str(tmp_path), "TERM": "xterm", "COLUMNS": "120", "LINES": "40"}
    subprocess.run([*STRATUM, "init", str(ops)], cwd=ROOT, env=env, capture_output=True, timeout=120, check=True)
    child = pexpect.spawn(STRATUM[0], [*STRATUM[1:], "form", "run", "cloud-server", "--repo", str(ops),
                                        "--data-dir", str(tmp_path / "data")],
                          cwd=str(ROOT), env=env, encoding="utf-8", timeout=120, dimensions=(40, 120))
    log = tmp_path / "terminal.log"
    fh = log.open("w")
    child.logfile_read = fh
    try:
        for prompt, keys in (("Server name", "db-1" + ENTER), ("Provider", ENTER), ("Size", ENTER),
                             ("Image id", "ami-0123456789abcdef0" + ENTER), ("Network block", ENTER),
                             ("Open ports", ENTER), ("data volume", "y"), ("Volume size", ENTER),
                             ("Owning team", "data" + ENTER)):
            child.expect(prompt)
            child.send(keys)
        child.expect("Stratum plan for")
        child.expect("'aws' is not configured on this host")
        child.expect("to branch (forms/cloud-server/[^:]+):")
        branch = child.match.group(1)
        child.expect("would be rejected")
        child.expect(pexpect.EOF)
    except (pexpect.TIMEOUT, pexpect.EOF):
        fh.flush()
        shown = log.read_text()[-3000:]
        raise AssertionError(f"the terminal did not show what was expected; see {log}:\n{shown}") from None
    finally:
        child.close()
        fh.close()
    assert child.exitstatus == 0
    commit = pygit2.Repository(str(ops)).revparse_single(branch)
    text = commit.tree["infra/cloud/db-1.ncl"].data.decode()
    assert "db-1-data" in text and '"with_volume":true' in text.splitlines()[0]
