"""Faults and bad input for the database engine: PostgreSQL down when credentials are made (a clear error, no
lease) or revoked (the lease stays listed as pending and is retried with backoff until it goes), statements
with errors (named role and statement, no password), and requests for things that do not exist."""

from __future__ import annotations

import shutil
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from reconcilers.vault.database import leases, reaper, sql
from reconcilers.vault.database.errors import StatementError
from reconcilers.vault.pki.storage import MemoryStore
from tests.reconcilers.vault.database.conftest import ADMIN, ADMIN_PASSWORD, harden, role_exists, url_template
from tests.reconcilers.vault.database.test_database_creds import CREATE, call, configure, leases_call
from tests.servers import Postgres, free_port, start_postgres


@pytest.fixture(scope="module")
def flaky_pg() -> Iterator[Postgres]:
    """A cluster of this module's own: its tests stop and start it."""
    root = Path(tempfile.mkdtemp(prefix="stratum-pg-engines-faults-"))
    server = start_postgres(root / "pg")
    harden(server)
    yield server
    if server.running():
        server.stop()
    shutil.rmtree(root, ignore_errors=True)


def _no_leases(store: MemoryStore) -> None:
    assert store.list("leases/") == [] and store.list("expiry/") == []


def test_database_down_at_creation_is_a_clear_error_and_leaves_no_lease(flaky_pg: Postgres) -> None:
    """With PostgreSQL stopped, creds answers 502 naming the connection, holds no password, stores no lease."""
    store = MemoryStore()
    configure(store, flaky_pg)
    flaky_pg.stop()
    try:
        reply = call(store, "GET", "creds/app", status=502)
    finally:
        flaky_pg.start()
    error = reply["errors"][0]
    assert "database connection main" in error and "cannot be reached" in error
    assert ADMIN_PASSWORD not in error and "A1a-" not in error
    _no_leases(store)


def test_database_down_at_revocation_keeps_the_lease_pending_until_it_succeeds(flaky_pg: Postgres) -> None:
    """Revoking while PostgreSQL is down answers 202 and keeps the lease as pending with its error; the reaper
    leaves it alone until its backoff passes, keeps it when the database is still down, and drops the role once
    PostgreSQL is back."""
    store = MemoryStore()
    configure(store, flaky_pg)
    made = call(store, "GET", "creds/app")
    user, lease_id = made["data"]["username"], made["lease_id"]
    flaky_pg.stop()
    try:
        now = int(time.time())
        reply = leases_call(store, "PUT", "revoke", {"lease_id": lease_id}, status=202)
        assert reply["data"]["pending"] == [lease_id] and "retried with backoff" in reply["warnings"][0]
        looked = leases_call(store, "PUT", "lookup", {"lease_id": lease_id})["data"]
        assert looked["revocation_pending"] is True and looked["revocation_attempts"] == 1
        assert "cannot be reached" in looked["last_error"] and looked["renewable"] is False
        assert reaper.reap(store, now + 1).due == 0                  # within the backoff: not tried again
        lease = leases.load(store, lease_id, "database")
        second = reaper.reap(store, lease.next_attempt + 1)          # due, database still down: kept, longer wait
        assert (second.due, second.pending) == (1, 1)
        again = leases.load(store, lease_id, "database")
        assert again.attempts == 2 and again.next_attempt - (lease.next_attempt + 1) >= leases.BACKOFF_BASE * 2
    finally:
        flaky_pg.start()
    assert role_exists(flaky_pg, user)
    done = reaper.reap(store, again.next_attempt + 1)
    assert (done.due, done.revoked) == (1, 1)
    assert not role_exists(flaky_pg, user)
    _no_leases(store)


def test_expiry_while_down_is_retried_not_dropped(flaky_pg: Postgres) -> None:
    """Leases that expire while PostgreSQL is down stay stored (pending) and are revoked after it returns."""
    store = MemoryStore()
    configure(store, flaky_pg)
    users = [call(store, "GET", "creds/app")["data"]["username"] for _ in range(3)]
    later = int(time.time()) + 7200
    flaky_pg.stop()
    try:
        report = reaper.reap(store, later, max_connections=2)
    finally:
        flaky_pg.start()
    assert (report.due, report.revoked, report.pending) == (3, 0, 3)
    assert len(leases.all_leases(store)) == 3
    retry = reaper.reap(store, later + 3600)
    assert retry.revoked == 3 and not any(role_exists(flaky_pg, u) for u in users)


