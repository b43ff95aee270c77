"""Issue 9 item 2, replayed as the user did it: one data directory through apply, hand edits, drift, plan,
apply, apply, rollback and status, all with the real CLI in fresh processes. The index must never be moved aside,
and `stratum log` must still list every run."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from tests.fixtures import WorkRepo, infra, resource
from tests.proc import ROOT, cli_env

STRATUM = [sys.executable, "-c", "from daemon.cli.main import main; main()"]


def _files(tag: str) -> str:
    return infra(*(resource(f"f{i}", "file", path=f"srv/f{i}.conf", content=f"{tag} {i}\n") for i in range(30)))


def test_the_reported_sequence_keeps_the_index_and_the_history(tmp_path: Path) -> None:
    repo = WorkRepo(tmp_path / "ops")
    a = repo.commit({"infra/files.ncl": _files("a")}, "a")
    data, root = tmp_path / "data", tmp_path / "root"

    def stratum(*args: str, ok: tuple[int, ...] = (0,)) -> subprocess.CompletedProcess[str]:
        done = subprocess.run([*STRATUM, *args, "--repo", str(repo.path), "--data-dir", str(data)],
                              cwd=ROOT, env=cli_env(), capture_output=True, text=True, timeout=300)
        assert done.returncode in ok, (args, done.stdout, done.stderr)
        assert "Traceback" not in done.stdout + done.stderr
        return done

    root_opt = ("--root", str(root))
    stratum("apply", "--rev", a, *root_opt)
    for i in range(5):
        (root / f"srv/f{i}.conf").write_text("edited by hand\n")
    drifted = stratum("drift", *root_opt, ok=(1,))
    assert "srv/f0.conf" in drifted.stdout
    stratum("plan", "--rev", a, *root_opt)
    stratum("apply", "--rev", a, *root_opt)
    b = repo.commit({"infra/files.ncl": _files("b")}, "b")
    stratum("apply", "--rev", b, *root_opt)
    stratum("rollback", a, *root_opt)
    status = stratum("status", "--output", "json")
    assert json.loads(status.stdout)["last_applied_revision"] == a
    runs = json.loads(stratum("log", "--output", "json").stdout)
    assert [r["revision"] for r in runs][:4] == [a, b, a, a] and len(runs) == 4
    assert not list(data.glob("index.duckdb.corrupt*")), sorted(p.name for p in data.iterdir())
    assert (root / "srv/f0.conf").read_text() == "a 0\n"
