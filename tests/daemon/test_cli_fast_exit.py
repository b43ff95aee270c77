"""`stratum validate` and `stratum plan` end without the interpreter's teardown (daemon/cli/main.py
FAST_EXIT_VERBS): their output and exit code are unchanged, and verbs that write state keep the normal exit.

Real `stratum` processes on a real repository; the CPU saved is measured by bench/load_plan.py and cli.py.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.fixtures import WorkRepo, infra, resource

# Runs `stratum ARGV` in a process that registered an atexit handler first: it prints TEARDOWN when the
# interpreter's normal exit runs.
PROBE = ("import atexit, sys\n"
         "atexit.register(lambda: print('TEARDOWN', file=sys.stderr))\n"
         "from daemon.cli.main import main\n"
         "sys.argv = ['stratum', *sys.argv[1:]]\n"
         "main()\n")


def _stratum(cwd: Path, *argv: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "HOME": str(cwd.parent)}
    return subprocess.run([sys.executable, "-c", PROBE, *argv], cwd=cwd, capture_output=True, text=True,
                          timeout=300, env=env, check=False)


@pytest.fixture
def ops(tmp_path: Path) -> WorkRepo:
    repo = WorkRepo(tmp_path / "ops")
    lines = [resource(f"r{i}", "file", path=f"r{i}.conf", content=f"{i}\n") for i in range(300)]
    repo.commit({"infra/a.ncl": infra(*lines)})
    return repo


def test_plan_prints_everything_and_skips_the_teardown(ops: WorkRepo, tmp_path: Path) -> None:
    """A 300-action plan as JSON through a pipe arrives whole (flushed before the exit), with the detailed exit
    code, and no atexit handler ran (the teardown was skipped)."""
    proc = _stratum(ops.path, "plan", "--data-dir", str(tmp_path / "data"), "--root", str(tmp_path / "root"),
                    "--output", "json", "--detailed-exitcode")
    assert proc.returncode == 2, proc.stderr
    assert len(json.loads(proc.stdout)["actions"]) == 300
    assert "TEARDOWN" not in proc.stderr


def test_validate_keeps_its_exit_code_and_message(ops: WorkRepo, tmp_path: Path) -> None:
    """A problem still exits 1 with the problem printed; a clean tree exits 0; neither tears down."""
    ok = _stratum(ops.path, "validate")
    assert ok.returncode == 0 and "ok: no problems found" in ok.stdout
    (ops.path / "infra" / "b.ncl").write_text("{ resources = 1 + \"x\" }\n")
    subprocess.run(["git", "add", "-A"], cwd=ops.path, check=True)
    bad = _stratum(ops.path, "validate")
    assert bad.returncode == 1
    assert "infra/b.ncl" in bad.stderr and "1 problem(s)" in bad.stdout
    assert "TEARDOWN" not in ok.stderr + bad.stderr


def test_a_verb_that_writes_state_exits_normally(ops: WorkRepo, tmp_path: Path) -> None:
    """`stratum apply` (it records its run in the index) keeps the interpreter's normal exit."""
    proc = _stratum(ops.path, "apply", "--data-dir", str(tmp_path / "data"), "--root", str(tmp_path / "root"))
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "root" / "r0.conf").read_text() == "0\n"
    assert "TEARDOWN" in proc.stderr


def test_a_cli_apply_makes_no_full_collection_after_its_run(ops: WorkRepo, tmp_path: Path) -> None:
    """The daemon collects garbage once after each run (gcpolicy.settle, so the next run meets no full pass);
    a CLI apply has no next run: it applies and records, without that pass (~0.1 s of the template's apply)."""
    code = ("import sys\n"
            "import daemon.run.gcpolicy as gcpolicy\n"
            "calls = []\n"
            "real = gcpolicy.settle\n"
            "gcpolicy.settle = lambda: calls.append(1) or real()\n"
            "from daemon.cli.main import cli\n"
            f"argv = ['apply', '--data-dir', {str(tmp_path / 'data')!r}, '--root', {str(tmp_path / 'root')!r}]\n"
            "try:\n    cli.main(argv, prog_name='stratum', standalone_mode=False)\n"
            "except SystemExit as e:\n    assert not e.code, e.code\n"
            "print('settled', len(calls))\n")
    proc = subprocess.run([sys.executable, "-c", code], cwd=ops.path, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "HOME": str(tmp_path)}, check=False)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip().splitlines()[-1] == "settled 0"
    assert (tmp_path / "root" / "r0.conf").read_text() == "0\n"
