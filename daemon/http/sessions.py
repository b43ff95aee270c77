"""Browser sessions for the mounts people use with a browser (`/forms`): a browser cannot send
`Authorization: Bearer` on a navigation, so `<mount>/login` takes the token once and gives a session cookie.

    GET  <mount>/login     a page asking for the token (no script)
    POST <mount>/login     token checked like a bearer token (and by the Cedar policy for the mount); a session
                           starts: cookie `stratum_session` (HttpOnly, SameSite=Strict, Secure over TLS,
                           Path=<mount>, Max-Age = the lifetime), then 303 to `next` (a path under the mount)
    POST <mount>/logout    the session ends (needs the session's CSRF token), 303 to the login page

The session table is in memory, bounded (MAX_SESSIONS, the oldest dropped first) and every session expires
after `ttl` seconds whatever it does; a daemon restart logs everyone out. A session stores the digest of the
token it was opened with, never the token: revoking the token (tokens file + SIGHUP) ends its sessions at
their next request. Each session has a CSRF token the mounted app puts in its forms and checks on every POST
(`scope["state"]["csrf"]`); on top, a cookie-authenticated request that changes something must come from the
listener's own origin (Origin header, when the browser sends one) -- SameSite alone lets another port of the
same host through.
"""

from __future__ import annotations

import hashlib
import secrets
import threading
import time
import urllib.parse
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from markupsafe import escape

COOKIE = "stratum_session"
TTL_S = 8 * 3600.0
MAX_SESSIONS = 1024
MAX_LOGIN_BODY = 8 * 1024
SAFE_METHODS = ("GET", "HEAD", "OPTIONS")

Send = Callable[[dict[str, Any]], Any]

PAGE_HEADERS = [(b"content-type", b"text/html; charset=utf-8"), (b"cache-control", b"no-store"),
                (b"x-content-type-options", b"nosniff"),
                (b"content-security-policy", b"default-src 'none'; style-src 'unsafe-inline'; form-action 'self'; "
                                             b"frame-ancestors 'none'; base-uri 'none'")]


@dataclass(frozen=True, slots=True)
class Session:
    """One logged-in browser."""

    token_digest: str        # sha256 of the bearer token it logged in with (what the tokens file stores)
    csrf: str
    mount: str
    expires: float


