"""Dynamic PostgreSQL credentials against a real server: roles really created, able to log in, gone after
revocation or expiry (also when another process reaps them), renewals, static roles and root rotation.
The engine's store is a MemoryStore or the on-disk FileStore (the vault's barrier is being built in parallel)."""

from __future__ import annotations

import datetime as dt
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import psycopg
import pytest

from reconcilers.vault.database import api, creds, reaper
from reconcilers.vault.pki.storage import KeyValueStore, MemoryStore
from tests.reconcilers.vault.database.conftest import (
    ADMIN,
    ADMIN_PASSWORD,
    FileStore,
    can_login,
    role_exists,
    url_template,
)
from tests.servers import Postgres

CREATE = ("CREATE ROLE \"{{name}}\" WITH LOGIN PASSWORD '{{password}}' VALID UNTIL '{{expiration}}'; "
          "GRANT SELECT ON items TO \"{{name}}\";")


def call(store: KeyValueStore, method: str, path: str, body: dict[str, Any] | None = None, *, status: int = 200,
         now: dt.datetime | None = None) -> dict[str, Any]:
    got, reply = api.handle(method, path, body or {}, store, now=now)
    assert got == status, f"{method} {path}: {got} {reply}"
    return reply


def leases_call(store: KeyValueStore, method: str, path: str, body: dict[str, Any] | None = None, *,
                status: int = 200, now: dt.datetime | None = None) -> dict[str, Any]:
    got, reply = api.sys_leases(method, path, body or {}, store, now=now)
    assert got == status, f"{method} sys/leases/{path}: {got} {reply}"
    return reply


def configure(store: KeyValueStore, pg: Postgres, **role: Any) -> None:
    call(store, "POST", "config/main", {"plugin_name": "postgresql-database-plugin",
                                        "connection_url": url_template(pg), "username": ADMIN,
                                        "password": ADMIN_PASSWORD, "allowed_roles": ["app", "short", "bad"]},
         status=204)
    call(store, "POST", "roles/app", {"db_name": "main", "creation_statements": CREATE, "default_ttl": "1h",
                                      "max_ttl": "2h", **role}, status=204)


def test_creds_log_in_and_revocation_drops_the_role(pg: Postgres) -> None:
    """creds/app makes a role that logs in with its password (and only with it); revoking the lease drops it
    and ends its open sessions."""
    store = MemoryStore()
    configure(store, pg)
    reply = call(store, "GET", "creds/app")
    user, password = reply["data"]["username"], reply["data"]["password"]
    assert reply["lease_duration"] == 3600 and reply["renewable"] is True
    assert reply["lease_id"].startswith("database/creds/app/")
    assert can_login(pg, user, password) and not can_login(pg, user, password + "x")
    session = psycopg.connect(host="127.0.0.1", port=pg.port, dbname="postgres", user=user, password=password)
    looked = leases_call(store, "PUT", "lookup", {"lease_id": reply["lease_id"]})["data"]
    assert looked["id"] == reply["lease_id"] and 3590 <= looked["ttl"] <= 3600
    leases_call(store, "PUT", "revoke", {"lease_id": reply["lease_id"]}, status=204)
    assert not role_exists(pg, user) and not can_login(pg, user, password)
    with pytest.raises(psycopg.OperationalError):
        session.execute("SELECT 1")                           # its open session was ended too
    session.close()
    leases_call(store, "PUT", "lookup", {"lease_id": reply["lease_id"]}, status=404)


def test_the_reaper_revokes_expired_leases_and_only_those(pg: Postgres) -> None:
    """reap() at a time past one lease's expiry drops that role and keeps the one still valid."""
    store = MemoryStore()
    configure(store, pg)
    call(store, "POST", "roles/short", {"db_name": "main", "creation_statements": CREATE, "default_ttl": "60s"},
         status=204)
    short = call(store, "GET", "creds/short")["data"]
    long = call(store, "GET", "creds/app")["data"]
    report = reaper.reap(store, time.time() + 120, max_connections=2)
    assert (report.due, report.revoked, report.pending) == (1, 1, 0)
    assert not role_exists(pg, short["username"])
    assert role_exists(pg, long["username"]) and can_login(pg, long["username"], long["password"])
    assert reaper.reap(store, time.time() + 120).due == 0
    assert reaper.reap(store, time.time() + 7200).revoked == 1


def test_leases_survive_a_restart_and_another_process_reaps_them(pg: Postgres, tmp_path: Path) -> None:
    """Credentials made by one process (its own store object over the directory) are reaped by a fresh one."""
    store_dir = tmp_path / "vault-store"
    script = f"""
import json, sys
sys.path.insert(0, {str(Path(__file__).resolve().parents[4])!r})
from reconcilers.vault.database import api
from tests.reconcilers.vault.database.conftest import FileStore
store = FileStore(__import__("pathlib").Path({str(store_dir)!r}))
for method, path, body in [
    ("POST", "config/main", {{"plugin_name": "postgresql", "connection_url": {url_template(pg)!r},
                             "username": {ADMIN!r}, "password": {ADMIN_PASSWORD!r}, "allowed_roles": "*"}}),
    ("POST", "roles/app", {{"db_name": "main", "creation_statements": {CREATE!r}, "default_ttl": "5m"}}),
]:
    status, reply = api.handle(method, path, body, store)
    assert status < 300, reply
status, reply = api.handle("GET", "creds/app", {{}}, store)
assert status == 200, reply
print(reply["data"]["username"])
"""
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    user = out.stdout.strip()
    assert role_exists(pg, user)
    fresh = FileStore(store_dir)                        # the "restarted daemon": nothing but what is stored
    assert reaper.reap(fresh, time.time() + 10).due == 0
    report = reaper.reap(fresh, time.time() + 600)
    assert report.revoked == 1 and not role_exists(pg, user)
    assert fresh.list("leases/app/") == []


