"""A new user's first secret, as the README tells it, from an empty HOME (issue 9, items 7 and 8): `stratum init`,
`stratum secret init`, encrypt, commit, `stratum apply`, decrypt; `git diff` through the textconv driver from a
shell without the venv on PATH; `secret daemon-key` with the default data directory; short key ids in messages.
Every step is a real `stratum` process; HOME, XDG dirs and git's identity live in the test's temp dir."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.proc import ROOT

pytestmark = pytest.mark.slow
SECRET = "onb0ard-Pl41n-9f1e"


class User:
    """A shell of a new user: empty HOME, git identity from the environment, no venv on PATH."""

    def __init__(self, tmp: Path) -> None:
        self.home = tmp / "home"
        self.home.mkdir()
        venv_bin = str(Path(sys.executable).parent)
        path = os.pathsep.join(p for p in os.environ.get("PATH", "").split(os.pathsep) if p and p != venv_bin)
        self.env = {
            "HOME": str(self.home), "PATH": path or "/usr/bin:/bin", "PYTHONPATH": str(ROOT),
            "GIT_AUTHOR_NAME": "Ann Lee", "GIT_AUTHOR_EMAIL": "ann@example.com",
            "GIT_COMMITTER_NAME": "Ann Lee", "GIT_COMMITTER_EMAIL": "ann@example.com", "GIT_CONFIG_NOSYSTEM": "1",
            "LANG": "C.UTF-8",
        }

    def run(self, *argv: str, cwd: Path, stdin: str = "") -> subprocess.CompletedProcess[str]:
        return subprocess.run(list(argv), cwd=cwd, env=self.env, input=stdin, capture_output=True, text=True,
                              timeout=300, check=False)

    def stratum(self, *args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
        """`stratum ARGS`: the interpreter by absolute path (the venv is not on PATH)."""
        proc = self.run(sys.executable, "-c", "from daemon.cli.main import main; main()", *args, cwd=cwd)
        assert "Traceback" not in proc.stdout + proc.stderr, proc.stderr
        return proc


def test_first_secret_from_an_empty_home(tmp_path: Path) -> None:
    """init repo, secret init (keys made, you trusted, daemon recipient, rule staged), encrypt, commit, apply,
    decrypt: each step succeeds, messages carry short key ids, the plaintext never reaches git."""
    user = User(tmp_path)
    assert user.stratum("init", "ops", cwd=tmp_path).returncode == 0
    ops = tmp_path / "ops"
    daemon_key = user.stratum("secret", "daemon-key", cwd=ops)
    assert daemon_key.returncode == 0, daemon_key.stderr
    daemon_id = daemon_key.stderr.split("recipient ")[1].split()[0]
    assert daemon_id.startswith("kem:") and daemon_key.stdout.strip().startswith("stratum1")
    # The default data directory is the repository's own (issue 9 item 4): the daemon key lives in it.
    [data_dir] = (user.home / ".local/state/stratum").iterdir()
    assert data_dir.name.startswith("ops-") and (data_dir / "vault/daemon.key").is_file()
    init = user.stratum("secret", "init", cwd=ops)
    assert init.returncode == 0, init.stderr
    assert "trusted signer: ann-lee sig:" in init.stderr and daemon_id[:16] in init.stderr
    assert (user.home / ".config/stratum/keys/default.key").stat().st_mode & 0o777 == 0o600
    staged = user.run("git", "diff", "--cached", "--name-only", cwd=ops).stdout.split()
    assert "secrets/rules.ncl" in staged
    (ops / "secrets/app.yaml").write_text(f"db:\n  password: {SECRET}\n")
    enc = user.stratum("secret", "encrypt", "secrets/app.yaml", cwd=ops)
    assert enc.returncode == 0, enc.stderr
    assert "kem:" in enc.stderr and "signed as sig:" in enc.stderr
    user.run("git", "add", "-A", cwd=ops)
    assert user.run("git", "commit", "-q", "-m", "first secret", cwd=ops).returncode == 0
    applied = user.stratum("apply", "--output", "json", cwd=ops)
    assert applied.returncode == 0, applied.stderr
    assert json.loads(applied.stdout)["status"] == "succeeded"
    shown = user.stratum("secret", "decrypt", "secrets/app.yaml", cwd=ops)
    assert shown.returncode == 0 and SECRET in shown.stdout
    history = user.run("git", "log", "-p", "--no-textconv", cwd=ops).stdout
    assert SECRET not in history and "ENC[AES256_GCM" in history


def test_git_diff_of_a_manifest_works_without_the_venv_on_path(tmp_path: Path) -> None:
    """The drivers `stratum init` wires call this interpreter by absolute path: `git diff` on a manifest shows
    key paths and fingerprints from a shell whose PATH has no `stratum`, and never the plaintext."""
    user = User(tmp_path)
    assert user.stratum("init", "ops", cwd=tmp_path).returncode == 0
    ops = tmp_path / "ops"
    textconv = user.run("git", "config", "diff.stratum.textconv", cwd=ops).stdout.strip()
    assert textconv.startswith(sys.executable) and " -P -m daemon.cli.secret secret textconv" in textconv
    assert user.stratum("secret", "init", "--commit", cwd=ops).returncode == 0
    (ops / "secrets/app.yaml").write_text(f"db:\n  password: {SECRET}\n")
    assert user.stratum("secret", "encrypt", "secrets/app.yaml", cwd=ops).returncode == 0
    user.run("git", "add", "-A", cwd=ops)
    user.run("git", "commit", "-q", "-m", "v1", cwd=ops)
    assert user.stratum("secret", "set", "secrets/app.yaml", "db.user", cwd=ops).returncode == 0
    assert user.run("sh", "-c", "command -v stratum", cwd=ops).returncode != 0   # really not on PATH
    diff = user.run("git", "diff", "secrets/app.yaml", cwd=ops)
    assert diff.returncode == 0, diff.stderr
    assert "+db.user" in diff.stdout.replace(" ", "") or "db.user" in diff.stdout, diff.stdout
    assert SECRET not in diff.stdout and "ENC[" not in diff.stdout


def test_secret_init_example_is_a_secret_used_end_to_end(tmp_path: Path) -> None:
    """`stratum secret init --example --commit` in a fresh repo from an empty HOME commits a sealed manifest and a
    file resource that references it; `stratum plan` shows the file with a fingerprint and no drift line, `stratum
    apply` writes the file 0600 with the manifest's value, and no output nor git history holds that value."""
    user = User(tmp_path)
    assert user.stratum("init", "ops", cwd=tmp_path).returncode == 0
    ops = tmp_path / "ops"
    init = user.stratum("secret", "init", "--example", "--commit", cwd=ops)
    assert init.returncode == 0, init.stderr
    assert user.run("git", "status", "--porcelain", cwd=ops).stdout == ""
    shown = user.stratum("secret", "decrypt", "secrets/app/db.yaml", cwd=ops)
    assert shown.returncode == 0, shown.stderr
    password = next(line.split(": ", 1)[1] for line in shown.stdout.splitlines() if line.startswith("password:"))
    assert len(password) >= 24
    plan = user.stratum("plan", cwd=ops)
    assert plan.returncode == 0, plan.stderr
    assert "etc/app/db.password (0600) with secret kv/app/db#password hmac-sha256:" in plan.stdout, plan.stdout
    assert "drift" not in plan.stdout
    applied = user.stratum("apply", "--output", "json", cwd=ops)
    assert applied.returncode == 0 and json.loads(applied.stdout)["status"] == "succeeded", applied.stderr
    [data_dir] = (user.home / ".local/state/stratum").iterdir()
    target = data_dir / "root/etc/app/db.password"
    assert target.read_text() == password and target.stat().st_mode & 0o777 == 0o600
    after = user.stratum("plan", "--output", "json", cwd=ops)
    assert after.returncode == 0, after.stderr
    # Nothing left but the template's certificate files (infra/tls.ncl), which wait while the vault is off.
    left = json.loads(after.stdout)["actions"]
    assert {a["id"] for a in left} <= {"infra:app-tls-cert", "infra:app-tls-key"}, left
    again = user.stratum("secret", "init", "--example", cwd=ops)
    assert again.returncode != 0 and "does not overwrite" in again.stderr + again.stdout
    history = user.run("git", "log", "-p", "--no-textconv", cwd=ops).stdout
    for out in (init, plan, applied):
        assert password not in out.stdout + out.stderr
    assert password not in history
