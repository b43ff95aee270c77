"""The real `hvac` client's database and lease calls against the engine and a real PostgreSQL, over HTTP on
loopback through the stand-in router (tests/reconcilers/vault/pki/router.py) for the vault service."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

import hvac  # type: ignore[import-untyped]  # hvac ships no type hints
import hvac.exceptions  # type: ignore[import-untyped]
import pytest

from reconcilers.vault.database import api
from reconcilers.vault.pki.storage import KeyValueStore, MemoryStore
from tests.reconcilers.vault.database.conftest import ADMIN, ADMIN_PASSWORD, can_login, role_exists, url_template
from tests.reconcilers.vault.database.test_database_creds import CREATE
from tests.reconcilers.vault.pki.router import serve
from tests.servers import Postgres


@pytest.fixture
def client() -> Iterator[hvac.Client]:
    stores: dict[str, MemoryStore] = {"database": MemoryStore()}

    def sys(method: str, path: str, body: Mapping[str, Any], _store: KeyValueStore) -> tuple[int, dict[str, Any]]:
        if not path.startswith("leases/"):
            return 404, {"errors": [f"the stand-in router serves only sys/leases, not sys/{path}"]}
        return api.sys_leases(method, path.removeprefix("leases/"), body, stores["database"])

    with serve({"database": api.handle, "sys": sys}, stores) as (url, _):
        yield hvac.Client(url=url, token="stand-in-router-checks-no-token")


def test_hvac_dynamic_credentials_and_leases(client: hvac.Client, pg: Postgres) -> None:
    """configure, create_role, generate_credentials, read/list/renew/revoke lease, revoke_prefix."""
    db, leases = client.secrets.database, client.sys
    db.configure("main", "postgresql-database-plugin", allowed_roles=["web"], connection_url=url_template(pg),
                 username=ADMIN, password=ADMIN_PASSWORD)
    assert db.read_connection("main")["data"]["connection_details"]["username"] == ADMIN
    assert db.list_connections()["data"]["keys"] == ["main"]
    db.create_role("web", "main", [CREATE], default_ttl="1h", max_ttl="4h")
    assert db.read_role("web")["data"]["default_ttl"] == 3600
    assert db.list_roles()["data"]["keys"] == ["web"]
    first = db.generate_credentials("web")
    user, password = first["data"]["username"], first["data"]["password"]
    assert can_login(pg, user, password)
    assert leases.read_lease(first["lease_id"])["data"]["id"] == first["lease_id"]
    ids = leases.list_leases("database/creds/web/")["data"]["keys"]
    assert first["lease_id"].rsplit("/", 1)[1] in ids
    assert leases.renew_lease(first["lease_id"], increment=7200)["lease_duration"] == 7200
    leases.revoke_lease(first["lease_id"])
    assert not role_exists(pg, user)
    others = [db.generate_credentials("web")["data"]["username"] for _ in range(3)]
    leases.revoke_prefix("database/creds/web")
    assert not any(role_exists(pg, u) for u in others)
    with pytest.raises(hvac.exceptions.InvalidPath):
        leases.read_lease(first["lease_id"])
    with pytest.raises(hvac.exceptions.InvalidPath, match="does not exist"):
        db.generate_credentials("nope")


def test_hvac_static_role_and_root_rotation(client: hvac.Client, pg: Postgres) -> None:
    """create_static_role, get_static_credentials, rotate_static_role_credentials, rotate_root_credentials."""
    pg.psql("DROP ROLE IF EXISTS hvac_static; CREATE ROLE hvac_static WITH LOGIN PASSWORD 'x'; "
            "GRANT SELECT ON items TO hvac_static; "
            "DROP ROLE IF EXISTS hvac_root; CREATE ROLE hvac_root WITH SUPERUSER LOGIN PASSWORD 'hvac-root-before'")
    db = client.secrets.database
    db.configure("ops", "postgresql-database-plugin", allowed_roles="*", connection_url=url_template(pg),
                 username="hvac_root", password="hvac-root-before")
    db.create_static_role("svc", "ops", "hvac_static",
                          ["ALTER ROLE \"{{name}}\" WITH PASSWORD '{{password}}'"], rotation_period=3600)
    first = db.get_static_credentials("svc")["data"]
    assert first["username"] == "hvac_static" and can_login(pg, "hvac_static", first["password"])
    db.rotate_static_role_credentials("svc")
    second = db.get_static_credentials("svc")["data"]
    assert not can_login(pg, "hvac_static", first["password"]) and can_login(pg, "hvac_static", second["password"])
    db.rotate_root_credentials("ops")
    assert not can_login(pg, "hvac_root", "hvac-root-before")
    db.rotate_static_role_credentials("svc")                     # the engine still gets in with the new root
    assert can_login(pg, "hvac_static", db.get_static_credentials("svc")["data"]["password"])
