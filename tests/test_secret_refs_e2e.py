"""Secret references end to end (issue 11 item 1): `stratum apply` and a real stratumd over a real git repo put a
committed secret into the files that reference it, re-apply them when the secret changes, and the canary value
is absent from the DuckDB files, the data directory, the daemon's log, the git notes, the plan JSON and the CLI's
output."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pygit2
import pytest

from tests.fixtures import WorkRepo, bare_repo
from tests.proc import DaemonProc, cli_env
from tests.vault_fixtures import CANARY, SecretWorld, secret_world

INFRA = ("{\n  resources = {\n"
         "    pw = { kind = 'file, path = \"etc/app/pw\", content = { secret = \"kv/app/db\", key = \"password\" } },\n"
         "    conf = { kind = 'file, path = \"etc/app/app.conf\", template = \"templates/app.conf.j2\","
         " vars = { password = { secret = \"kv/app/db\", key = \"password\" } } },\n"
         "  },\n}\n")


def _stratum(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-c", "from daemon.cli.main import main; main()", *args], cwd=cwd,
                          env=cli_env(), capture_output=True, text=True, timeout=300, check=False)


def _files(world: SecretWorld, value: str, previous: Path | None = None) -> dict[str, str | bytes | None]:
    prev = previous.read_text() if previous is not None and previous.exists() else None
    return {"secrets/rules.ncl": world.rules(), "templates/app.conf.j2": "password = {{ password }}\n",
            "secrets/app/db.yaml": world.manifest({"password": value}, path="secrets/app/db.yaml", previous=prev),
            "infra/app.ncl": INFRA}


def _leaks(folder: Path, *values: str) -> list[str]:
    return [str(p) for p in folder.rglob("*") if p.is_file() and any(v.encode() in p.read_bytes() for v in values)]


def _notes(git_dir: Path) -> str:
    """Every git note's text in the repository (notes are zlib-compressed objects: read, not grepped)."""
    try:
        repo = pygit2.Repository(str(git_dir))
        # pygit2 1.21 takes the notes ref at run time; its stub declares no argument.
        notes = repo.notes("refs/notes/stratum")  # type: ignore[call-arg]
        return "\n".join(note.message for note in notes)
    except (KeyError, pygit2.GitError):
        return ""


@pytest.mark.slow
def test_stratum_apply_puts_the_secret_in_place_and_nowhere_else(tmp_path: Path) -> None:
    """`stratum plan --format json` shows the reference and its keyed fingerprint; `stratum apply` writes the
    value (0600) into both files; a new secret value re-applies both in the next apply."""
    data, root = tmp_path / "data", tmp_path / "root"
    world = secret_world(data)
    repo = WorkRepo(tmp_path / "ops")
    repo.commit(_files(world, CANARY))
    common = ["--repo", str(repo.path), "--data-dir", str(data), "--root", str(root)]
    planned = _stratum("plan", *common, "--format", "json", cwd=tmp_path)
    assert planned.returncode == 0, planned.stderr
    plan = json.loads(planned.stdout)
    by_id = {a["id"]: a for a in plan["actions"]}
    assert "kv/app/db#password hmac-sha256:" in by_id["infra:pw"]["summary"]
    applied = _stratum("apply", *common, "--output", "json", cwd=tmp_path)
    assert applied.returncode == 0, applied.stderr
    assert json.loads(applied.stdout)["status"] == "succeeded"
    assert (root / "etc/app/pw").read_text() == CANARY
    assert (root / "etc/app/app.conf").read_text() == f"password = {CANARY}\n"
    assert oct((root / "etc/app/pw").stat().st_mode & 0o777) == "0o600"
    new = CANARY + "-rotated"
    repo.commit(_files(world, new, repo.path / "secrets/app/db.yaml"))
    replanned = _stratum("plan", *common, "--format", "json", cwd=tmp_path)
    assert {a["id"] for a in json.loads(replanned.stdout)["actions"]} == {
        "vault:secrets/app/db.yaml", "infra:pw", "infra:conf"}
    again = _stratum("apply", *common, cwd=tmp_path)
    assert again.returncode == 0, again.stderr
    assert (root / "etc/app/pw").read_text() == new
    for out in (planned, applied, replanned, again):
        assert CANARY not in out.stdout + out.stderr
    assert _leaks(data, CANARY, new) == []
    notes = _notes(repo.path / ".git")
    assert "succeeded" in notes
    assert CANARY not in notes and new not in notes


@pytest.mark.slow
def test_daemon_rewrites_the_file_when_a_pushed_secret_changes(tmp_path: Path) -> None:
    """Under a real stratumd: a pushed secret reaches the file; a pushed new value rewrites it in the run of that
    commit; the log, the data directory (DuckDB included) and the git notes never hold either value."""
    data, root = tmp_path / "data", tmp_path / "root"
    world = secret_world(data)
    remote = bare_repo(tmp_path / "remote.git")
    work = WorkRepo(tmp_path / "work", remote=remote)
    first = work.commit(_files(world, CANARY))
    work.push()
    d = DaemonProc(str(remote), data, root)
    new = CANARY + "-pushed"
    try:
        assert d.wait_run(first, 120)["status"] == "succeeded"
        assert (root / "etc/app/pw").read_text() == CANARY
        second = work.commit(_files(world, new, work.path / "secrets/app/db.yaml"))
        work.push()
        assert d.wait_run(second, 120)["status"] == "succeeded"
        assert (root / "etc/app/pw").read_text() == new
        assert (root / "etc/app/app.conf").read_text() == f"password = {new}\n"
    finally:
        assert d.stop() == 0
    assert CANARY not in d.log() and new not in d.log()
    assert _leaks(data, CANARY, new) == []
    notes = _notes(data / "mirror.git") + _notes(remote)
    assert "succeeded" in notes                        # the notes were written, and read here
    assert CANARY not in notes and new not in notes
