"""`stratum apply` shows the run's steps and a bar over its actions on a terminal, and nothing of it elsewhere.

The terminal is a real pseudo-terminal (pty) given to a real `stratum apply` process as its stderr.
"""

from __future__ import annotations

import fcntl
import os
import pty
import select
import struct
import subprocess
import sys
import termios
from pathlib import Path

from tests.fixtures import WorkRepo, clean_env, infra, resource

CLI = [sys.executable, "-c", "from daemon.cli.main import main; main()"]


def _seed(repo: WorkRepo) -> None:
    repo.commit({"infra/files.ncl": infra(*(resource(f"f{i}", "file", path=f"srv/f{i}", content=str(i))
                                           for i in range(12)))})


def _apply_with_tty_stderr(repo: WorkRepo, data: Path) -> tuple[int, str, str]:
    """Run `stratum apply` with stderr on a pty; returns (exit code, stdout, everything drawn on the pty)."""
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 120, 0, 0))
    proc = subprocess.Popen([*CLI, "apply", "--repo", str(repo.path), "--data-dir", str(data)],
                            stdout=subprocess.PIPE, stderr=slave, stdin=subprocess.DEVNULL, cwd=repo.path,
                            env=clean_env(repo.path, {"TERM": "xterm-256color", "COLUMNS": "120"}))
    os.close(slave)
    drawn = b""
    # Bounded: the loop ends when the process has exited and the pty is drained, or after 600 reads.
    for _ in range(600):
        ready, _, _ = select.select([master], [], [], 1.0)
        if ready:
            try:
                chunk = os.read(master, 65536)
            except OSError:           # EIO: the child closed its end of the pty
                break
            if not chunk:
                break
            drawn += chunk
        elif proc.poll() is not None:
            break
    os.close(master)
    assert proc.stdout is not None
    out = proc.stdout.read().decode()
    proc.stdout.close()
    return proc.wait(timeout=120), out, drawn.decode(errors="replace")


def test_apply_on_a_terminal_shows_each_step_and_the_action_count(repo: WorkRepo, tmp_path: Path) -> None:
    """On a TTY, stderr shows the steps as they begin and the bar reaches 12/12; stdout keeps the result only."""
    _seed(repo)
    code, out, drawn = _apply_with_tty_stderr(repo, tmp_path / "data")
    assert code == 0, (out, drawn)
    for step in ("loading the revision", "planning", "applying"):
        assert step in drawn, drawn
    assert "12/12" in drawn, drawn
    assert out.startswith("succeeded:") and "\x1b[" not in out


def test_apply_without_a_terminal_draws_no_progress(repo: WorkRepo, tmp_path: Path) -> None:
    """Piped (CI, scripts), apply writes no progress display and no terminal escapes."""
    _seed(repo)
    proc = subprocess.run([*CLI, "apply", "--repo", str(repo.path), "--data-dir", str(tmp_path / "data")],
                          capture_output=True, text=True, cwd=repo.path, env=clean_env(repo.path), timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert "loading the revision" not in proc.stderr and "\x1b[" not in proc.stderr
    assert "12/12" not in proc.stderr
    assert proc.stdout.startswith("succeeded:")
