"""A one-shot `stratum apply` (no daemon) never waits for the embedding model: it stores the knowledge nodes,
marks them pending and exits; the next process that runs the model anyway (`stratum kb search`, or the daemon
at start) embeds them. Real processes, a real template repo (`stratum init`), a real DuckDB index and the
shipped model.

Before the change, the apply's process started the model's worker and waited for every node's vectors at exit
(about 4 s of CPU for the template on this machine), so these tests found vectors right after the apply.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import duckdb
import pytest

from tests.fixtures import GIT_ENV

PENDING = "knowledge.embedding_pending"


HEAVY = ("numpy", "onnxruntime", "tokenizers", "fastembed", "rich")


def stratum(*args: str, cwd: Path, home: Path, modules: Path | None = None) -> subprocess.CompletedProcess[str]:
    """`stratum ARGS` in a fresh interpreter (the entry point's own function), failing loudly. With `modules`,
    the HEAVY modules loaded when the process exits are written there (JSON)."""
    env = {**os.environ, **GIT_ENV, "HOME": str(home), "XDG_STATE_HOME": str(home / "state")}
    code = "import sys; from daemon.cli.main import main; sys.argv[0] = 'stratum'\n"
    if modules is not None:
        code += ("import atexit, json, pathlib\n"
                 f"atexit.register(lambda: pathlib.Path({str(modules)!r}).write_text(json.dumps("
                 f"[m for m in {HEAVY!r} if m in sys.modules])))\n")
    code += "main()"
    proc = subprocess.run([sys.executable, "-c", code, *args], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=300, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stderr
    return proc


def index_facts(data: Path) -> tuple[int, str | None]:
    """(vectors stored, the pending mark) of a data directory's index, read after the process ended."""
    con = duckdb.connect(str(data / "index.duckdb"), read_only=True)
    try:
        vectors = con.execute("SELECT count(*) FROM kb_vec").fetchone()
        mark = con.execute("SELECT value FROM state WHERE key = ?", [PENDING]).fetchone()
    finally:
        con.close()
    assert vectors is not None
    return int(vectors[0]), None if mark is None else str(mark[0])


@pytest.fixture()
def template(tmp_path: Path) -> Path:
    stratum("init", str(tmp_path / "ops"), cwd=tmp_path, home=tmp_path)
    return tmp_path / "ops"


@pytest.mark.slow
def test_cli_apply_leaves_embedding_to_the_next_model_user(template: Path, tmp_path: Path) -> None:
    """The apply indexes the nodes without vectors (pending); `kb search` then embeds them and ranks by meaning."""
    data, loaded = tmp_path / "data", tmp_path / "modules.json"
    run = json.loads(stratum("apply", "--data-dir", str(data), "--root", str(tmp_path / "root"), "-o", "json",
                             cwd=template, home=tmp_path, modules=loaded).stdout)
    assert run["status"] == "succeeded"
    # Neither the model's runtime nor NumPy (a few nodes are written through unnest) nor rich (not a TTY).
    assert json.loads(loaded.read_text()) == []
    assert index_facts(data) == (0, run["revision"])        # nodes stored, no vector made, marked pending
    # Found by words at once, before any model ran.
    out = stratum("kb", "--data-dir", str(data), "search", "app service down", "--mode", "lexical", "--json",
                  cwd=template, home=tmp_path).stdout
    assert json.loads(out)["results"][0]["title"].startswith("Runbook: hello service")
    stratum("kb", "--data-dir", str(data), "list", cwd=template, home=tmp_path)      # no model for a listing
    assert index_facts(data) == (0, run["revision"])
    # The first command that loads the model anyway embeds the pending nodes before searching by meaning.
    out = stratum("kb", "--data-dir", str(data), "search", "web app is unreachable, gateway error", "--mode",
                  "vector", "--json", cwd=template, home=tmp_path).stdout
    found = json.loads(out)
    assert found["mode"] == "vector" and found["results"][0]["title"].startswith("Runbook: hello service")
    vectors, mark = index_facts(data)
    assert vectors > 0 and mark is None
