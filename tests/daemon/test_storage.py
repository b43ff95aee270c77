"""A data directory that refuses writes: the daemon stays up, not ready with the reason, keeps the last good
state and resumes by itself; at start it says so without a traceback; readers never rename the index.

The data directory is a real tmpfs mount (root is needed: chmod does not stop root). Linux refuses to remount a
file system read-only while a process has a file open for writing (the daemon's index), so under a running
daemon the writes are made to fail by filling that file system (ENOSPC, a real kernel refusal); the
read-only remount is used where it is possible, at start and for readers."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.fixtures import WorkRepo, bare_repo, infra_file
from tests.proc import ROOT, DaemonProc, cli_env, wait_for

pytestmark = pytest.mark.slow

STRATUM = [sys.executable, "-c", "from daemon.cli.main import main; main()"]


def _file(text: str) -> str:
    return infra_file(f'    a = {{ kind = \'file, path = "a.txt", content = "{text}\\n" }},')


@pytest.fixture
def mount(tmp_path: Path) -> Iterator[Path]:
    """A 48 MB tmpfs, unmounted afterwards."""
    if os.geteuid() != 0 or shutil.which("mount") is None:
        pytest.skip("needs root and mount(8) to make a real full or read-only file system")
    where = tmp_path / "data"
    where.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=48m", "tmpfs", str(where)], check=True)
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], check=False)


def _health(d: DaemonProc) -> tuple[int, dict[str, Any]]:
    port = d.call("status")["status"]["daemon"]["http_port"]
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=10) as reply:
            return reply.status, json.loads(reply.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read())


def _fill(where: Path) -> Path:
    filler = where / "filler"
    with filler.open("wb") as out:
        try:
            while True:
                out.write(b"\0" * 65536)
                out.flush()
        except OSError:
            pass
    return filler


def _stratum(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*STRATUM, *args], cwd=ROOT, env=cli_env(), capture_output=True, text=True, timeout=300)


def test_a_full_data_directory_makes_the_daemon_not_ready_and_it_resumes(mount: Path, tmp_path: Path) -> None:
    """Issue 16 item 11: writes to the data directory fail under a running daemon: it stays up, /healthz is
    503 with the reason and status says not ready, the last good state stays applied; once writes work again
    it is ready, the run the failure cut short is finalized, and the new commit is applied."""
    remote = bare_repo(tmp_path / "remote.git")
    work = WorkRepo(tmp_path / "work", remote=remote)
    first = work.commit({"infra/a.ncl": _file("one")})
    work.push()
    d = DaemonProc(str(remote), mount, tmp_path / "root")
    try:
        assert d.wait_run(first)["status"] == "succeeded"
        assert _health(d)[0] == 200
        filler = _fill(mount)
        second = work.commit({"infra/a.ncl": _file("two")})
        work.push()
        _, body = wait_for(lambda: (h := _health(d))[0] == 503 and h, 60)
        assert body["ready"] is False and "No space left on device" in body["reason"]
        status = d.call("status")["status"]
        assert status["daemon"]["ready"] is False and "No space left" in status["daemon"]["reason"]
        assert status["last_applied_revision"] == first
        cond = status["reconcilers"]["infra"]["conditions"][0]
        assert (cond["status"], cond["reason"]) == ("False", "StorageUnavailable")
        assert (tmp_path / "root/a.txt").read_text() == "one\n"
        text = _stratum("status", "--repo", str(remote), "--data-dir", str(mount))
        assert text.returncode == 0, text.stderr
        assert "NOT READY: " in text.stdout and "No space left on device" in text.stdout
        assert "Ready=False   StorageUnavailable" in text.stdout
        assert d.proc.poll() is None
        filler.unlink()
        wait_for(lambda: _health(d)[0] == 200, 60)
        wait_for(lambda: any(r["revision"] == second and r["status"] == "succeeded" for r in d.runs()), 60)
        assert (tmp_path / "root/a.txt").read_text() == "two\n"
        assert not [r for r in d.runs() if r["status"] == "running"]
        assert any(e["kind"] == "storage_recovered" for e in d.call("events")["events"])
    finally:
        assert d.stop() == 0


def test_a_read_only_data_directory_at_start_is_a_clear_error_and_readers_still_read(
        mount: Path, tmp_path: Path) -> None:
    """Started on a data directory mounted read-only: exit 1 with what is wrong and what to do, no traceback;
    `stratum log` and `status` read the history read-only, and nothing is renamed."""
    remote = bare_repo(tmp_path / "remote.git")
    work = WorkRepo(tmp_path / "work", remote=remote)
    first = work.commit({"infra/a.ncl": _file("one")})
    work.push()
    d = DaemonProc(str(remote), mount, tmp_path / "root")
    try:
        assert d.wait_run(first)["status"] == "succeeded"
    finally:
        assert d.stop() == 0
    before = sorted(p.name for p in mount.iterdir())
    subprocess.run(["mount", "-o", "remount,ro", str(mount)], check=True)
    try:
        started = _stratum("daemon", "--repo", str(remote), "--data-dir", str(mount), "--root",
                           str(tmp_path / "root"), "--log-format", "json")
        assert started.returncode == 1
        assert f"error: the data directory {mount} does not take writes (Read-only file system" in started.stderr
        assert "remount it read-write" in started.stderr
        assert "Traceback" not in started.stderr + started.stdout
        log = _stratum("log", "--repo", str(remote), "--data-dir", str(mount), "--output", "json")
        assert log.returncode == 0, log.stderr
        assert [r["revision"] for r in json.loads(log.stdout)] == [first]
        status = _stratum("status", "--repo", str(remote), "--data-dir", str(mount), "--output", "json")
        assert status.returncode == 0 and json.loads(status.stdout)["last_applied_revision"] == first
    finally:
        subprocess.run(["mount", "-o", "remount,rw", str(mount)], check=True)
    assert sorted(p.name for p in mount.iterdir()) == before


def test_readers_never_rename_an_index_even_a_corrupt_one(tmp_path: Path) -> None:
    """`stratum log` and `stratum status` on an index DuckDB cannot read: a clear error saying the daemon
    rebuilds it, exit 1, no traceback, and the file stays where and as it is (issue 9 item 2, 16 item 11)."""
    remote = bare_repo(tmp_path / "remote.git")
    WorkRepo(tmp_path / "work", remote=remote).commit({"infra/a.ncl": _file("one")})
    data = tmp_path / "data"
    data.mkdir()
    garbage = b"this is not a database" * 100
    (data / "index.duckdb").write_bytes(garbage)
    for verb in ("log", "status"):
        done = _stratum(verb, "--repo", str(remote), "--data-dir", str(data))
        assert done.returncode == 1, done.stdout
        assert "error: cannot read the index" in done.stderr and "start the daemon" in done.stderr
        assert "Traceback" not in done.stderr
    assert sorted(p.name for p in data.iterdir()) == ["index.duckdb"]
    assert (data / "index.duckdb").read_bytes() == garbage
