"""Connections: config/<name> holds a PostgreSQL URL template with {{username}}/{{password}}, the root user
and its password (kept in the barrier, never read back), and which roles may use it; rotate-root/<name>
changes the root password in PostgreSQL so that only the vault knows it.

Rotation writes the new password as `pending_password` before changing it in PostgreSQL, so a crash between
the two still leaves the vault with the password that works (connect tries both).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

from reconcilers.vault.database import sql
from reconcilers.vault.database.errors import DatabaseError, DatabaseNotFound, DatabaseUnreachable
from reconcilers.vault.pki.storage import KeyValueStore, get_json, put_json

if TYPE_CHECKING:
    import psycopg

NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$")
USERNAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.@-]{0,62}$")
PLUGINS = ("postgresql-database-plugin", "postgresql")
DEFAULT_ROTATE_ROOT = ('ALTER ROLE "{{username}}" WITH PASSWORD \'{{password}}\'',)


def check_name(name: str, what: str) -> str:
    """A connection or role name: letters, digits, '_' and '-' (it becomes part of database role names)."""
    if not NAME.match(name):
        raise DatabaseError(f"{what} name {name!r} is not valid", hint="use letters, digits, '_' and '-' (max 64)")
    return name


@dataclass(frozen=True, slots=True)
class Connection:
    """One database connection as stored under config/<name> (password included: the barrier encrypts it)."""

    name: str
    connection_url: str
    username: str = ""
    password: str = ""
    allowed_roles: tuple[str, ...] = ()
    verify_connection: bool = True
    max_open_connections: int = 4
    root_rotation_statements: tuple[str, ...] = DEFAULT_ROTATE_ROOT
    pending_password: str = ""

    def allows(self, role: str) -> bool:
        """May the role use this connection ("*" allows all)?"""
        return "*" in self.allowed_roles or role in self.allowed_roles

    def public(self) -> dict[str, Any]:
        """The read form: no password, a URL without a literal password (as Vault's read answers)."""
        return {"plugin_name": PLUGINS[0], "allowed_roles": list(self.allowed_roles),
                "connection_details": {"connection_url": sql.safe_url(self.connection_url),
                                       "username": self.username,
                                       "max_open_connections": self.max_open_connections},
                "verify_connection": self.verify_connection,
                "root_credentials_rotate_statements": list(self.root_rotation_statements)}

    def connect(self) -> psycopg.Connection[tuple[object, ...]]:
        """A connection as the root user; after an interrupted rotation, the pending password is tried too."""
        where = f"database connection {self.name}"
        try:
            return sql.connect(sql.render_url(self.connection_url, self.username, self.password), where,
                               self.password, self.pending_password)
        except DatabaseUnreachable:
            if not self.pending_password:
                raise
            return sql.connect(sql.render_url(self.connection_url, self.username, self.pending_password), where,
                               self.password, self.pending_password)


def _to_json(conn: Connection) -> dict[str, Any]:
    return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(conn).items()}


def load(store: KeyValueStore, name: str) -> Connection:
    """The stored connection, or a not-found error naming it."""
    data = get_json(store, "config/" + check_name(name, "connection"))
    if data is None:
        raise DatabaseNotFound(f"database connection {name!r} does not exist", hint="create it with config/<name>")
    fields: dict[str, Any] = {k: tuple(v) if isinstance(v, list) else v for k, v in data.items()
                              if k in Connection.__dataclass_fields__}
    return Connection(**fields)


def save(store: KeyValueStore, conn: Connection) -> None:
    """Store the connection."""
    put_json(store, "config/" + conn.name, _to_json(conn))


def _list(value: object, field: str) -> tuple[str, ...]:
    if value is None or value == "":
        return ()
    if isinstance(value, str):
        return tuple(v.strip() for v in value.split(",") if v.strip())
    if isinstance(value, list | tuple) and all(isinstance(v, str) for v in value):
        return tuple(value)
    raise DatabaseError(f"{field}: expected a list of names or a comma-separated string")


def write(store: KeyValueStore, name: str, body: Mapping[str, Any]) -> list[str]:
    """config/<name>: create or update; with verify_connection (the default) the database must answer first."""
    check_name(name, "connection")
    old = get_json(store, "config/" + name)
    base: dict[str, Any] = dict(old) if old else {"name": name}
    plugin = body.get("plugin_name", PLUGINS[0] if old else None)
    if plugin is None:
        raise DatabaseError(f"database connection {name}: plugin_name is required",
                            hint='use "postgresql-database-plugin"')
    if plugin not in PLUGINS:
        raise DatabaseError(f"plugin_name {plugin!r} is not supported", hint='use "postgresql-database-plugin"')
    for key in ("connection_url", "username", "password"):
        if key in body:
            if not isinstance(body[key], str) or len(body[key]) > 4096:
                raise DatabaseError(f"{key}: expected a string")
            base[key] = body[key]
    if "allowed_roles" in body:
        base["allowed_roles"] = list(_list(body["allowed_roles"], "allowed_roles"))
    if "root_rotation_statements" in body:
        base["root_rotation_statements"] = list(sql.statements_field(body["root_rotation_statements"],
                                                                     "root_rotation_statements"))
    if "verify_connection" in body:
        base["verify_connection"] = body["verify_connection"] in (True, "true", "1", 1)
    if "max_open_connections" in body:
        try:
            base["max_open_connections"] = max(1, min(64, int(body["max_open_connections"])))
        except (TypeError, ValueError):
            raise DatabaseError("max_open_connections: expected a number") from None
    if base.get("username") and not USERNAME.match(base["username"]):
        raise DatabaseError(f"database connection {name}: username {base['username']!r} is not a plain role name",
                            hint="use letters, digits and _ . @ - (it is quoted into rotate-root's statement)")
    url = base.get("connection_url", "")
    if not url.startswith(("postgresql://", "postgres://")):
        raise DatabaseError(f"connection_url: {sql.safe_url(url)!r} is not a PostgreSQL URL",
                            hint="postgresql://{{username}}:{{password}}@host:5432/db")
    warnings = []
    if "{{password}}" not in url and base.get("password"):
        warnings.append("connection_url has no {{password}}: the password given is not used, and rotate-root "
                        "cannot take effect")
    fields: dict[str, Any] = {k: tuple(v) if isinstance(v, list) else v for k, v in base.items()
                              if k in Connection.__dataclass_fields__}
    conn = Connection(**fields)
    if conn.verify_connection:
        with conn.connect() as live:
            live.execute("SELECT 1")
    save(store, conn)
    return warnings


def rotate_root(store: KeyValueStore, name: str) -> None:
    """rotate-root/<name>: a new root password, set in PostgreSQL and then kept (pending first: crash-safe)."""
    conn = load(store, name)
    if not conn.username or "{{password}}" not in conn.connection_url:
        raise DatabaseError(f"database connection {name}: rotate-root needs username and a {{{{password}}}} "
                            "placeholder in connection_url")
    new = sql.new_password()
    with conn.connect() as live:
        save(store, Connection(**{**asdict(conn), "pending_password": new}))
        try:
            sql.run_statements(live, conn.root_rotation_statements, role=f"(root of {name})",
                               kind="root_rotation_statements", name=conn.username, password=new)
        except DatabaseError:
            save(store, conn)               # refused: the old password still holds, forget the new one
            raise
    save(store, Connection(**{**asdict(conn), "password": new, "pending_password": ""}))