class SessionStore:
    """Session id digests -> sessions (thread-safe; bounded in size and in lifetime)."""

    def __init__(self, ttl: float = TTL_S, limit: int = MAX_SESSIONS,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.ttl = ttl
        self._limit = limit
        self._clock = clock
        self._items: OrderedDict[str, Session] = OrderedDict()
        self._lock = threading.Lock()

    @staticmethod
    def _key(session_id: str) -> str:
        # Ids are kept as digests: the table in memory (a core dump) gives no usable cookie.
        return hashlib.sha256(session_id.encode()).hexdigest()

    def open(self, token_digest: str, mount: str) -> tuple[str, Session]:
        """A new session: (the cookie's value, the session)."""
        session_id = secrets.token_urlsafe(32)
        session = Session(token_digest, secrets.token_urlsafe(24), mount, self._clock() + self.ttl)
        with self._lock:
            self._expire()
            while len(self._items) >= self._limit:
                self._items.popitem(last=False)
            self._items[self._key(session_id)] = session
        return session_id, session

    def find(self, session_id: str, mount: str) -> Session | None:
        """The live session of a cookie for this mount, else None."""
        with self._lock:
            self._expire()
            found = self._items.get(self._key(session_id))
            return found if found is not None and found.mount == mount else None

    def close(self, session_id: str) -> None:
        """End a session (logout, or its token was revoked)."""
        with self._lock:
            self._items.pop(self._key(session_id), None)

    def __len__(self) -> int:
        with self._lock:
            return len(self._items)

    def _expire(self) -> None:
        now = self._clock()
        for key in [k for k, s in self._items.items() if s.expires <= now]:
            del self._items[key]


def header(scope: Mapping[str, Any], name: bytes) -> str:
    """The first value of a request header ("" when absent)."""
    for key, value in scope.get("headers", []):
        if key == name:
            return str(value.decode("latin-1"))
    return ""


def cookie(scope: Mapping[str, Any], name: str = COOKIE) -> str:
    """The value of cookie `name` ("" when absent)."""
    for key_, raw in scope.get("headers", []):
        if key_ != b"cookie":
            continue
        for part in bytes(raw).decode("latin-1").split(";"):
            key, _, value = part.strip().partition("=")
            if key == name:
                return value.strip()
    return ""


def same_origin(scope: Mapping[str, Any]) -> bool:
    """False when the browser says the request comes from another origin (Origin, Sec-Fetch-Site); True when
    it says nothing (not a browser, or an old one: the CSRF token still guards)."""
    site = header(scope, b"sec-fetch-site")
    if site and site not in ("same-origin", "none"):
        return False
    origin = header(scope, b"origin")
    if not origin:
        return True
    parsed = urllib.parse.urlsplit(origin)
    return parsed.netloc == header(scope, b"host") and parsed.scheme in ("http", "https")


def safe_next(value: str, mount: str) -> str:
    """Where to go after logging in: a path under the mount only (never another site: no open redirect)."""
    bad = ("//", "\\", "/./", "/../", "%2e", "%2E", "%2f", "%2F", "%5c", "%5C")
    if value.startswith(mount + "/") and not any(b in value for b in bad) and not value.endswith(("/.", "/..")):
        return value
    return mount + "/"


def set_cookie(value: str, mount: str, max_age: int, tls: bool) -> bytes:
    """The Set-Cookie header of a session (max_age 0 clears it)."""
    parts = [f"{COOKIE}={value}", f"Path={mount}", f"Max-Age={max_age}", "HttpOnly", "SameSite=Strict"]
    if tls:
        parts.append("Secure")
    return "; ".join(parts).encode()


async def read_form(receive: Any, limit: int = MAX_LOGIN_BODY) -> dict[str, str] | None:
    """An urlencoded body (None when over `limit` bytes)."""
    body = b""
    while True:
        message = await receive()
        body += message.get("body", b"")
        if len(body) > limit:
            return None
        if not message.get("more_body"):
            break
    fields = urllib.parse.parse_qs(body.decode("latin-1"), max_num_fields=20)
    return {k: v[0] for k, v in fields.items()}


def login_page(mount: str, next_path: str, message: str = "", error: bool = False) -> bytes:
    """The login form (autoescaped by hand: two values)."""
    note = f'<p id="message" class="{"error" if error else "note"}">{escape(message)}</p>' if message else ""
    return f"""<!doctype html><html lang="en"><head><meta charset="utf-8"><title>Log in: Stratum</title>
<style>body{{font-family:sans-serif;max-width:40em;margin:2em auto}}.error{{color:#b00020}}
label{{display:block;margin-top:1em}}input[type=password]{{width:100%}}</style></head><body>
<h1>Log in to Stratum {escape(mount)}</h1>{note}
<form method="post" action="{escape(mount)}/login">
<label for="token">Your access token (the host lists it in the daemon's tokens file)</label>
<input type="password" id="token" name="token" autocomplete="current-password" required autofocus>
<input type="hidden" name="next" value="{escape(next_path)}">
<p><button type="submit" id="login">Log in</button></p></form></body></html>""".encode()


async def respond(send: Send, status: int, body: bytes = b"", headers: list[tuple[bytes, bytes]] | None = None,
                  ) -> None:
    """A whole response."""
    head = [*(headers if headers is not None else PAGE_HEADERS), (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": head})
    await send({"type": "http.response.body", "body": body})


async def redirect(send: Send, location: str, extra: tuple[tuple[bytes, bytes], ...] = ()) -> None:
    """303 See Other to `location`."""
    await respond(send, 303, b"", [(b"location", location.encode()), (b"cache-control", b"no-store"), *extra])


def login_url(mount: str, next_path: str, expired: bool = False) -> str:
    """The login page that comes back to `next_path`."""
    query = {"next": next_path, **({"expired": "1"} if expired else {})}
    return f"{mount}/login?{urllib.parse.urlencode(query)}"
