"""The vault API of a real stratumd: `stratum vault init/unseal`, hvac against it, Cedar policies and secrets
from the repo, the audit chain, a restart with auto-unseal. The daemon is a real process; HTTP is loopback."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import hvac
import pytest
import requests

from tests.fixtures import WorkRepo, bare_repo, infra, resource
from tests.proc import DaemonProc, cli_env, wait_for
from tests.servers import free_port
from tests.vault_fixtures import CANARY, secret_world

pytestmark = pytest.mark.slow
DB = "secrets/app/db.yaml"

POLICY = """\
@id("app-reads-its-secrets")
permit(principal in Vault::Group::"app", action in [Vault::Action::"read", Vault::Action::"list"], resource)
when { resource.path like "kv/data/app/*" || resource.path like "kv/metadata/app*" };
"""


def stratum(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    """The `stratum` CLI as a child process."""
    return subprocess.run([sys.executable, "-c", "from daemon.cli.main import main; main()", *args], cwd=cwd,
                          env=cli_env(), capture_output=True, text=True, timeout=120, check=False)


def test_hvac_against_a_running_stratumd_with_repo_policies_and_secrets(tmp_path: Path) -> None:
    """init and unseal with the CLI; the committed manifest's values are readable at kv/app/db by a token whose
    Cedar policy (committed too) allows it and by no other; a new manifest version becomes KV version 2; the
    audit chain verifies and holds no plaintext; after a restart the vault auto-unseals from a key file. The last
    unseal finds the listener from the data directory's host settings (no --address, no VAULT_ADDR)."""
    data, root = tmp_path / "data", tmp_path / "root"
    world = secret_world(data)
    remote = bare_repo(tmp_path / "remote.git")
    work = WorkRepo(tmp_path / "work", remote=remote)
    first = work.commit({"infra/motd.ncl": infra(resource("motd", "file", path="etc/motd", content="hi\n")),
                         "secrets/rules.ncl": world.rules(),
                         "secrets/app/db.yaml": world.manifest({"password": CANARY, "user": "app"}, path=DB),
                         "vault/policies/app.cedar": POLICY})
    work.push()
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    config = data / "stratumd.toml"            # where `stratum vault --data-dir` finds the listener too
    config.write_text(f'[vault]\nlisten = "127.0.0.1:{port}"\n')
    d = DaemonProc(str(remote), data, root, "--config", str(config))
    try:
        assert d.wait_run(first)["status"] == "succeeded"
        wait_for(lambda: _up(url), 60)
        # 1. init and unseal with the CLI (SLIP-39 shares by default)
        out = stratum("vault", "init", "--shares", "3", "--threshold", "2", "--address", url, cwd=tmp_path)
        assert out.returncode == 0, out.stderr
        keys = [line.split(": ", 1)[1] for line in out.stdout.splitlines() if line.startswith("Unseal Key")]
        root_token = next(line.split(": ", 1)[1] for line in out.stdout.splitlines() if "Root Token" in line)
        assert len(keys) == 3 and len(keys[0].split()) >= 20
        client = hvac.Client(url=url, token=root_token)
        assert client.sys.is_sealed() is True
        # the daemon's manifest key moved behind the seal: no key file, its recipient in the marker
        assert not (data / "vault" / "daemon.key").exists()
        assert (data / "vault" / "daemon.key.sealed").exists()
        step = stratum("vault", "unseal", keys[1], "--address", url, cwd=tmp_path)
        assert step.returncode == 0, step.stderr
        # No --address, no VAULT_ADDR: the host settings of the data directory name the listener.
        step = stratum("vault", "--data-dir", str(data), "unseal", keys[2], cwd=tmp_path)
        assert step.returncode == 0, step.stderr
        assert client.sys.is_sealed() is False
        # 2. the committed secret was published at unseal; a token of policy "app" reads it, others cannot
        secret = client.secrets.kv.v2.read_secret_version("app/db", mount_point="kv", raise_on_deleted_version=True)
        assert secret["data"]["data"] == {"password": CANARY, "user": "app"}
        app = hvac.Client(url=url, token=client.auth.token.create(policies=["app"])["auth"]["client_token"])
        other = hvac.Client(url=url, token=client.auth.token.create(policies=["web"])["auth"]["client_token"])
        got = app.secrets.kv.v2.read_secret_version("app/db", mount_point="kv", raise_on_deleted_version=True)
        assert got["data"]["data"]["password"] == CANARY
        assert app.secrets.kv.v2.list_secrets("app", mount_point="kv")["data"]["keys"] == ["db"]
        with pytest.raises(hvac.exceptions.Forbidden):
            other.secrets.kv.v2.read_secret_version("app/db", mount_point="kv", raise_on_deleted_version=True)
        with pytest.raises(hvac.exceptions.Forbidden):
            app.secrets.kv.v2.create_or_update_secret("app/db", secret={"password": "x"}, mount_point="kv")
        # a denied read of a path that does not exist looks the same as one that does: no hint
        missing = requests.get(f"{url}/v1/kv/data/app/nope", headers={"X-Vault-Token": other.token}, timeout=5)
        present = requests.get(f"{url}/v1/kv/data/app/db", headers={"X-Vault-Token": other.token}, timeout=5)
        assert (missing.status_code, missing.json()) == (present.status_code, present.json()) == (
            403, {"errors": ["permission denied"]})
        # 3. a new manifest version is a new KV version in the same run
        previous = (work.path / DB).read_text()
        second = work.commit({DB: world.manifest({"password": CANARY + "-2", "user": "app"}, path=DB,
                                                 previous=previous)})
        work.push()
        assert d.wait_run(second)["status"] == "succeeded"
        now = app.secrets.kv.v2.read_secret_version("app/db", mount_point="kv", raise_on_deleted_version=True)
        assert now["data"]["data"]["password"] == CANARY + "-2" and now["data"]["metadata"]["version"] == 2
    finally:
        assert d.stop() == 0
    # 4. the audit chain verifies, and nothing the daemon wrote holds the plaintext
    audit = data / "vault" / "audit.log"
    verified = stratum("audit", "verify", str(audit), cwd=tmp_path)
    assert verified.returncode == 0 and "chain intact" in verified.stdout, verified.stderr
    assert [str(p) for p in data.rglob("*") if p.is_file() and CANARY.encode() in p.read_bytes()] == []
    lines = audit.read_text().splitlines()
    lines[2] = lines[2].replace('"time":"', '"time":"1', 1)
    audit.write_text("\n".join(lines) + "\n")
    broken = stratum("audit", "verify", str(audit), cwd=tmp_path)
    assert broken.returncode != 0 and ":4: the chain breaks here" in broken.stderr
    # 5. restart with auto-unseal from a key file (two shares, one a line)
    keyfile = tmp_path / "unseal"
    keyfile.write_text("\n".join(keys[:2]) + "\n")
    keyfile.chmod(0o600)
    config.write_text(f'[vault]\nlisten = "127.0.0.1:{port}"\nunseal_key_file = "{keyfile}"\n')
    d = DaemonProc(str(remote), data, root, "--config", str(config))
    try:
        wait_for(lambda: _up(url), 60)
        client = hvac.Client(url=url, token=root_token)
        assert client.sys.is_sealed() is False
        again = app.secrets.kv.v2.read_secret_version("app/db", mount_point="kv", raise_on_deleted_version=True)
        assert again["data"]["data"]["password"] == CANARY + "-2"
    finally:
        assert d.stop() == 0
    assert json.loads((data / "vault" / "vault-policies.json").read_text()) == {"vault/policies/app.cedar": POLICY}


