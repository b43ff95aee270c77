"""What an idle daemon gives back (daemon/service/idle.py; issue 10: idle memory): its Nickel workers, the index's
DuckDB connection and the heap, once quiet; everything works again on the next use. Real DuckDB files, real
worker processes, a real stratumd read through /proc (its children, its open files); no memory is asserted."""

from __future__ import annotations

import http.client
import json
import os
import subprocess
import sys
from pathlib import Path

import duckdb

from daemon.index.store import Index
from daemon.nickel.evaluator import Evaluator
from daemon.service.idle import IdleRelease
from daemon.settings import load_settings
from reconcilers.base import Action
from tests.fixtures import WorkRepo, bare_repo, infra_file
from tests.proc import ROOT, DaemonProc, wait_for


def _open_files(pid: int) -> list[str]:
    out = []
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            out.append(os.readlink(f"/proc/{pid}/fd/{fd}"))
        except OSError:
            continue                                  # closed meanwhile
    return out


def _holds_index(pid: int, data_dir: Path) -> bool:
    index = str(data_dir / "index.duckdb")
    return any(path in (index, index + ".wal") for path in _open_files(pid))


def _children(pid: int) -> list[int]:
    out: list[int] = []
    for task in os.listdir(f"/proc/{pid}/task"):
        try:
            out += [int(c) for c in Path(f"/proc/{pid}/task/{task}/children").read_text().split()]
        except OSError:
            continue
    return out


def test_a_released_index_closes_the_file_and_opens_it_again_on_use(tmp_path: Path) -> None:
    """release() flushes the journal and closes DuckDB's file (another process can then open it, which it could
    not while held); state values read before answer from memory without opening it; the next query opens it
    again and says so through on_open; inside a transaction nothing is released."""
    path = tmp_path / "index.duckdb"
    index = Index(path)
    opened: list[int] = []
    index.on_open = lambda: opened.append(1)
    index.set_state("last_applied_revision", "abc")
    index.checkpoint("run1", 1, Action(id="a", reconciler="infra", kind="create", target="t", summary="s"),
                     "succeeded", 0.0)                                   # journaled, not yet in DuckDB
    with index.transaction():
        assert index.release() is False                                  # a transaction keeps the connection
    assert index.is_open and index.release() is True and not index.is_open
    # The file is closed: a second writer could open it now (DuckDB refuses that while a connection holds it).
    other = duckdb.connect(str(path))
    assert other.execute("SELECT count(*) FROM actions").fetchone() == (1,)   # flushed before closing
    other.close()
    assert index.get_state("last_applied_revision") == "abc"
    assert not index.is_open and opened == []                           # answered from memory
    assert index.query("SELECT count(*) FROM actions") == [(1,)]         # opens again
    assert index.is_open and opened == [1] and index.reopened == 1
    index.execute("UPDATE state SET value = 'def' WHERE key = 'last_applied_revision'")
    assert index.get_state("last_applied_revision") == "def"            # a write by SQL is not hidden by the copy
    index.close()


def test_a_released_evaluator_ends_its_workers_and_the_next_evaluation_starts_one(tmp_path: Path) -> None:
    """release() kills and reaps the Nickel worker an evaluation left running and closes the value cache's
    SQLite file; evaluating again works."""
    evaluator = Evaluator(tmp_path / "cache")
    cache = str(tmp_path / "cache" / "values" / "values.sqlite")
    try:
        assert json.loads(evaluator.run_source("{ a = 1 }", [])["ok"]) == {"a": 1}
        proc = evaluator._workers[0].proc
        assert proc is not None and proc.poll() is None and evaluator.workers_running == 1
        assert evaluator.release() is True
        assert evaluator.workers_running == 0 and proc.returncode is not None      # reaped, not a zombie
        assert cache not in _open_files(os.getpid())
        assert json.loads(evaluator.run_source("{ b = 2 }", [])["ok"]) == {"b": 2}
        assert evaluator.workers_running == 1
    finally:
        evaluator.close()


def _health(port: int) -> tuple[int, dict[str, object]]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        conn.request("GET", "/healthz")
        resp = conn.getresponse()
        return resp.status, json.loads(resp.read())
    finally:
        conn.close()


