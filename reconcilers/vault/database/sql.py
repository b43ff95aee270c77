"""Connecting to PostgreSQL and running a role's statements, with every error scrubbed of passwords.

Statements are templates: {{name}} / {{username}} (the role in the database), {{password}}, {{expiration}}
("2026-12-07 13:00:00+0000"). A role's statements run in one transaction, so a failing one leaves nothing
behind. Errors name the role, the statement's number and its template text (never the rendered one), and only
PostgreSQL's primary message with any password replaced: psycopg's full text would quote the query.
"""

from __future__ import annotations

import datetime as dt
import random
import re
import secrets
import string
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING
from urllib.parse import quote, urlsplit, urlunsplit

from reconcilers.vault.database.errors import DatabaseError, DatabaseUnreachable, StatementError

if TYPE_CHECKING:
    import psycopg  # imported where a connection is made: validate and plan never load the driver

CONNECT_TIMEOUT = 5                   # seconds: a database that does not answer fails fast, then is retried
_PASSWORD_ALPHABET = string.ascii_letters + string.digits
_URL_PASSWORD = re.compile(r"(://[^:/@]*:)([^@]*)@")
_QUOTED = re.compile(r'"([^"]*)"')


def new_password(length: int = 24) -> str:
    """A random password of letters and digits (safe inside a quoted SQL literal)."""
    return "A1a-" + "".join(secrets.choice(_PASSWORD_ALPHABET) for _ in range(length - 4))


def expiration_text(moment: dt.datetime) -> str:
    """{{expiration}} as PostgreSQL's VALID UNTIL reads it."""
    return moment.astimezone(dt.UTC).strftime("%Y-%m-%d %H:%M:%S+0000")


def render_url(template: str, username: str, password: str) -> str:
    """The connection URL with {{username}}/{{password}} filled in, URL-quoted."""
    return template.replace("{{username}}", quote(username, safe="")).replace("{{password}}", quote(password, safe=""))


def _mask_url(match: re.Match[str]) -> str:
    """user:password@ -> user:****@, but the {{password}} placeholder stays (it is no secret)."""
    return match.group(0) if match.group(2) == "{{password}}" else match.group(1) + "****@"


def safe_url(template: str) -> str:
    """The URL template for messages: a literal password in it is masked."""
    return urlunsplit(urlsplit(_URL_PASSWORD.sub(_mask_url, template)))


def scrub(text: str, *secret_values: str) -> str:
    """`text` with every secret value (and its URL-quoted form) replaced by ****, and any quoted fragment that
    is a piece of one (PostgreSQL quotes the token it choked on: `syntax error at or near "kX9..."`)."""
    for value in secret_values:
        if value:
            text = text.replace(value, "****").replace(quote(value, safe=""), "****")

    def piece(match: re.Match[str]) -> str:
        inner = match.group(1)
        leaks = len(inner) >= 3 and any(inner in v for v in secret_values if v)
        return '"****"' if leaks else match.group(0)

    return _URL_PASSWORD.sub(_mask_url, _QUOTED.sub(piece, text))


def connect(url: str, where: str, *secret_values: str) -> psycopg.Connection[tuple[object, ...]]:
    """Open a connection (autocommit; statements choose their transaction) or raise DatabaseUnreachable."""
    import psycopg

    try:
        return psycopg.connect(url, connect_timeout=CONNECT_TIMEOUT, autocommit=True)
    except psycopg.OperationalError as err:
        reason = str(err).strip().splitlines()[-1] if str(err).strip() else type(err).__name__
        raise DatabaseUnreachable(f"{where}: the database cannot be reached ({scrub(reason, *secret_values)})",
                                  hint="check that PostgreSQL runs and the connection URL is right") from None


def render(statement: str, name: str, password: str = "", expiration: str = "") -> str:
    """A statement template with its placeholders filled in."""
    return (statement.replace("{{name}}", name).replace("{{username}}", name)
            .replace("{{password}}", password).replace("{{expiration}}", expiration))


def _concurrent(err: psycopg.Error) -> bool:
    """A conflict with another transaction that a retry resolves: serialization failure, deadlock, or the
    "tuple concurrently updated" that concurrent GRANT/REVOKE on one table raise (catalog rows, no MVCC)."""
    primary = err.diag.message_primary or ""
    return err.sqlstate in ("40001", "40P01") or "concurrently updated" in primary


def run_statements(conn: psycopg.Connection[tuple[object, ...]], statements: Sequence[str], *, role: str,
                   kind: str, name: str, password: str = "", expiration: str = "", retries: int = 8) -> None:
    """Run the statements in one transaction; a failure rolls back and names role, kind and statement.
    A conflict with a concurrent transaction retries the whole transaction (bounded, with jitter)."""
    for attempt in range(retries + 1):
        try:
            _run_once(conn, statements, role=role, kind=kind, name=name, password=password, expiration=expiration)
            return
        except _Conflict as conflict:
            if attempt == retries:
                raise conflict.error from None
            time.sleep(random.uniform(0.005, 0.02) * (attempt + 1))


class _Conflict(Exception):
    def __init__(self, error: StatementError) -> None:
        self.error = error


def _run_once(conn: psycopg.Connection[tuple[object, ...]], statements: Sequence[str], *, role: str, kind: str,
              name: str, password: str, expiration: str) -> None:
    import psycopg

    try:
        with conn.transaction():
            for number, template in enumerate(statements, 1):
                try:
                    conn.execute(render(template, name, password, expiration).encode())
                except psycopg.OperationalError:
                    raise
                except psycopg.Error as err:
                    primary = err.diag.message_primary or type(err).__name__
                    shown = template if len(template) <= 200 else template[:200] + "..."
                    error = StatementError(
                        f"role {role}: {kind} statement {number} failed: {scrub(primary, password)}",
                        where=f"statement {number}: {shown}",
                        hint=f"fix the role's {kind}; nothing of it was applied")
                    if _concurrent(err):
                        raise _Conflict(error) from None
                    raise error from None
    except psycopg.OperationalError as err:
        last = str(err).strip().splitlines()[-1] if str(err).strip() else type(err).__name__
        raise DatabaseUnreachable(f"role {role}: the database went away during its {kind} ({scrub(last, password)})",
                                  hint="nothing was applied; try again when PostgreSQL is back") from None


def statements_field(value: object, field: str) -> tuple[str, ...]:
    """A statements field: one string or a list of strings (Vault accepts both); bounded in count and size."""
    if isinstance(value, str):
        items = [value] if value.strip() else []
    elif isinstance(value, list | tuple) and all(isinstance(v, str) for v in value):
        items = [v for v in value if v.strip()]
    else:
        raise DatabaseError(f"{field}: expected a statement or a list of statements")
    if len(items) > 64 or any(len(v) > 16_384 for v in items):
        raise DatabaseError(f"{field}: at most 64 statements of 16 KiB each")
    return tuple(items)
