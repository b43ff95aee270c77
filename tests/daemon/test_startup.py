"""stratumd start-up against what else touches its data directory: CLI readers, a backup script holding the
index, a taken HTTP port. Real processes throughout; the daemon must win or say clearly why it cannot."""

from __future__ import annotations

import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from daemon.cli.common import daemon_or_local
from daemon.service import control_socket as api
from tests.fixtures import WorkRepo, bare_repo, infra_file
from tests.proc import ROOT, DaemonProc, cli_env, wait_for

pytestmark = pytest.mark.slow

STRATUM = [sys.executable, "-c", "from daemon.cli.main import main; main()"]
STRATUMD = [sys.executable, "-c", "from daemon.cli.main import daemon_main; daemon_main()"]
FILE = infra_file('    motd = { kind = \'file, path = "etc/motd", content = "hello\\n" },')


@pytest.fixture
def remote(tmp_path: Path) -> tuple[Path, str]:
    """A bare repo with one applied-able commit, and that commit's id."""
    remote = bare_repo(tmp_path / "remote.git")
    work = WorkRepo(tmp_path / "work", remote=remote)
    rev = work.commit({"infra/a.ncl": FILE})
    work.push()
    return remote, rev


def _stratum(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*STRATUM, *args], cwd=ROOT, env=cli_env(),
                          capture_output=True, text=True, timeout=120)


def _first_run(remote: Path, data: Path, root: Path, rev: str) -> None:
    """Apply once and stop, so the index holds a history to read."""
    d = DaemonProc(str(remote), data, root)
    try:
        assert d.wait_run(rev)["status"] == "succeeded"
    finally:
        assert d.stop() == 0