def test_an_idle_daemon_releases_its_workers_and_index_and_serves_again(tmp_path: Path) -> None:
    """After a run and a short quiet, the daemon has no child process left (the Nickel workers stayed 60 s
    before), holds the index file closed and has not loaded Cedar for its listener's built-in policy; /healthz
    answers from memory without opening the index; `status` opens it, and it is released again; the next
    push runs with a fresh worker."""
    remote = bare_repo(tmp_path / "remote.git")
    work = WorkRepo(tmp_path / "work", remote=remote)
    first = work.commit({"infra/a.ncl": infra_file('    a = { kind = \'file, path = "a", content = "1\\n" },')})
    work.push()
    data = tmp_path / "data"
    d = DaemonProc(str(remote), data, tmp_path / "root")
    pid = d.proc.pid
    try:
        assert d.wait_run(first)["status"] == "succeeded"
        wait_for(lambda: not _children(pid) and not _holds_index(pid, data), 30)
        # The listener's built-in policy waits for a request to decide: Cedar is not loaded (~10 MB).
        assert "cedarpy" not in d.call("modules")["modules"]
        # `status` opens the index again (the release counts once its heap trim is done too) ...
        released = wait_for(lambda: d.call("status")["status"]["daemon"]["idle_releases"], 30)
        wait_for(lambda: not _holds_index(pid, data), 30)               # ... and it is released again
        port = d.call("status")["status"]["daemon"]["http_port"]
        wait_for(lambda: not _holds_index(pid, data), 30)
        code, body = _health(port)
        assert code == 200 and body["last_applied_revision"] == first
        assert not _holds_index(pid, data)                              # the probe did not open it
        wait_for(lambda: d.call("status")["status"]["daemon"]["idle_releases"] > released, 30)
        second = work.commit({"infra/a.ncl": infra_file('    a = { kind = \'file, path = "a", content = "2\\n" },')})
        work.push()
        assert d.wait_run(second)["status"] == "succeeded"
        assert (tmp_path / "root/a").read_text() == "2\n"
        wait_for(lambda: not _children(pid) and not _holds_index(pid, data), 30)
    finally:
        assert d.stop() == 0


# Big buffers freed while small long-lived objects sit above them on the heap: the daemon's pattern (a worker's
# reply of megabytes decoded, then the run's state kept). Prints the private memory kept after freeing them.
_HEAP_PATTERN = """
import os, sys
from daemon.service.idle import tune_malloc
def anon():
    fields = dict(line.split(":", 1) for line in open(f"/proc/{os.getpid()}/status"))
    return int(fields["RssAnon"].split()[0]) // 1024
if sys.argv[1] == "tuned":
    assert tune_malloc()
x = bytearray(4 << 20); del x          # a freed big block: glibc's dynamic threshold goes up
base = anon()
big, small = [], []
for _ in range(40):
    big.append(bytearray(1 << 20))
    small.append(bytearray(75 * 1024))
del big
print(anon() - base)
"""


def test_the_daemons_malloc_settings_give_freed_big_buffers_back() -> None:
    """With tune_malloc (called by the daemon before its threads start) 40 MB of freed 1 MB buffers go back
    to the system when freed; with glibc's defaults they stay resident (the control) until a malloc_trim (the
    idle release's, seconds later; a run's peak is held that long, or for a whole run)."""
    kept = {mode: int(subprocess.run([sys.executable, "-c", _HEAP_PATTERN, mode], cwd=ROOT, capture_output=True,
                                     text=True, check=True).stdout) for mode in ("default", "tuned")}
    assert kept["default"] >= 20, kept          # the mechanism this guards against exists here
    assert kept["tuned"] <= 10, kept


def test_idle_release_follows_the_host_setting_and_zero_turns_it_off(tmp_path: Path) -> None:
    """`idle_release` (stratumd.toml, STRATUM_IDLE_RELEASE) is the quiet before a release; 0 never arms one, so
    a host that wants every push at warm latency keeps its index and workers."""
    assert load_settings({}, env={"STRATUM_IDLE_RELEASE": "0", "STRATUM_DATA_DIR": str(tmp_path)}).idle_release == 0
    assert load_settings({}, env={"STRATUM_DATA_DIR": str(tmp_path)}).idle_release == 2.0
    index = Index(tmp_path / "index.duckdb")
    evaluator = Evaluator(tmp_path / "cache", keep_values=False)
    now = [100.0]
    try:
        on = IdleRelease(delay=2.0, clock=lambda: now[0])
        on.after_wake(index, evaluator, worked=True)
        assert on.timeout() == 2.0 and not on.due()
        now[0] += 2.0
        assert on.due() and on.release(index, evaluator) and not index.is_open and on.released == 1
        index.query("SELECT 1")                                     # used again: held, armed again
        on.after_wake(index, evaluator, worked=True)
        assert on.timeout() == 2.0
        off = IdleRelease(delay=0.0, clock=lambda: now[0])
        off.after_wake(index, evaluator, worked=True)
        now[0] += 3600
        assert off.timeout() is None and not off.due() and index.is_open
    finally:
        evaluator.close()
        index.close()
