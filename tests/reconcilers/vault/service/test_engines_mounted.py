"""The PKI and database engines mounted on the vault service (sys/mounts types "pki" and "database"): hvac's PKI
calls through the real API (tokens, Cedar, audit in front), raw DER answers, and sys/leases routed by lease id."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import hvac
import pytest
import requests
from cryptography import x509

from reconcilers.vault.service.sweeper import Sweeper
from tests.proc import cli_env
from tests.reconcilers.vault.database.conftest import ADMIN, ADMIN_PASSWORD, can_login, role_exists, url_template
from tests.reconcilers.vault.database.test_database_creds import CREATE
from tests.reconcilers.vault.service.conftest import Served
from tests.servers import Postgres


def test_pki_through_the_vault_api(vault: Served) -> None:
    """Mount pki, make a root, a role, issue and revoke: the CRL (PEM via hvac, DER raw) lists the serial; the
    audit log holds no private key."""
    client = vault.client()
    client.sys.enable_secrets_engine("pki", path="pki")
    assert client.sys.list_mounted_secrets_engines()["data"]["pki/"]["type"] == "pki"
    pki = client.secrets.pki
    pki.generate_root("internal", "stratum test root", extra_params={"key_type": "ec", "ttl": "87600h"})
    root = x509.load_pem_x509_certificate(pki.read_ca_certificate().strip().encode())
    pki.create_or_update_role("web", extra_params={"allowed_domains": "example.com", "allow_subdomains": True,
                                                   "key_type": "ec", "max_ttl": "72h"})
    issued = pki.generate_certificate("web", "api.example.com", extra_params={"ttl": "1h"})["data"]
    x509.load_pem_x509_certificate(issued["certificate"].encode()).verify_directly_issued_by(root)
    pki.revoke_certificate(issued["serial_number"])
    serial = int(issued["serial_number"].replace(":", ""), 16)
    assert [r.serial_number for r in x509.load_pem_x509_crl(pki.read_crl().encode())] == [serial]
    der = requests.get(f"{vault.url}/v1/pki/crl", headers={"X-Vault-Token": vault.root_token}, timeout=10)
    assert der.status_code == 200 and der.headers["content-type"] == "application/pkix-crl"
    assert [r.serial_number for r in x509.load_der_x509_crl(der.content)] == [serial]
    with pytest.raises(hvac.exceptions.InvalidRequest, match="is not allowed"):
        pki.generate_certificate("web", "evil.org")
    audit = vault.service.audit.path.read_text()
    assert issued["private_key"] not in audit and "PRIVATE KEY" not in audit


def test_database_mount_and_lease_routing(vault: Served) -> None:
    """A database mount is accepted; sys/leases with a lease id outside any database mount is a clear 400."""
    client = vault.client()
    client.sys.enable_secrets_engine("database", path="database")
    assert client.sys.list_mounted_secrets_engines()["data"]["database/"]["type"] == "database"
    answer = requests.put(f"{vault.url}/v1/sys/leases/lookup", json={"lease_id": "nowhere/creds/x/1"},
                          headers={"X-Vault-Token": vault.root_token}, timeout=5)
    assert answer.status_code == 400 and "database mount" in answer.json()["errors"][0]
    missing = requests.put(f"{vault.url}/v1/sys/leases/lookup", json={"lease_id": "database/creds/r/abc"},
                           headers={"X-Vault-Token": vault.root_token}, timeout=5)
    assert missing.status_code in (400, 404) and missing.json()["errors"]


def test_database_credentials_through_the_api_and_the_sweeper_reaps_them(vault: Served, pg: Postgres) -> None:
    """hvac's database calls through the real API: credentials log in; sys/leases finds the lease by its id; the
    vault's sweeper (what the daemon runs every few seconds) revokes it once expired and the role is gone."""
    client = vault.client()
    client.sys.enable_secrets_engine("database", path="database")
    db = client.secrets.database
    db.configure("main", "postgresql-database-plugin", allowed_roles=["web"], connection_url=url_template(pg),
                 username=ADMIN, password=ADMIN_PASSWORD)
    db.create_role("web", "main", [CREATE], default_ttl="1h", max_ttl="4h")
    creds = db.generate_credentials("web")
    user, password = creds["data"]["username"], creds["data"]["password"]
    assert can_login(pg, user, password)
    assert client.sys.read_lease(creds["lease_id"])["data"]["id"] == creds["lease_id"]
    assert Sweeper(vault.service).sweep_once()["database/"][0].revoked == 0        # not expired yet
    report = Sweeper(vault.service).sweep_once(time.time() + 2 * 3600)["database/"][0]
    assert report.revoked == 1 and not role_exists(pg, user)
    audit = vault.service.audit.path.read_text()
    assert password not in audit and ADMIN_PASSWORD not in audit


def test_stratum_vault_rotate_root(vault: Served, pg: Postgres, tmp_path: Path) -> None:
    """`stratum vault rotate-root main` rotates the connection's root password: the old one stops working."""
    client = vault.client()
    client.sys.enable_secrets_engine("database", path="db2")
    name = "rot" + str(int(time.time() * 1000) % 100000)
    pg.psql(f"CREATE ROLE {name} WITH LOGIN SUPERUSER PASSWORD 'first-pw'")
    client.secrets.database.configure("main", "postgresql-database-plugin", allowed_roles=["web"],
                                      connection_url=url_template(pg), username=name, password="first-pw",
                                      mount_point="db2")
    assert can_login(pg, name, "first-pw")
    out = subprocess.run([sys.executable, "-c", "from daemon.cli.main import main; main()", "vault", "rotate-root",
                          "main", "--mount", "db2", "--address", vault.url, "--token", vault.root_token],
                         env=cli_env(), capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert not can_login(pg, name, "first-pw")