def test_renew_extends_up_to_max_ttl(pg: Postgres) -> None:
    """renew moves expiry (and VALID UNTIL) forward, capped by the role's max_ttl with a warning."""
    store = MemoryStore()
    configure(store, pg)
    now = dt.datetime.now(dt.UTC).replace(microsecond=0)
    reply = call(store, "GET", "creds/app", now=now)
    later = now + dt.timedelta(minutes=30)
    renewed = leases_call(store, "PUT", "renew", {"lease_id": reply["lease_id"], "increment": "1h"}, now=later)
    assert renewed["lease_duration"] == 3600 and "warnings" not in renewed
    capped = leases_call(store, "PUT", "renew", {"lease_id": reply["lease_id"], "increment": "5h"}, now=later)
    assert capped["lease_duration"] == 5400 and "max_ttl" in capped["warnings"][0]
    until = pg.psql(f"SELECT extract(epoch FROM rolvaliduntil)::bigint FROM pg_roles "
                    f"WHERE rolname = '{reply['data']['username']}'")
    assert int(until) == int((now + dt.timedelta(hours=2)).timestamp())
    leases_call(store, "PUT", "revoke", {"lease_id": reply["lease_id"]}, status=204)


def test_ten_dozen_leases_expiring_together_use_bounded_connections(pg: Postgres) -> None:
    """120 leases due at once are revoked over at most 3 connections: the admin's connection limit (4) would
    refuse a fifth, so a reaper opening one per lease would leave leases pending."""
    store = MemoryStore()
    configure(store, pg)
    users = [call(store, "GET", "creds/app")["data"]["username"] for _ in range(120)]
    pg.psql(f"ALTER ROLE {ADMIN} CONNECTION LIMIT 4")
    try:
        report = reaper.reap(store, time.time() + 3 * 3600, max_connections=3)
    finally:
        pg.psql(f"ALTER ROLE {ADMIN} CONNECTION LIMIT -1")
    assert (report.due, report.revoked, report.pending) == (120, 120, 0)
    assert 1 <= report.max_open_connections <= 3
    names = ", ".join(f"'{u}'" for u in users)
    assert pg.psql(f"SELECT count(*) FROM pg_roles WHERE rolname IN ({names})") == "0"


def test_static_role_rotates_and_the_old_password_stops_working(pg: Postgres) -> None:
    """static-roles/<r> sets a password at once; rotate_due after the period changes it; only the newest works."""
    pg.psql("DROP ROLE IF EXISTS app_static; CREATE ROLE app_static WITH LOGIN PASSWORD 'set-by-hand'; "
            "GRANT SELECT ON items TO app_static")
    store = MemoryStore()
    configure(store, pg)
    call(store, "POST", "config/main", {"allowed_roles": ["app", "reports"]}, status=204)
    call(store, "POST", "static-roles/reports", {"db_name": "main", "username": "app_static",
                                                  "rotation_period": "1h"}, status=204)
    assert not can_login(pg, "app_static", "set-by-hand")
    first = call(store, "GET", "static-creds/reports")["data"]
    assert first["username"] == "app_static" and 3590 <= first["ttl"] <= 3600
    assert can_login(pg, "app_static", first["password"])
    assert creds.rotate_due(store, int(time.time()) + 60) == {}
    assert creds.rotate_due(store, int(time.time()) + 3601) == {"reports": "rotated"}
    second = call(store, "GET", "static-creds/reports")["data"]
    assert second["password"] != first["password"]
    assert can_login(pg, "app_static", second["password"]) and not can_login(pg, "app_static", first["password"])


def test_rotate_root_leaves_only_the_vault_knowing_the_password(pg: Postgres) -> None:
    """rotate-root changes the admin's password in PostgreSQL: the old one fails, the engine still works, and
    reading the connection shows no password."""
    pg.psql("DROP ROLE IF EXISTS rootrot; CREATE ROLE rootrot WITH SUPERUSER LOGIN PASSWORD 'before-rotation'")
    store = MemoryStore()
    call(store, "POST", "config/rot", {"plugin_name": "postgresql", "connection_url": url_template(pg),
                                       "username": "rootrot", "password": "before-rotation", "allowed_roles": "app"},
         status=204)
    call(store, "POST", "roles/app", {"db_name": "rot", "creation_statements": CREATE}, status=204)
    call(store, "POST", "rotate-root/rot", status=204)
    assert not can_login(pg, "rootrot", "before-rotation")
    made = call(store, "GET", "creds/app")["data"]
    assert can_login(pg, made["username"], made["password"])
    shown = call(store, "GET", "config/rot")["data"]
    assert "password" not in str(shown).replace("{{password}}", "")
    reaper.reap(store, time.time() + 7200)


def test_a_role_dropped_by_hand_does_not_leave_its_lease_pending(pg: Postgres) -> None:
    """A lease whose database role someone already dropped is revoked cleanly by the default statements (before
    they were guarded by the role's existence, REVOKE failed and the lease stayed pending forever)."""
    store = MemoryStore()
    configure(store, pg)
    call(store, "POST", "roles/short", {"db_name": "main", "creation_statements": CREATE, "default_ttl": "60s"},
         status=204)
    user = call(store, "GET", "creds/short")["data"]["username"]
    pg.psql(f'DROP OWNED BY "{user}"; DROP ROLE "{user}"')
    report = reaper.reap(store, time.time() + 120)
    assert (report.revoked, report.pending) == (1, 0)