def _up(url: str) -> bool:
    try:
        return requests.get(f"{url}/v1/sys/seal-status", timeout=2).status_code == 200
    except requests.RequestException:
        return False


def test_the_vault_is_never_served_in_clear_off_loopback(tmp_path: Path) -> None:
    """`[vault] listen` on a non-loopback address without TLS: the daemon runs, says why the vault API is not
    served, and nothing listens there."""
    remote = bare_repo(tmp_path / "remote.git")
    work = WorkRepo(tmp_path / "work", remote=remote)
    first = work.commit({"infra/motd.ncl": infra(resource("motd", "file", path="etc/motd", content="hi\n"))})
    work.push()
    port = free_port()
    config = tmp_path / "stratumd.toml"
    config.write_text(f'[vault]\nlisten = "0.0.0.0:{port}"\n')
    d = DaemonProc(str(remote), tmp_path / "data", tmp_path / "root", "--config", str(config))
    try:
        assert d.wait_run(first)["status"] == "succeeded"
        refused = [e for e in d.log_events() if e.get("event") == "interface_not_listening"]
        assert refused and "in clear" in refused[0]["message"] and "tls_cert" in refused[0]["message"]
        assert not _up(f"http://127.0.0.1:{port}")
    finally:
        assert d.stop() == 0


def test_a_vault_that_cannot_start_does_not_stop_the_daemon(tmp_path: Path) -> None:
    """Storage unreachable at start: the daemon applies commits, and the vault API answers 503 saying why; a bad
    auto-unseal file leaves the vault sealed (and says why) instead."""
    remote = bare_repo(tmp_path / "remote.git")
    work = WorkRepo(tmp_path / "work", remote=remote)
    first = work.commit({"infra/motd.ncl": infra(resource("motd", "file", path="etc/motd", content="hi\n"))})
    work.push()
    port = free_port()
    config = tmp_path / "stratumd.toml"
    config.write_text(f'[vault]\nlisten = "127.0.0.1:{port}"\nstorage = "postgresql"\n'
                      f'storage_url = "postgresql://postgres:pw-not-shown@127.0.0.1:{free_port()}/x"\n')
    d = DaemonProc(str(remote), tmp_path / "data", tmp_path / "root", "--config", str(config))
    try:
        assert d.wait_run(first)["status"] == "succeeded"
        # (a tuple: a 503 Response is falsy, wait_for wants a true value)
        (answer,) = wait_for(lambda: _get(f"http://127.0.0.1:{port}/v1/sys/seal-status"), 60)
        assert answer.status_code == 503
        message = answer.json()["errors"][0]
        assert "storage backend postgresql unavailable" in message and "pw-not-shown" not in message
    finally:
        assert d.stop() == 0


def _get(url: str) -> tuple[requests.Response] | None:
    try:
        return (requests.get(url, timeout=2),)
    except requests.RequestException:
        return None
