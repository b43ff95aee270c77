"""An index opened on a thread (daemon/index/opening.py, what `stratum plan` uses): the same index, the same
errors at its first use, and a plan that still reads what earlier applies recorded."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from daemon.errors import LockError
from daemon.index.opening import IndexOpening, open_in_background
from daemon.index.store import Index

ROOT = Path(__file__).resolve().parents[2]


@contextmanager
def held(path: Path) -> Iterator[None]:
    """Another process holds the index at `path` open (as a daemon would) until the block ends."""
    holder = subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(f"""
            import sys
            from pathlib import Path
            from daemon.index.store import Index
            idx = Index(Path({str(path)!r}))
            print("ready", flush=True)
            sys.stdin.readline()
            idx.close()
        """)], cwd=ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "ready"
        yield
    finally:
        assert holder.stdin is not None and holder.stdout is not None
        holder.stdin.close()
        holder.wait(timeout=30)
        holder.stdout.close()


def test_an_index_opened_on_a_thread_is_the_index_itself(tmp_path: Path) -> None:
    """Reads and writes through the stand-in reach the real file, opened on another thread than the caller's."""
    path = tmp_path / "index.duckdb"
    opener: list[str] = []

    def open_it() -> Index:
        opener.append(threading.current_thread().name)
        return Index(path)

    index = open_in_background(open_it)
    assert isinstance(index, IndexOpening)
    index.set_state("last_good_revision", "abc")
    assert index.get_state("last_good_revision") == "abc"
    index.close()
    assert opener == ["index-open"]
    again = Index(path, read_only=True)
    try:
        assert again.get_state("last_good_revision") == "abc"
    finally:
        again.close()


def test_an_index_held_elsewhere_raises_its_lock_error_at_first_use(tmp_path: Path) -> None:
    """Opening fails on the thread (another process holds the file): the first use raises that LockError, and
    closing the stand-in afterwards raises nothing more."""
    path = tmp_path / "index.duckdb"
    with held(path):
        index = open_in_background(lambda: Index(path))
        with pytest.raises(LockError) as err:
            index.get_state("last_good_revision")
        assert str(path) in err.value.what
        index.close()


def _stratum(*argv: str, cwd: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-c", "from daemon.cli.main import main; main()", *argv], cwd=cwd,
                          env=env, capture_output=True, text=True, timeout=300, check=False)


def test_plan_reads_the_index_it_opened_on_a_thread(tmp_path: Path) -> None:
    """After an apply, `stratum plan` (its index opened on a thread) sees what was applied: no changes left;
    and while another process holds the index, it says so (exit 1), with no traceback."""
    from tests.fixtures import WorkRepo

    env = {**os.environ, "HOME": str(tmp_path)}
    repo = WorkRepo(tmp_path / "ops")
    repo.commit({"infra/a.ncl": "{ resources = { a = { kind = 'file, path = \"a.conf\", content = \"x\\n\", "
                                "mode = \"0644\" } } }\n"})
    data, root = tmp_path / "data", tmp_path / "root"
    common = ("--data-dir", str(data), "--root", str(root))
    before = _stratum("plan", "--detailed-exitcode", *common, cwd=repo.path, env=env)
    assert before.returncode == 2, before.stdout + before.stderr           # one file to create
    applied = _stratum("apply", *common, cwd=repo.path, env=env)
    assert applied.returncode == 0, applied.stdout + applied.stderr
    after = _stratum("plan", "--detailed-exitcode", *common, cwd=repo.path, env=env)
    assert after.returncode == 0, after.stdout + after.stderr              # the index says it is applied
    with held(data / "index.duckdb"):
        busy = _stratum("plan", *common, cwd=repo.path, env=env)
    assert busy.returncode == 1
    assert "held by another process" in busy.stderr and "Traceback" not in busy.stdout + busy.stderr
