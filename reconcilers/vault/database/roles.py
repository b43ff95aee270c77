"""Role definitions: dynamic roles (roles/<r>: statements that create and drop a database role per lease) and
static roles (static-roles/<r>: one existing database role whose password the vault rotates)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

from reconcilers.vault.database import config, sql
from reconcilers.vault.database.errors import DatabaseError, DatabaseNotFound
from reconcilers.vault.durations import HINT, DurationError, parse_duration
from reconcilers.vault.pki.storage import KeyValueStore, get_json, put_json

DEFAULT_TTL = 3600
DEFAULT_MAX_TTL = 24 * 3600
# Vault's PostgreSQL plugin defaults: end the role's sessions, take back what it was granted, drop it. Guarded
# by the role's existence: a role already dropped by hand must not leave its lease pending forever.
DEFAULT_REVOCATION = (
    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = '{{name}}'",
    "DO $$ BEGIN IF EXISTS (SELECT 1 FROM pg_roles WHERE rolname = '{{name}}') THEN "
    "REVOKE ALL PRIVILEGES ON ALL TABLES IN SCHEMA public FROM \"{{name}}\"; "
    "REVOKE ALL PRIVILEGES ON ALL SEQUENCES IN SCHEMA public FROM \"{{name}}\"; "
    "REVOKE USAGE ON SCHEMA public FROM \"{{name}}\"; "
    "DROP ROLE \"{{name}}\"; END IF; END $$",
)
DEFAULT_RENEW = ("ALTER ROLE \"{{name}}\" VALID UNTIL '{{expiration}}'",)
DEFAULT_ROTATION = ("ALTER ROLE \"{{name}}\" WITH PASSWORD '{{password}}'",)


def duration(value: object, field: str) -> int:
    """Seconds in a Vault-style duration, or a DatabaseError naming the field."""
    try:
        return parse_duration(value, field)
    except DurationError as err:
        raise DatabaseError(str(err), hint=HINT) from None


@dataclass(frozen=True, slots=True)
class DynamicRole:
    """roles/<name>: credentials made per request, each a lease."""

    name: str
    db_name: str
    creation_statements: tuple[str, ...]
    revocation_statements: tuple[str, ...] = DEFAULT_REVOCATION
    renew_statements: tuple[str, ...] = DEFAULT_RENEW
    default_ttl: int = DEFAULT_TTL
    max_ttl: int = DEFAULT_MAX_TTL

    def to_json(self) -> dict[str, Any]:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}


@dataclass(frozen=True, slots=True)
class StaticRole:
    """static-roles/<name>: an existing database user whose password rotates every rotation_period."""

    name: str
    db_name: str
    username: str
    rotation_period: int
    rotation_statements: tuple[str, ...] = DEFAULT_ROTATION

    def to_json(self) -> dict[str, Any]:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}


def _fields(data: Mapping[str, Any], kind: type[DynamicRole] | type[StaticRole]) -> dict[str, Any]:
    return {k: tuple(v) if isinstance(v, list) else v for k, v in data.items() if k in kind.__dataclass_fields__}


def _db_name(store: KeyValueStore, body: Mapping[str, Any], old: Mapping[str, Any] | None, role: str) -> str:
    db_name = body.get("db_name", old["db_name"] if old else None)
    if not isinstance(db_name, str):
        raise DatabaseError(f"role {role}: db_name is required")
    conn = config.load(store, db_name)
    if not conn.allows(role):
        raise DatabaseError(f"role {role}: database connection {db_name} does not allow it",
                            hint=f"add {role!r} to the connection's allowed_roles")
    return db_name


def write_dynamic(store: KeyValueStore, name: str, body: Mapping[str, Any]) -> None:
    """roles/<name>: create or update a dynamic role (creation statements are required)."""
    config.check_name(name, "role")
    old = get_json(store, "roles/" + name)
    role = dynamic_from_body(name, {**body, "db_name": _db_name(store, body, old, name)}, old)
    put_json(store, "roles/" + name, role.to_json())


def dynamic_from_body(name: str, body: Mapping[str, Any], old: Mapping[str, Any] | None = None) -> DynamicRole:
    """A dynamic role from a request body over its stored form (pure: the connection is checked by callers)."""
    config.check_name(name, "role")
    base: dict[str, Any] = _fields(old, DynamicRole) if old else {"name": name}
    if not isinstance(body.get("db_name", base.get("db_name")), str):
        raise DatabaseError(f"role {name}: db_name is required")
    base["db_name"] = body.get("db_name", base.get("db_name"))
    for key in ("creation_statements", "revocation_statements", "renew_statements"):
        if key in body:
            base[key] = sql.statements_field(body[key], key)
    if not base.get("creation_statements"):
        raise DatabaseError(f"role {name}: creation_statements are required",
                            hint="CREATE ROLE \"{{name}}\" WITH LOGIN PASSWORD '{{password}}' VALID UNTIL "
                                 "'{{expiration}}';")
    if not any("{{name}}" in s or "{{username}}" in s for s in base["creation_statements"]):
        raise DatabaseError(f"role {name}: creation_statements never use {{{{name}}}}",
                            hint="each lease's database role is named by {{name}}")
    for key in ("default_ttl", "max_ttl"):
        if key in body:
            base[key] = duration(body[key], key)
    role = DynamicRole(**base)
    if role.max_ttl and role.default_ttl > role.max_ttl:
        raise DatabaseError(f"role {name}: default_ttl ({role.default_ttl} s) is over max_ttl ({role.max_ttl} s)")
    return role


def load_dynamic(store: KeyValueStore, name: str) -> DynamicRole:
    """The dynamic role, or a not-found error naming it."""
    data = get_json(store, "roles/" + config.check_name(name, "role"))
    if data is None:
        raise DatabaseNotFound(f"role {name!r} does not exist", hint="create it with roles/<name> first")
    return DynamicRole(**_fields(data, DynamicRole))


def write_static(store: KeyValueStore, name: str, body: Mapping[str, Any]) -> StaticRole:
    """static-roles/<name>: create or update; the caller rotates the password at once (as Vault does)."""
    config.check_name(name, "static role")
    old = get_json(store, "static-roles/" + name)
    role = static_from_body(name, {**body, "db_name": _db_name(store, body, old, name)}, old)
    put_json(store, "static-roles/" + name, role.to_json())
    return role


def static_from_body(name: str, body: Mapping[str, Any], old: Mapping[str, Any] | None = None) -> StaticRole:
    """A static role from a request body over its stored form (pure: the connection is checked by callers)."""
    config.check_name(name, "static role")
    base: dict[str, Any] = _fields(old, StaticRole) if old else {"name": name}
    base["db_name"] = body.get("db_name", base.get("db_name"))
    if "username" in body:
        username = body["username"]
        if not isinstance(username, str) or not config.NAME.match(username):
            raise DatabaseError(f"static role {name}: username {username!r} is not valid")
        base["username"] = username
    if "rotation_period" in body:
        base["rotation_period"] = duration(body["rotation_period"], "rotation_period")
    if "rotation_statements" in body:
        base["rotation_statements"] = sql.statements_field(body["rotation_statements"], "rotation_statements")
    for key in ("username", "rotation_period"):
        if key not in base:
            raise DatabaseError(f"static role {name}: {key} is required")
    if base["rotation_period"] < 5:
        raise DatabaseError(f"static role {name}: rotation_period must be at least 5 s")
    return StaticRole(**base)


def load_static(store: KeyValueStore, name: str) -> StaticRole:
    """The static role, or a not-found error naming it."""
    data = get_json(store, "static-roles/" + config.check_name(name, "static role"))
    if data is None:
        raise DatabaseNotFound(f"static role {name!r} does not exist", hint="create it with static-roles/<name>")
    return StaticRole(**_fields(data, StaticRole))