def _holder(code: str) -> subprocess.Popen[str]:
    """A child process that runs `code`, prints `ready`, then holds what it opened until its stdin closes."""
    proc = subprocess.Popen([sys.executable, "-c", textwrap.dedent(code)], cwd=ROOT, env=cli_env(),
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
    return proc


def _release(proc: subprocess.Popen[str]) -> None:
    assert proc.stdin is not None and proc.stdout is not None
    proc.stdin.close()
    proc.wait(timeout=30)
    proc.stdout.close()


def test_a_backup_script_holding_the_index_read_only_only_delays_the_daemon(
        remote: tuple[Path, str], tmp_path: Path) -> None:
    """Issue 9 item 3: a process that knows nothing of our locks (a backup script) holds the index open
    read-only while stratumd starts; the daemon waits (bounded) instead of exiting 'a daemon is running',
    and comes up with its history once the file is released."""
    repo, rev = remote
    data, root = tmp_path / "data", tmp_path / "root"
    _first_run(repo, data, root, rev)
    backup = _holder(f"""
        import sys, duckdb
        con = duckdb.connect({str(data / "index.duckdb")!r}, read_only=True)
        con.execute("SELECT count(*) FROM runs").fetchall()
        print("ready", flush=True)
        sys.stdin.readline()
        con.close()
    """)
    log = (tmp_path / "late.log").open("wb")
    daemon = subprocess.Popen(
        [*STRATUMD, "--repo", str(repo), "--data-dir", str(data),
         "--root", str(root), "--log-format", "json", "--drift-interval", "0"],
        cwd=ROOT, env=cli_env(), stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    try:
        wait_for(lambda: "index_busy" in (tmp_path / "late.log").read_text() or daemon.poll() is not None, 60)
        assert daemon.poll() is None, (tmp_path / "late.log").read_text()
        _release(backup)
        wait_for(lambda: daemon.poll() is not None or api.daemon_running(data / "stratumd.sock"), 60)
        assert daemon.poll() is None, (tmp_path / "late.log").read_text()
        runs = api.call(data / "stratumd.sock", "log")["runs"]
        assert [r["revision"] for r in runs] == [rev]
    finally:
        if backup.poll() is None:
            _release(backup)
        daemon.terminate()
        daemon.wait(timeout=60)
        log.close()


def test_a_cli_reader_mid_read_while_the_daemon_starts(remote: tuple[Path, str], tmp_path: Path) -> None:
    """A reader inside its read (holding the index as `stratum status` does) when stratumd starts: the daemon
    waits that read out and starts; the reader's answer is the recorded history."""
    repo, rev = remote
    data, root = tmp_path / "data", tmp_path / "root"
    _first_run(repo, data, root, rev)
    reader = _holder(f"""
        import sys
        from pathlib import Path
        from daemon.index.store import Index
        from daemon.service.lock import shared_read
        with shared_read(Path({str(data)!r})) as free:
            assert free
            index = Index(Path({str(data / "index.duckdb")!r}), read_only=True)
            print("ready", flush=True)
            sys.stdin.readline()
            index.close()
    """)
    log = (tmp_path / "late.log").open("wb")
    daemon = subprocess.Popen(
        [*STRATUMD, "--repo", str(repo), "--data-dir", str(data),
         "--root", str(root), "--log-format", "json", "--drift-interval", "0"],
        cwd=ROOT, env=cli_env(), stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    try:
        wait_for(lambda: (data / "stratumd.starting").exists() or daemon.poll() is not None, 60)
        # A new reader now does not open the index: it waits for the daemon (which waits for the old reader).
        _release(reader)
        wait_for(lambda: daemon.poll() is not None or api.daemon_running(data / "stratumd.sock"), 60)
        assert daemon.poll() is None, (tmp_path / "late.log").read_text()
        status = _stratum("status", "--repo", str(repo), "--data-dir", str(data), "--output", "json")
        assert status.returncode == 0, status.stderr
        assert '"pid"' in status.stdout and rev in status.stdout
    finally:
        if reader.poll() is None:
            _release(reader)
        daemon.terminate()
        daemon.wait(timeout=60)
        log.close()


def test_a_loop_polling_status_never_keeps_the_daemon_down(remote: tuple[Path, str], tmp_path: Path) -> None:
    """Two monitoring loops run `stratum status` back to back while stratumd starts: it starts every time
    (three restarts), and every status answer is either the daemon's or the index's, never an error."""
    repo, rev = remote
    data, root = tmp_path / "data", tmp_path / "root"
    _first_run(repo, data, root, rev)
    loop = textwrap.dedent(f"""
        import os, subprocess, sys
        for _ in range(40):
            if os.path.exists({str(tmp_path / "stop")!r}):
                break
            done = subprocess.run([*{STRATUM!r}, "status", "--repo", {str(repo)!r},
                                   "--data-dir", {str(data)!r}, "--output", "json"], capture_output=True, text=True)
            if done.returncode != 0:
                print("FAILED", done.stderr, flush=True)
        print("done", flush=True)
    """)
    pollers = [subprocess.Popen([sys.executable, "-c", loop], cwd=ROOT, env=cli_env(), stdout=subprocess.PIPE,
                                stdin=subprocess.DEVNULL, text=True) for _ in range(2)]
    try:
        for _ in range(3):
            d = DaemonProc(str(repo), data, root)     # fails the test if the daemon exits during start-up
            assert d.call("status")["status"]["last_applied_revision"] == rev
            assert d.stop() == 0
    finally:
        (tmp_path / "stop").touch()
        outputs = [p.communicate(timeout=120)[0] for p in pollers]
    assert not any("FAILED" in out for out in outputs), outputs


def test_a_taken_http_port_is_a_clear_error(remote: tuple[Path, str], tmp_path: Path) -> None:
    """Issue 9 item 5: stratumd on a port another process listens on exits 1 naming the address and the
    `http_listen` setting, with no traceback, and leaves the data directory usable."""
    repo, _ = remote
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        done = _stratum("daemon", "--repo", str(repo), "--data-dir", str(tmp_path / "data"), "--root",
                        str(tmp_path / "root"), "--http-listen", f"127.0.0.1:{port}", "--log-format", "json")
    assert done.returncode == 1
    assert f"error: cannot listen for HTTP on 127.0.0.1:{port}: Address already in use" in done.stderr
    assert "http_listen" in done.stderr
    assert "Traceback" not in done.stderr + done.stdout
    assert not (tmp_path / "data/stratumd.sock").exists()
    assert not (tmp_path / "data/stratumd.starting").exists()


def test_a_verb_opens_nothing_while_a_daemon_is_starting(tmp_path: Path) -> None:
    """While a live process has announced itself as a starting daemon (stratumd.starting), a CLI verb with no
    daemon to ask (status, log, drift) never runs its local read: it waits for the socket, bounded, then says
    why; once the mark is gone it reads locally."""
    from daemon.errors import LockError
    from daemon.settings import load_settings

    data = tmp_path / "data"
    data.mkdir()
    settings = load_settings({"repo": str(tmp_path), "data_dir": data})
    starting = subprocess.Popen(["sleep", "60"])
    try:
        (data / "stratumd.starting").write_text(str(starting.pid))
        calls: list[str] = []
        with pytest.raises(LockError) as err:
            daemon_or_local(settings, lambda sock: "asked", lambda: calls.append("local"), wait=0.5)
        assert calls == [] and "no daemon answered" in err.value.what
    finally:
        starting.kill()
        starting.wait()
    assert daemon_or_local(settings, lambda sock: "asked", lambda: "local", wait=0.5) == "local"
