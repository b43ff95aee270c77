"""The template's certificate (repo_template/infra/tls.ncl: a file resource receiving a certificate and its key
issued from the template's own CA and role, vault/pki/ops.ncl) on a fresh machine.

Vault off (what `stratum init` users have first): real `stratum` processes from an empty HOME walk init,
validate, plan and apply; the run succeeds and the two files are `waiting` items saying how to turn the vault on.
Vault on: a real stratumd with `[vault] listen`; its first run waits (the vault is not initialized), `hvac`
initializes and unseals it over loopback, and the unseal asks the daemon for a run that declares the CA and the
role and writes the certificate and the key (0600), which `cryptography` and `openssl verify` check against the
template's CA."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import hvac  # type: ignore[import-untyped]  # hvac ships no type hints
import pytest
import requests
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from tests.fixtures import clean_env, git
from tests.proc import ROOT, DaemonProc, wait_for
from tests.reconcilers.vault.pki.helpers import openssl_verify
from tests.servers import free_port

STRATUM = [sys.executable, "-c", "from daemon.cli.main import main; main()"]
CERT, KEY = "srv/hello/tls/cert.pem", "srv/hello/tls/key.pem"
GUARD_S = 300                      # a guard against a hang only; nothing here is timed


def _env(home: Path) -> dict[str, str]:
    env = clean_env(home, {"PYTHONPATH": str(ROOT)})
    for name in ("XDG_STATE_HOME", "STATE_DIRECTORY", "STRATUM_DATA_DIR", "STRATUM_CONFIG", "VAULT_ADDR"):
        env.pop(name, None)
    return env


def _stratum(cwd: Path, home: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*STRATUM, *args], cwd=cwd, env=_env(home), capture_output=True, text=True,
                          timeout=GUARD_S)


def _init(tmp: Path, home: Path) -> Path:
    done = _stratum(tmp, home, "init", "ops")
    assert done.returncode == 0, done.stderr
    return tmp / "ops"


def test_template_walk_with_the_vault_off_succeeds_and_shows_the_certificate_waiting(tmp_path: Path) -> None:
    """init, validate, plan, apply from an empty HOME: every step exits 0, the apply succeeds with the two
    certificate files as waiting items (not written, no waiting budget spent), everything else is applied,
    and the next plan shows them with the hint saying how to turn the vault on; no PEM anywhere."""
    home, root = tmp_path / "home", tmp_path / "root"
    home.mkdir()
    ops = _init(tmp_path, home)
    assert (ops / "infra/tls.ncl").is_file()
    validated = _stratum(ops, home, "validate")
    assert validated.returncode == 0, validated.stdout + validated.stderr
    planned = _stratum(ops, home, "plan", "--root", str(root))
    assert planned.returncode == 0, planned.stdout + planned.stderr
    assert f"create file {CERT} (0644)" in planned.stdout and f"create file {KEY} (0600)" in planned.stdout
    applied = _stratum(ops, home, "apply", "--root", str(root))
    assert applied.returncode == 0, applied.stdout + applied.stderr
    assert applied.stdout.startswith("succeeded:"), applied.stdout
    assert "not yet" in applied.stdout and "Traceback" not in applied.stderr
    assert (root / "etc/motd").is_file() and (root / "srv/hello/config.toml").is_file()
    assert not (root / CERT).exists() and not (root / KEY).exists()
    status = json.loads(_stratum(ops, home, "status", "--output", "json").stdout)
    assert status["last_applied_revision"] == git(ops, "rev-parse", "HEAD")
    # status must not read as fully applied: infra says how many files wait and why; the others have none
    infra_ready = status["reconcilers"]["infra"]["conditions"][0]
    assert infra_ready["status"] == "True" and "; 2 action(s) waiting, first: file " in infra_ready["message"]
    assert "[vault] enabled = true" in infra_ready["message"]
    assert "waiting" not in status["reconcilers"]["knowledge"]["conditions"][0]["message"]
    shown = _stratum(ops, home, "status").stdout
    assert "2 action(s) waiting" in shown, shown
    again = _stratum(ops, home, "plan", "--root", str(root))
    assert again.returncode == 0, again.stdout + again.stderr
    waiting = [line for line in again.stdout.splitlines() if "[waited at the last run:" in line]
    assert len(waiting) == 2 and all("[vault] enabled = true" in line and "stratum vault init" in line
                                     for line in waiting), again.stdout
    assert "BEGIN" not in applied.stdout + again.stdout


def _up(url: str) -> bool:
    try:
        return requests.get(f"{url}/v1/sys/seal-status", timeout=2).status_code == 200
    except requests.RequestException:
        return False


@pytest.mark.slow
def test_a_daemon_writes_the_template_certificate_once_the_vault_is_unsealed(tmp_path: Path) -> None:
    """stratumd with the vault enabled but not initialized: the template's first run succeeds with the
    certificate files waiting. hvac initializes and unseals the vault; the unseal asks for a run
    (trigger rerun:vault unsealed) that creates the CA and role and writes the certificate and its 0600 key:
    the key matches, the certificate is for the requested name and chains to the template's CA."""
    home, data, root = tmp_path / "home", tmp_path / "data", tmp_path / "root"
    home.mkdir()
    ops = _init(tmp_path, home)
    remote = tmp_path / "remote.git"
    subprocess.run(["git", "clone", "-q", "--bare", str(ops), str(remote)], check=True, env=_env(home),
                   timeout=GUARD_S)
    head = git(ops, "rev-parse", "HEAD")
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    config = tmp_path / "stratumd.toml"
    config.write_text(f'[vault]\nlisten = "127.0.0.1:{port}"\n')
    d = DaemonProc(str(remote), data, root, "--config", str(config), env={"HOME": str(home)})
    try:
        run = d.wait_run(head, GUARD_S)
        assert run["status"] == "succeeded", run
        assert (root / "etc/motd").is_file() and not (root / CERT).exists()
        wait_for(lambda: _up(url), 60)
        client = hvac.Client(url=url)
        init = client.sys.initialize(secret_shares=1, secret_threshold=1)
        client.sys.submit_unseal_key(init["keys"][0])

        def rerun() -> dict[str, object] | None:
            runs = [r for r in d.runs() if str(r.get("trigger", "")).startswith("rerun:vault unsealed")]
            return runs[0] if runs and runs[0]["status"] not in ("running", "pending") else None
        done = wait_for(rerun, GUARD_S, interval=0.5)
        assert done["status"] == "succeeded", done
        cert = x509.load_pem_x509_certificate((root / CERT).read_bytes())
        key = serialization.load_pem_private_key((root / KEY).read_bytes(), password=None)
        assert cert.public_key() == key.public_key()
        assert stat.S_IMODE(os.stat(root / KEY).st_mode) == 0o600
        names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        assert "hello.internal.example.com" in names.get_values_for_type(x509.DNSName)
        client.token = init["root_token"]
        ca_pem = client.secrets.pki.read_ca_certificate(mount_point="ops")
        ca = x509.load_pem_x509_certificate(ca_pem.encode())
        assert ca.subject.rfc4514_string() == "CN=example-ops internal CA"
        cert.verify_directly_issued_by(ca)
        verified = openssl_verify(tmp_path, ca_pem, (root / CERT).read_text())
        assert verified.returncode == 0, verified.stdout + verified.stderr
        assert "BEGIN" not in d.log()
    finally:
        assert d.stop() == 0