def test_creation_statement_with_a_syntax_error_names_role_and_statement_and_leaks_nothing(pg: Postgres) -> None:
    """A typo in the second creation statement: 400 naming the role, the statement's number and its template;
    no password; the first statement was rolled back (no role left) and no lease is stored."""
    store = MemoryStore()
    configure(store, pg)
    call(store, "POST", "roles/bad", {
        "db_name": "main",
        "creation_statements": ["CREATE ROLE \"{{name}}\" WITH LOGIN PASSWORD '{{password}}'",
                                "GRANT SELECT ON items TOO \"{{name}}\""]}, status=204)
    error = call(store, "GET", "creds/bad", status=400)["errors"][0]
    assert "role bad: creation_statements statement 2 failed: syntax error" in error
    assert "statement 2: GRANT SELECT ON items TOO \"{{name}}\"" in error
    assert "A1a-" not in error and ADMIN_PASSWORD not in error
    assert pg.psql("SELECT count(*) FROM pg_roles WHERE rolname LIKE 'v-bad-%'") == "0"
    _no_leases(store)


def test_postgres_quoting_a_piece_of_the_password_is_scrubbed(pg: Postgres) -> None:
    """An unquoted {{password}} makes PostgreSQL quote the password's token in its message: it is masked."""
    password = "Zq7vXw9-kLm2Np4RsT6u"
    with psycopg.connect(pg.url, autocommit=True) as conn, pytest.raises(StatementError) as caught:
        sql.run_statements(conn, ['CREATE ROLE "{{name}}" WITH LOGIN PASSWORD {{password}}'], role="r",
                           kind="creation_statements", name="scrubbed_user", password=password)
    text = caught.value.render()
    assert "syntax error" in text and '"****"' in text
    for piece in ("Zq7", "kLm2", "Np4RsT6u", password):
        assert piece not in text


def test_unknown_things_and_disallowed_roles(pg: Postgres) -> None:
    """Unknown role or connection: 404 naming it; a role on a connection that does not allow it: 400; a lease id
    of another mount: 404; an unreachable database refuses config with verify_connection, masking a literal
    password in the URL."""
    store = MemoryStore()
    configure(store, pg)
    assert "role 'nope' does not exist" in call(store, "GET", "creds/nope", status=404)["errors"][0]
    call(store, "GET", "config/nope", status=404)
    err = call(store, "POST", "roles/other", {"db_name": "main", "creation_statements": CREATE},
               status=400)["errors"][0]
    assert "does not allow it" in err and "allowed_roles" in err
    call(store, "POST", "roles/app", {"creation_statements": "SELECT 1"}, status=400)     # never uses {{name}}
    call(store, "POST", "roles/app", {"default_ttl": "3h", "max_ttl": "2h"}, status=400)
    leases_call(store, "PUT", "lookup", {"lease_id": "pki/creds/app/x"}, status=404)
    leases_call(store, "PUT", "lookup", {}, status=400)
    port = free_port()
    literal = f"postgresql://{ADMIN}:literal-secret-in-url@127.0.0.1:{port}/postgres"
    err = call(store, "POST", "config/down", {"plugin_name": "postgresql", "connection_url": literal},
               status=502)["errors"][0]
    assert "literal-secret-in-url" not in err and "cannot be reached" in err
    call(store, "GET", "config/down", status=404)
    err = call(store, "POST", "config/x", {"plugin_name": "mysql-database-plugin", "connection_url": literal},
               status=400)["errors"][0]
    assert "not supported" in err
    shown = call(store, "GET", "config/main")["data"]
    assert ADMIN_PASSWORD not in str(shown) and shown["connection_details"]["username"] == ADMIN
    assert url_template(pg) == shown["connection_details"]["connection_url"]


def test_a_username_that_would_break_out_of_its_quotes_is_refused(pg: Postgres) -> None:
    """The root username is quoted into rotate-root's statement: one with a quote in it is refused at config."""
    store = MemoryStore()
    err = call(store, "POST", "config/evil", {"plugin_name": "postgresql", "connection_url": url_template(pg),
                                              "username": 'x"; DROP TABLE items; --', "password": "p",
                                              "verify_connection": False}, status=400)["errors"][0]
    assert "not a plain role name" in err
    call(store, "GET", "config/evil", status=404)
