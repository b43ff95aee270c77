"""A real stratumd with `[vault] listen` applies what vault/ declares (the template's vault/ folder): a transit
key, a PKI CA and role, a PostgreSQL connection (its root password from a committed secret manifest) and a
dynamic role. The first run happens before the vault is initialized: it succeeds, infra is applied and the vault
actions wait; after init and unseal (hvac, over loopback HTTP) the next run applies them, and hvac sees the key,
gets a certificate and gets database credentials that log in to a real PostgreSQL (started by the tests)."""

from __future__ import annotations

from pathlib import Path

import hvac
import pytest
import requests
from cryptography import x509

from tests.fixtures import WorkRepo, bare_repo, infra, resource
from tests.proc import DaemonProc, index_rows, wait_for
from tests.reconcilers.vault.database.conftest import ADMIN, ADMIN_PASSWORD, can_login, url_template
from tests.servers import Postgres, free_port
from tests.vault_fixtures import secret_world

pytestmark = pytest.mark.slow

TEMPLATE = Path(__file__).resolve().parents[4] / "repo_template" / "vault"


def _database(pg: Postgres) -> str:
    create = ("CREATE ROLE \\\"{{name}}\\\" WITH LOGIN PASSWORD '{{password}}' VALID UNTIL '{{expiration}}'")
    grant = "GRANT SELECT ON items TO \\\"{{name}}\\\""
    return f"""{{
  connections = {{ main = {{ connection_url = "{url_template(pg)}", username = "{ADMIN}",
                             password_secret = {{ secret = "kv/db/main", key = "password" }},
                             allowed_roles = ["web"] }} }},
  roles = {{ web = {{ db_name = "main", default_ttl = "1h", max_ttl = "24h",
                      creation_statements = ["{create}", "{grant}"] }} }},
}}
"""


def _up(url: str) -> bool:
    try:
        return requests.get(f"{url}/v1/sys/seal-status", timeout=2).status_code == 200
    except requests.RequestException:
        return False


def test_a_daemon_applies_vault_declarations_after_unseal(tmp_path: Path, pg: Postgres) -> None:
    """Sealed at the first run: succeeded, infra applied, vault actions waiting. Unsealed, next commit: hvac
    reads the transit key and encrypts with it, issues a certificate from the declared role, and gets dynamic
    PostgreSQL credentials that log in; nothing the daemon wrote holds the database root password."""
    data, root = tmp_path / "data", tmp_path / "root"
    world = secret_world(data)
    remote = bare_repo(tmp_path / "remote.git")
    work = WorkRepo(tmp_path / "work", remote=remote)
    first = work.commit({
        "infra/motd.ncl": infra(resource("motd", "file", path="etc/motd", content="hi\n")),
        "secrets/rules.ncl": world.rules(),
        "secrets/db/main.yaml": world.manifest({"password": ADMIN_PASSWORD}, path="secrets/db/main.yaml"),
        # The template's vault/ (transit key `app`, PKI mount `ops` with role `internal`, a policy, a token
        # role), its empty database mount `app` filled in for this PostgreSQL.
        **{str(p.relative_to(TEMPLATE.parent)): p.read_text() for p in TEMPLATE.rglob("*") if p.is_file()},
        "vault/database/app.ncl": _database(pg)})
    work.push()
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    config = tmp_path / "stratumd.toml"
    config.write_text(f'[vault]\nlisten = "127.0.0.1:{port}"\n')
    d = DaemonProc(str(remote), data, root, "--config", str(config))
    try:
        run = d.wait_run(first, 120)
        assert run["status"] == "succeeded", run
        assert (root / "etc/motd").read_text() == "hi\n"
        wait_for(lambda: _up(url), 60)
        client = hvac.Client(url=url)
        init = client.sys.initialize(secret_shares=1, secret_threshold=1)
        client.sys.submit_unseal_key(init["keys"][0])
        client.token = init["root_token"]
        second = work.commit({"infra/motd.ncl": infra(resource("motd", "file", path="etc/motd", content="ho\n"))})
        work.push()
        run = d.wait_run(second, 120)
        assert run["status"] == "succeeded", run
        key = client.secrets.transit.read_key("app")["data"]
        assert key["type"] == "aes256-gcm96" and key["latest_version"] == 1
        assert list(key["keys"]) == ["1"] and isinstance(key["keys"]["1"], int)   # a creation time, no material
        sealed = client.secrets.transit.encrypt_data("app", "aGVsbG8=")["data"]["ciphertext"]
        assert sealed.startswith("vault:v1:")
        cert = client.secrets.pki.generate_certificate("internal", "web.internal.example.com",
                                                       mount_point="ops")["data"]
        parsed = x509.load_pem_x509_certificate(cert["certificate"].encode())
        assert parsed.subject.rfc4514_string() == "CN=web.internal.example.com"
        creds = client.secrets.database.generate_credentials("web", mount_point="app")
        assert creds["lease_id"].startswith("app/creds/web/")
        assert can_login(pg, creds["data"]["username"], creds["data"]["password"])
    finally:
        assert d.stop() == 0
    rows = index_rows(data, "SELECT a.target, a.message FROM actions a JOIN runs r ON a.run_id = r.id "
                            "WHERE r.revision = ? AND a.reconciler = 'vault' AND a.target LIKE 'engines/%'", [first])
    assert rows and all(str(m).startswith("waiting: the vault is sealed") for _, m in rows), rows
    leaked = [str(p) for p in data.rglob("*") if p.is_file() and ADMIN_PASSWORD.encode() in p.read_bytes()]
    assert leaked == []
