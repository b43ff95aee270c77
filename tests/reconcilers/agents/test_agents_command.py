"""The command runner: real processes with a timeout, an environment allow-list, output caps and a working
directory that stays inside the agents' work dir."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from reconcilers.agents.command import run_command, workdir


def py(code: str) -> list[str]:
    """argv running `code` in this Python."""
    return [sys.executable, "-c", code]


def test_exit_code_output_and_working_dir(tmp_path: Path) -> None:
    """The command runs in its working dir; exit code and output are recorded."""
    cwd = workdir(tmp_path, "jobs/a")
    r = run_command(py("import os,sys; print(os.getcwd()); sys.exit(3)"), cwd=cwd, timeout=30)
    assert (r.exit_code, r.stdout.strip(), r.ok) == (3, str(cwd), False)
    assert r.summary().startswith("exit 3: ")


def test_only_allowed_environment_reaches_the_command(tmp_path: Path) -> None:
    """Host variables pass only when allowed; the runner's own STRATUM_* values are added."""
    host = {"PATH": "/usr/bin:/bin", "ALLOWED": "yes", "SECRET_TOKEN": "do-not-leak"}
    r = run_command(py("import os,json; print(json.dumps(sorted(os.environ)))"), cwd=tmp_path, timeout=30,
                    allow_env=["ALLOWED"], extra_env={"STRATUM_TASK": "t1"}, host_env=host)
    names = set(json.loads(r.stdout))
    assert "ALLOWED" in names and "STRATUM_TASK" in names and "SECRET_TOKEN" not in names


def test_a_hanging_command_is_killed_at_its_timeout(tmp_path: Path) -> None:
    """A command (and the child it started) past its timeout is killed and recorded as timed out."""
    r = run_command(["sh", "-c", "sleep 60 & sleep 60"], cwd=tmp_path, timeout=0.5)
    assert r.timed_out and not r.ok
    assert r.summary().startswith("timed out after")


def test_flooding_output_is_capped(tmp_path: Path) -> None:
    """Output past the cap is drained but not kept; the record says it was truncated."""
    r = run_command(py("import sys\nfor _ in range(2000): sys.stdout.write('x' * 1000)"), cwd=tmp_path,
                    timeout=30, max_output=1000)
    assert r.exit_code == 0 and r.truncated and len(r.stdout) == 1000
    assert "(output truncated)" in r.summary()


def test_a_missing_program_is_an_error_not_a_crash(tmp_path: Path) -> None:
    """A program that does not exist is a failed run with a readable reason."""
    r = run_command(["/nonexistent/tool"], cwd=tmp_path, timeout=5)
    assert not r.ok and "cannot start '/nonexistent/tool'" in r.summary()


def test_working_dir_cannot_leave_the_root(tmp_path: Path) -> None:
    """A cwd leaving the agents' work dir is refused."""
    with pytest.raises(ValueError, match="leaves"):
        workdir(tmp_path / "root", "../elsewhere")


def _alive(pid: int) -> bool:
    """True while `pid` runs (a zombie waiting for its new parent to reap it counts as gone)."""
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def test_the_command_dies_with_its_worker(tmp_path: Path) -> None:
    """A worker killed mid-task takes its command with it (no orphan finishing a run that will be redelivered),
    whether the death signal is set by setpriv (the fast spawn) or by the fallback."""
    import subprocess

    from tests.proc import wait_for

    pidfile = tmp_path / "pid"
    root = Path(__file__).resolve().parents[3]
    script = (f"import sys; sys.path.insert(0, {str(root)!r})\n"
              "from pathlib import Path\n"
              "from reconcilers.agents.command import run_command\n"
              f"run_command(['sh', '-c', 'echo $$ > {pidfile}; exec sleep 60'], cwd=Path({str(tmp_path)!r}), "
              "timeout=120)\n")
    worker = subprocess.Popen([sys.executable, "-c", script])
    try:
        pid = int(wait_for(lambda: pidfile.exists() and pidfile.read_text().strip(), 60))
        assert _alive(pid)
    finally:
        worker.kill()
        worker.wait()
    wait_for(lambda: not _alive(pid), 20)


def test_a_path_that_cannot_run_is_refused_before_it_starts(tmp_path: Path) -> None:
    """A program named by path that does not exist or is not executable is an error (no retry), not an exit
    code from a wrapper."""
    (tmp_path / "script.sh").write_text("#!/bin/sh\necho hi\n")
    for argv in (["./script.sh"], ["./nothing.sh"], [str(tmp_path / "nothing")]):
        r = run_command(argv, cwd=tmp_path, timeout=10)
        assert r.error.startswith(f"cannot start {argv[0]!r}") and not r.ok, r
    (tmp_path / "script.sh").chmod(0o755)
    r = run_command(["./script.sh"], cwd=tmp_path, timeout=10)
    assert r.ok and r.stdout == "hi\n", r
