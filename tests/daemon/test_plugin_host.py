"""The kernel's VerbHost (daemon/cli/plugin_host.py): a plugin verb gets the repository and index of its options."""

from __future__ import annotations

from pathlib import Path

from daemon.cli.plugin_host import PluginHost
from daemon.index.store import Index
from tests.fixtures import WorkRepo


def test_workspace_opens_the_repo_and_index_of_the_options_and_closes_the_index(tmp_path: Path) -> None:
    repo = WorkRepo(tmp_path / "ops")
    head = repo.commit({"README.md": "ops\n"}, "first")
    data = tmp_path / "data"
    with PluginHost().workspace({"repo": str(repo.path), "data_dir": str(data)}) as ws:
        assert ws.source.resolve("main") == head
        assert ws.data_dir == data and ws.daemon_runs is None
        ws.index.migrate("plugin_test", ["CREATE TABLE plugin_test_t (v TEXT)"])
        ws.index.execute("INSERT INTO plugin_test_t VALUES ('kept')")
    # Closed at the end of the block: another writer can open the file now, and sees the row.
    again = Index(data / "index.duckdb")
    try:
        assert again.query("SELECT v FROM plugin_test_t") == [("kept",)]
    finally:
        again.close()


def test_workspace_beside_a_holder_of_the_index_uses_a_private_one(tmp_path: Path) -> None:
    """While another process (the daemon) holds index.duckdb, a verb still runs, on a private index, and asks
    the daemon for its runs."""
    repo = WorkRepo(tmp_path / "ops")
    repo.commit({"README.md": "ops\n"}, "first")
    data = tmp_path / "data"
    data.mkdir()
    import subprocess
    import sys

    holder = subprocess.Popen([sys.executable, "-c", "import duckdb, sys, time; c = duckdb.connect(sys.argv[1]); "
                               "print('held', flush=True); time.sleep(120)", str(data / "index.duckdb")],
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        with PluginHost().workspace({"repo": str(repo.path), "data_dir": str(data)}) as ws:
            assert ws.daemon_runs is not None
            assert (data / "knowledge-cli.duckdb").exists()
    finally:
        holder.kill()
        holder.wait(30)
        holder.stdout.close()
