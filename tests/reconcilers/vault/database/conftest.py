"""A PostgreSQL of this package's own (tests/servers.py's start_postgres), set so that passwords matter:
`postgres` keeps trust on loopback for the tests' checks, every other user needs its password (scram), and an
admin role `vaultadmin` (superuser, with a password) is what the engine connects as."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from tests.servers import Postgres, start_postgres

ADMIN = "vaultadmin"
ADMIN_PASSWORD = "test-only-admin-password"        # a throwaway cluster's password, not a real secret


def harden(pg: Postgres) -> None:
    """Require passwords of everyone but `postgres`, and create the admin role and a table to grant on."""
    (pg.data / "pg_hba.conf").write_text(
        "local all postgres trust\nhost all postgres 127.0.0.1/32 trust\n"
        "local all all scram-sha-256\nhost all all 127.0.0.1/32 scram-sha-256\n")
    pg.psql("SELECT pg_reload_conf()")
    pg.psql(f"CREATE ROLE {ADMIN} WITH SUPERUSER LOGIN PASSWORD '{ADMIN_PASSWORD}'")
    pg.psql("CREATE TABLE items (id int); INSERT INTO items VALUES (1), (2)")


@pytest.fixture(scope="session")
def pg() -> Iterator[Postgres]:
    # Its own temp dir, not pytest's: a pytest run started meanwhile by someone else on the machine prunes old
    # /tmp/pytest-of-<user>/pytest-N folders, which once took a running cluster's folder away here.
    root = Path(tempfile.mkdtemp(prefix="stratum-pg-engines-"))
    try:
        server = start_postgres(root / "pg")
    except subprocess.CalledProcessError as err:
        pytest.fail(f"initdb failed: {err.stderr!r}", pytrace=False)
    harden(server)
    yield server
    server.stop()
    shutil.rmtree(root, ignore_errors=True)


def url_template(pg: Postgres) -> str:
    return f"postgresql://{{{{username}}}}:{{{{password}}}}@127.0.0.1:{pg.port}/postgres"


def can_login(pg: Postgres, user: str, password: str) -> bool:
    """Does PostgreSQL let `user` in with `password` (and read the table)?"""
    try:
        with psycopg.connect(host="127.0.0.1", port=pg.port, dbname="postgres", user=user, password=password,
                             connect_timeout=10) as conn:
            conn.execute("SELECT count(*) FROM items").fetchone()
    except psycopg.OperationalError:
        return False
    return True


def role_exists(pg: Postgres, name: str) -> bool:
    return pg.psql(f"SELECT count(*) FROM pg_roles WHERE rolname = '{name}'") == "1"


class FileStore:
    """A KeyValueStore on disk (a file per entry, written atomically): a real store that a second process can
    open, standing in for the vault's file barrier being built in parallel."""

    def __init__(self, root: Path) -> None:
        self.root = root
        root.mkdir(parents=True, exist_ok=True)

    def _file(self, path: str) -> Path:
        return self.root / path.replace("/", "%")

    def get(self, path: str) -> bytes | None:
        try:
            return self._file(path).read_bytes()
        except FileNotFoundError:
            return None

    def put(self, path: str, value: bytes) -> None:
        tmp = self._file(path).with_name(self._file(path).name + f".{os.getpid()}.tmp")
        tmp.write_bytes(value)
        tmp.replace(self._file(path))

    def delete(self, path: str) -> None:
        self._file(path).unlink(missing_ok=True)

    def list(self, prefix: str) -> list[str]:
        names = [p.name.replace("%", "/") for p in self.root.iterdir() if not p.name.endswith(".tmp")]
        return sorted({n[len(prefix):].split("/")[0] + ("/" if "/" in n[len(prefix):] else "")
                       for n in names if n.startswith(prefix)})
