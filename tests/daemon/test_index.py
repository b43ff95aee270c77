"""The DuckDB index: versioned migrations, corrupt files rebuilt, one writer, and the records of runs."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import duckdb
import pytest

from daemon.errors import IndexError_, LockError
from daemon.git.source import CommitInfo
from daemon.index.store import CORE_MIGRATIONS, Index, ensure_schema
from reconcilers.base import Action, InventoryItem, Problem

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def index(tmp_path: Path) -> Iterator[Index]:
    """A fresh index file, closed afterwards."""
    idx = Index(tmp_path / "data" / "index.duckdb")
    yield idx
    idx.close()


def _action(aid: str, deps: tuple[str, ...] = (), compensation: str | None = None) -> Action:
    return Action(
        id=f"infra:{aid}",
        reconciler="infra",
        kind="create",
        target=aid,
        summary=f"create {aid}",
        change='{"x":1}',
        depends_on=deps,
        compensation=compensation,
    )


# -- migrations -----------------------------------------------------------------------------------------
def test_a_new_index_is_at_the_latest_core_version(index: Index) -> None:
    """Opening a new file applies every core migration and records the version."""
    assert index.query("SELECT version FROM schema_version WHERE component = 'core'") == [
        (len(CORE_MIGRATIONS),)
    ]
    tables = {r[0] for r in index.query("SELECT table_name FROM information_schema.tables")}
    assert {
        "revisions",
        "runs",
        "actions",
        "inventory",
        "events",
        "resources",
        "changed_files",
        "state",
    } <= tables


def test_reopening_is_idempotent_and_keeps_data(tmp_path: Path) -> None:
    """A second open applies nothing again and finds the data written before."""
    path = tmp_path / "index.duckdb"
    first = Index(path)
    first.set_state("k", "v")
    first.close()
    second = Index(path)
    try:
        assert second.get_state("k") == "v"
        assert second.rebuilt_reason is None
        assert second.query("SELECT count(*) FROM schema_version") == [(1,)]
    finally:
        second.close()


def test_component_migrations_apply_only_what_is_new(tmp_path: Path) -> None:
    """ensure_schema applies migrations past the recorded version, once, in order."""
    con = duckdb.connect(str(tmp_path / "m.duckdb"))
    try:
        v1 = ("CREATE TABLE kb (id INTEGER); INSERT INTO kb VALUES (1)",)
        assert ensure_schema(con, "kb", v1) == 1
        assert ensure_schema(con, "kb", v1) == 1
        assert con.execute("SELECT count(*) FROM kb").fetchone() == (1,)
        v2 = (*v1, "ALTER TABLE kb ADD COLUMN name TEXT; INSERT INTO kb VALUES (2, 'two')")
        assert ensure_schema(con, "kb", v2) == 2
        assert con.execute("SELECT id, name FROM kb ORDER BY id").fetchall() == [(1, None), (2, "two")]
        assert ensure_schema(con, "other", ("CREATE TABLE other (x INTEGER)",)) == 1
        rows = con.execute("SELECT component, version FROM schema_version ORDER BY component").fetchall()
        assert rows == [("kb", 2), ("other", 1)]
    finally:
        con.close()


def test_a_failing_migration_is_rolled_back_whole(tmp_path: Path) -> None:
    """A migration whose second statement fails leaves neither its first statement nor a new version."""
    con = duckdb.connect(str(tmp_path / "m.duckdb"))
    try:
        ensure_schema(con, "kb", ("CREATE TABLE a (x INTEGER)",))
        broken = ("CREATE TABLE a (x INTEGER)", "CREATE TABLE b (x INTEGER); SELECT * FROM no_such_table")
        with pytest.raises(duckdb.Error):
            ensure_schema(con, "kb", broken)
        assert con.execute("SELECT version FROM schema_version WHERE component = 'kb'").fetchone() == (1,)
        tables = {r[0] for r in con.execute("SELECT table_name FROM information_schema.tables").fetchall()}
        assert "b" not in tables
    finally:
        con.close()


# -- corrupt and locked files ---------------------------------------------------------------------------
def test_a_corrupt_file_is_moved_aside_and_rebuilt(tmp_path: Path, capfd: pytest.CaptureFixture[str]) -> None:
    """A garbage index file is kept beside as .corrupt-*, a new index opens, and why is said on stderr and
    recorded as an event."""
    path = tmp_path / "index.duckdb"
    garbage = b"this is not a duckdb file\x00" * 200
    path.write_bytes(garbage)
    idx = Index(path)
    try:
        assert idx.rebuilt_reason is not None
        assert str(path) in idx.rebuilt_reason and "rebuilt from git" in idx.rebuilt_reason
        [aside] = list(tmp_path.glob("index.duckdb.corrupt-*"))
        assert aside.read_bytes() == garbage
        assert str(aside) in idx.rebuilt_reason
        assert f"stratum: warning: {idx.rebuilt_reason}" in capfd.readouterr().err
        assert idx.query("SELECT kind, subject FROM events") == [("index_rebuilt", str(aside))]
        idx.set_state("works", "yes")
        assert idx.get_state("works") == "yes"
    finally:
        idx.close()


def test_a_truncated_index_is_rebuilt(tmp_path: Path) -> None:
    """An index cut in half (a full disk, a bad copy) is treated like any corrupt file."""
    path = tmp_path / "index.duckdb"
    idx = Index(path)
    idx.set_state("k", "v")
    idx.close()
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 3])
    again = Index(path)
    try:
        assert again.rebuilt_reason is not None
        assert again.get_state("k") is None
    finally:
        again.close()


def test_a_corrupt_file_opened_read_only_is_an_index_error(tmp_path: Path) -> None:
    """Read-only opens never move files: a corrupt index is an IndexError_ that says to start the daemon."""
    path = tmp_path / "index.duckdb"
    path.write_bytes(b"garbage" * 100)
    with pytest.raises(IndexError_) as err:
        Index(path, read_only=True)
    assert "start the daemon" in err.value.hint
    assert path.read_bytes() == b"garbage" * 100


def _free_blocks_at_the_end(path: Path) -> None:
    """Leave `path` a healthy index whose DuckDB block count (free blocks included) exceeds the file's size:
    rows written and checkpointed, then deleted and checkpointed again (DuckDB truncates the file)."""
    idx = Index(path)
    idx.set_state("history", "kept")
    idx.close()
    con = duckdb.connect(str(path))           # DuckDB itself leaves the file this way: nothing is damaged
    con.execute("CREATE TABLE filler (a TEXT)")
    con.execute("INSERT INTO filler SELECT repeat('x', 200) || range FROM range(50000)")
    con.execute("CHECKPOINT")
    con.execute("DELETE FROM filler")
    con.execute("CHECKPOINT")
    con.close()


def test_a_healthy_index_whose_block_count_exceeds_its_size_is_never_moved_aside(tmp_path: Path) -> None:
    """Issue 9 item 2: free blocks make DuckDB's block count x block size larger than the file; that is no
    truncation. The index opens as it is: nothing moved aside, the history kept."""
    path = tmp_path / "index.duckdb"
    _free_blocks_at_the_end(path)
    con = duckdb.connect(str(path), read_only=True)
    total, size = con.execute("SELECT total_blocks, block_size FROM pragma_database_size()").fetchone()  # type: ignore[misc]
    con.close()
    assert 3 * 4096 + total * size > path.stat().st_size, "the setup must reproduce the issue's file"
    for read_only in (True, False):
        idx = Index(path, read_only=read_only)
        try:
            assert idx.rebuilt_reason is None
            assert idx.get_state("history") == "kept"
        finally:
            idx.close()
    assert not list(tmp_path.glob("*.corrupt-*"))


@pytest.fixture
def mount(tmp_path: Path) -> Iterator[Path]:
    """A real tmpfs of 8 MB (root is needed to mount; chmod does not stop root, so this is the real way to make
    writes fail here)."""
    if os.geteuid() != 0 or shutil.which("mount") is None:
        pytest.skip("needs root and mount(8) to make a real read-only or full file system")
    where = tmp_path / "mnt"
    where.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=8m", "tmpfs", str(where)], capture_output=True)
    assert done.returncode == 0, f"mount failed: {done.stderr!r}"
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], check=False)


def test_a_read_only_file_system_is_an_io_error_never_corruption(mount: Path) -> None:
    """Issue 16 item 11: an index on a file system remounted read-only is reported as an I/O problem with what
    to do; the file is neither moved nor rebuilt, and reads still work read-only."""
    path = mount / "data" / "index.duckdb"
    idx = Index(path)
    idx.set_state("history", "kept")
    idx.close()
    before = path.read_bytes()
    subprocess.run(["mount", "-o", "remount,ro", str(mount)], check=True)
    try:
        with pytest.raises(IndexError_) as err:
            Index(path)
        assert "Read-only file system" in err.value.what or "read-only" in err.value.what.lower()
        assert "mount" in err.value.hint and "left as it is" in err.value.hint
        reader = Index(path, read_only=True)
        try:
            assert reader.get_state("history") == "kept"
        finally:
            reader.close()
    finally:
        subprocess.run(["mount", "-o", "remount,rw", str(mount)], check=True)
    assert path.read_bytes() == before
    assert not list(path.parent.glob("*.corrupt-*"))


def test_a_full_disk_is_an_io_error_never_corruption(mount: Path) -> None:
    """ENOSPC while opening is reported as such; nothing is moved aside."""
    path = mount / "index.duckdb"
    filler = mount / "filler"
    with filler.open("wb") as out:
        try:
            while True:
                out.write(b"\0" * 65536)
                out.flush()
        except OSError:
            pass
    with pytest.raises(IndexError_) as err:
        Index(path)
    assert "No space left" in err.value.what
    assert not list(mount.glob("*.corrupt-*"))


def test_a_second_process_gets_a_lock_error(tmp_path: Path) -> None:
    """While one process holds the index, opening it elsewhere is a LockError that says a daemon runs."""
    path = tmp_path / "index.duckdb"
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            textwrap.dedent(f"""
            import sys
            from pathlib import Path
            from daemon.index.store import Index
            idx = Index(Path({str(path)!r}))
            idx.set_state("owner", "child")
            print("ready", flush=True)
            sys.stdin.readline()
            idx.close()
        """),
        ],
        cwd=ROOT,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "ready"
        with pytest.raises(LockError) as err:
            Index(path)
        assert str(path) in err.value.what and "daemon" in err.value.hint
        with pytest.raises(LockError):
            Index(path, read_only=True)
        assert path.exists() and not list(tmp_path.glob("*.corrupt-*"))
    finally:
        assert holder.stdin is not None
        holder.stdin.close()
        holder.wait(timeout=30)
        holder.stdout.close()  # type: ignore[union-attr]
    idx = Index(path)
    try:
        assert idx.get_state("owner") == "child"
    finally:
        idx.close()


# -- records ----------------------------------------------------------------------------------------------
def test_state_is_set_replaced_and_deleted(index: Index) -> None:
    """The key/value state table stores, replaces and deletes values."""
    assert index.get_state("last_good_revision") is None
    index.set_state("last_good_revision", "a" * 40)
    index.set_state("last_good_revision", "b" * 40)
    assert index.get_state("last_good_revision") == "b" * 40
    index.set_state("last_good_revision", None)
    assert index.get_state("last_good_revision") is None


def test_commits_are_recorded_once(index: Index) -> None:
    """record_commits counts only new commits and keeps their metadata; revision status is updatable."""
    commits = [CommitInfo(f"{i:040x}", (), "A", "a@x", 1000 + i, f"msg {i}") for i in range(3)]
    assert index.record_commits(commits[:2]) == 2
    assert index.record_commits(commits) == 1
    index.set_revision_status(commits[0].id, "applied", "run1")
    rows = index.query("SELECT id, status, run_id, message FROM revisions ORDER BY committed_at")
    assert rows == [
        (commits[0].id, "applied", "run1", "msg 0"),
        (commits[1].id, "seen", None, "msg 1"),
        (commits[2].id, "seen", None, "msg 2"),
    ]


def test_runs_are_opened_checkpointed_and_finalized(index: Index) -> None:
    """A run starts `running`, its checkpoints round-trip actions (all but the change payload, which is never
    stored) in seq order, finish records it."""
    run_id = index.start_run("c" * 40, "test", "b" * 40)
    a = _action("a", compensation='{"run":"undo"}')
    b = _action("b", ("infra:a",))
    index.set_run_plan(run_id, [a, b])
    index.checkpoint(run_id, 1, a, "done", 1.0, "ok")
    index.checkpoint(run_id, 2, b, "failed", 2.0, "boom")
    assert index.run_actions(run_id) == [(replace(a, change="{}"), "done"), (replace(b, change="{}"), "failed")]
    assert all(json.loads(r[0])["change"] == "{}" for r in index.query("SELECT action FROM actions"))
    assert [r["id"] for r in index.interrupted_runs()] == [run_id]
    index.finish_run(run_id, "rolled_back", "b failed", [Problem("bad", "infra/a.ncl", 3, 7)])
    assert index.interrupted_runs() == []
    [row] = index.query_dicts("SELECT status, message, problems, base_revision, duration_ms FROM runs")
    assert row["status"] == "rolled_back" and row["message"] == "b failed"
    assert row["base_revision"] == "b" * 40 and row["duration_ms"] >= 0
    assert '"line": 3' in row["problems"] and '"path": "infra/a.ncl"' in row["problems"]


def test_a_checkpoint_replaces_the_same_seq(index: Index) -> None:
    """Writing seq n again (started, then done) keeps one row with the last status."""
    run_id = index.start_run("c" * 40, "test", None)
    a = _action("a")
    index.checkpoint(run_id, 1, a, "started", 1.0)
    index.checkpoint(run_id, 1, a, "done", 1.0)
    assert index.run_actions(run_id) == [(replace(a, change="{}"), "done")]


def test_inventory_is_put_replaced_and_dropped(index: Index) -> None:
    """Inventory items are keyed by (reconciler, id): put replaces, drop forgets, filters by reconciler."""
    index.put_inventory(InventoryItem("infra", "motd", "file", '{"path":"etc/motd"}'), "r1")
    index.put_inventory(InventoryItem("infra", "motd", "file", '{"path":"etc/motd2"}'), "r2")
    index.put_inventory(InventoryItem("vault", "kv", "secret", "{}"), "r2")
    assert index.inventory("infra") == [InventoryItem("infra", "motd", "file", '{"path":"etc/motd2"}')]
    assert len(index.inventory()) == 2
    index.drop_inventory("infra", "motd")
    assert index.inventory("infra") == []
    assert [i.resource_id for i in index.inventory()] == ["kv"]


def test_the_writers_inventory_follows_its_own_writes_and_rollbacks(index: Index) -> None:
    """The writer answers inventory from a copy kept in step with its writes: a put or drop shows at once, a
    failed transaction and a raw statement on the table make it read the file again, and every answer
    matches the table."""

    def table() -> list[str]:
        return [str(r[0]) for r in index.query("SELECT resource_id FROM inventory ORDER BY 1")]

    index.put_inventory(InventoryItem("infra", "a", "file", '{"path":"a"}'), "r1")
    assert [i.resource_id for i in index.inventory("infra")] == ["a"]            # the copy is made here
    index.put_inventory(InventoryItem("infra", "b", "file", '{"path":"b"}'), "r1")
    index.drop_inventory("infra", "a")
    assert [i.resource_id for i in index.inventory()] == ["b"] == table()
    with pytest.raises(RuntimeError), index.transaction():
        index.put_inventory(InventoryItem("infra", "c", "file", '{"path":"c"}'), "r2")
        index.drop_inventory("infra", "b")
        assert sorted(i.resource_id for i in index.inventory()) == ["c"]
        raise RuntimeError("the run failed")
    assert sorted(i.resource_id for i in index.inventory()) == table()
    index.execute("INSERT INTO inventory VALUES ('vault', 'kv', 'secret', '{}', 'r3', 0)")
    assert "kv" in table()
    assert sorted(i.resource_id for i in index.inventory()) == table()


def test_resources_changed_files_and_events_are_recorded(index: Index) -> None:
    """Per-revision resources replace earlier rows; changed files and events are appended."""
    index.record_resources("r1", [("infra", "a", "file", "etc/a", "h1")])
    index.record_resources(
        "r1", [("infra", "a", "file", "etc/a", "h2"), ("infra", "b", "directory", "b", "h3")]
    )
    assert index.query("SELECT resource_id, spec_hash FROM resources ORDER BY 1") == [
        ("a", "h2"),
        ("b", "h3"),
    ]
    index.record_changed_files("r1", [("infra/a.ncl", "blob1", "added"), ("x", "blob2", "deleted")])
    index.record_changed_files("r1", [])
    assert index.query("SELECT path, change FROM changed_files ORDER BY 1") == [
        ("infra/a.ncl", "added"),
        ("x", "deleted"),
    ]
    index.event("drift", "motd changed", reconciler="infra", subject="etc/motd", revision="r1")
    assert index.query("SELECT kind, reconciler, subject, message FROM events") == [
        ("drift", "infra", "etc/motd", "motd changed")
    ]


def test_journaled_checkpoints_survive_a_killed_process(tmp_path: Path) -> None:
    """Checkpoints and inventory written just before the process dies (no flush, no close) are in the index
    when it is opened again: the journal is replayed."""
    script = f"""
import os
from pathlib import Path
from daemon.index.store import Index
from reconcilers.base import Action, InventoryItem
idx = Index(Path({str(tmp_path / "index.duckdb")!r}))
run = idx.start_run("rev", "test", None)
a = Action(id="infra:x", reconciler="infra", kind="create", target="x", summary="create x")
idx.checkpoint(run, 1, a, "done", 0.0)
idx.put_inventory(InventoryItem("infra", "x", "file", "{{}}"), "rev")
print(run, flush=True)
os._exit(9)
"""
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          cwd=Path(__file__).resolve().parents[2], check=False)
    assert proc.returncode == 9, proc.stderr
    run_id = proc.stdout.strip()
    idx = Index(tmp_path / "index.duckdb")
    try:
        assert [(a.id, st) for a, st in idx.run_actions(run_id)] == [("infra:x", "done")]
        assert [i.resource_id for i in idx.inventory("infra")] == ["x"]
        assert (tmp_path / "index.duckdb.journal").stat().st_size == 0
    finally:
        idx.close()
