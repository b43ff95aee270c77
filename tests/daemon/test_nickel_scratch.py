"""The Nickel work tree: a private directory in memory (tmpfs) when there is room, emptied after each
evaluation; on disk otherwise; work trees of dead processes swept. `shm` is a temporary directory here
(what /dev/shm is to the evaluator), so the tests leave the host's /dev/shm alone."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from daemon.nickel.scratch import Scratch


def _dead_pid() -> int:
    proc = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True,
                          check=True, timeout=60)
    return int(proc.stdout)


def test_an_in_memory_work_tree_is_private_emptied_and_removed(tmp_path: Path) -> None:
    """Made in `shm` (mode 0700, named after this process), wiped to an empty directory, removed at close."""
    shm = tmp_path / "shm"
    shm.mkdir()
    scratch = Scratch.create(tmp_path / "disk", shm=shm)
    assert scratch.in_memory and scratch.path.parent == shm
    assert scratch.path.name.startswith(f"stratum-nickel-{os.getpid()}-")
    assert scratch.path.stat().st_mode & 0o777 == 0o700
    (scratch.path / "infra").mkdir()
    (scratch.path / "infra/a.ncl").write_text("{}")
    scratch.wipe()
    assert scratch.path.is_dir() and list(scratch.path.iterdir()) == []
    scratch.remove()
    assert not scratch.path.exists() and not (tmp_path / "disk").exists()


def test_without_a_usable_shm_the_work_tree_is_on_disk_and_kept(tmp_path: Path) -> None:
    """No shm directory: the work tree is the disk path, and wiping or removing it keeps the files (rewriting
    them is what costs on disk)."""
    scratch = Scratch.create(tmp_path / "disk", shm=tmp_path / "no-such-shm")
    assert not scratch.in_memory and scratch.path == tmp_path / "disk"
    (scratch.path / "a.ncl").write_text("{}")
    scratch.wipe()
    scratch.remove()
    assert (scratch.path / "a.ncl").exists()
    assert scratch.fits(10**9, 10**15)                  # the disk is not budgeted


def test_files_that_would_not_fit_in_memory_are_refused(tmp_path: Path) -> None:
    """More than the free space (less the spare) does not fit; a few small files do."""
    shm = tmp_path / "shm"
    shm.mkdir()
    scratch = Scratch.create(tmp_path / "disk", shm=shm)
    try:
        assert scratch.fits(10, 10_000)
        assert not scratch.fits(1, 10**15)
        assert not scratch.fits(10**12, 0)              # a page per file, however small
    finally:
        scratch.remove()


def test_work_trees_of_dead_processes_are_swept(tmp_path: Path) -> None:
    """A work tree named after a process that no longer runs (a killed evaluator) goes; one of a live process
    and anything not named like ours stay."""
    shm = tmp_path / "shm"
    dead = shm / f"stratum-nickel-{_dead_pid()}-abc"
    alive = shm / f"stratum-nickel-{os.getpid()}-def"
    other = shm / "someone-else"
    for d in (dead, alive, other):
        (d / "infra").mkdir(parents=True)
    scratch = Scratch.create(tmp_path / "disk", shm=shm)
    try:
        assert not dead.exists()
        assert alive.exists() and other.exists()
    finally:
        scratch.remove()
