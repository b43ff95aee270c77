"""Who may use the HTTP listener: bearer tokens from a host file, Cedar deciding per mount.

Every path needs a token except `/healthz` and `/hooks/...` (webhooks authenticate by signature) and, when the
host opens it, `/metrics`. A Host header, a client address or a TLS session is never authentication. A request is
checked in this order, before the mounted app sees a byte of its body:

    1. public path ...................................... passed through, no principal
    2. `Authorization: Bearer <token>` present ........... else 401 (WWW-Authenticate: Bearer)
    3. sha256(token) names a client of the tokens file ... else 401 (invalid_token)
    2b. on a browser mount (`/forms`) without the header: the session cookie of `<mount>/login`
        (daemon/http/sessions.py) .......................... else a page asks to log in (303), a script 401
    4. Cedar: principal Stratum::Http::Client::"<name>" (member of its Stratum::Http::Role::"<role>"s),
       action Stratum::Http::Action::"request", resource Stratum::Http::Mount::"<mount>", context
       {method, path, tls} ................................ else 403 naming why

Allowed requests reach the app with `scope["state"]["principal"]` (the client's name), `["roles"]` and
`["authorize"]`, a function `(action) -> bool` that asks the same policies about a finer action on the same
mount (the MCP server asks "read" or "write" per tool), and for a browser session `["csrf"]`, the token its
forms must post back. Refusals go to `on_denied` for a rate-limited event.

The tokens file holds one client a line, `name:role[,role]:<sha256 hex of the token>` (`#` starts a comment);
tokens are never stored, so the file is worth nothing to whoever reads it, but it must still be 0600: who can
write it can let themselves in. Tokens should be long and random (`openssl rand -hex 32`).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import re
import stat
import time
import urllib.parse
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from daemon.errors import SettingsError
from daemon.http import sessions as web

if TYPE_CHECKING:
    import cedarpy

DEFAULT_POLICY = """\
// Host policy of the HTTP listener (replace it with [http] policy_file).
@id("admin") permit(principal in Stratum::Http::Role::"admin", action, resource);
@id("reader") permit(principal in Stratum::Http::Role::"reader",
                     action in [Stratum::Http::Action::"request", Stratum::Http::Action::"read"], resource);
@id("metrics") permit(principal in Stratum::Http::Role::"metrics", action == Stratum::Http::Action::"request",
                      resource == Stratum::Http::Mount::"/metrics");
"""
PUBLIC_PREFIXES = ("/hooks/",)
# Mounts whose pages people open in a browser: only they take a login session besides the bearer header.
BROWSER_MOUNTS = ("/forms",)
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.@-]{0,127}")
_DIGEST = re.compile(r"[0-9a-f]{64}")
_MAX_FILE = 1024 * 1024

Send = Callable[[dict[str, Any]], Any]
OnDenied = Callable[[int, str, str, str], None]     # status, principal ("" when unknown), mount, reason


@dataclass(frozen=True, slots=True)
class Client:
    """One line of the tokens file."""

    name: str
    roles: tuple[str, ...]


def token_digest(token: str) -> str:
    """What the tokens file stores for `token`."""
    return hashlib.sha256(token.encode()).hexdigest()


def read_private(path: Path, what: str) -> bytes:
    """A regular file only the daemon's user may read or write (mode 0600 or stricter)."""
    try:
        with path.open("rb") as fh:
            mode = os.fstat(fh.fileno()).st_mode   # of the file read, not of whatever the path names later
            data = fh.read(_MAX_FILE + 1) if stat.S_ISREG(mode) else b""
    except OSError as err:
        raise SettingsError(f"cannot read the {what}: {err.strerror}", where=str(path),
                            hint="create it (chmod 600) or fix the [http] setting naming it") from err
    if not stat.S_ISREG(mode):
        raise SettingsError(f"the {what} is not a regular file", where=str(path), hint="point the setting at a file")
    if mode & 0o077:
        raise SettingsError(f"the {what} is open to group or others (mode {stat.S_IMODE(mode):04o})",
                            where=str(path), hint=f"chmod 600 {path}")
    if len(data) > _MAX_FILE:
        raise SettingsError(f"the {what} is over {_MAX_FILE} bytes", where=str(path))
    return data


def load_tokens(path: Path) -> dict[str, Client]:
    """sha256 hex digest -> client, from a tokens file; every error names file:line."""
    try:
        text = read_private(path, "tokens file").decode()
    except UnicodeDecodeError as err:
        raise SettingsError("the tokens file is not UTF-8", where=str(path)) from err
    out: dict[str, Client] = {}
    names: set[str] = set()
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        where = f"{path}:{number}"
        parts = line.split(":")
        if len(parts) != 3:
            raise SettingsError("a tokens line is `name:role[,role]:<sha256 hex of the token>`", where=where,
                                hint="e.g. alice:admin:$(printf %s \"$TOKEN\" | sha256sum | cut -d' ' -f1)")
        name, roles, digest = (p.strip() for p in parts)
        role_list = tuple(r.strip() for r in roles.split(",") if r.strip())
        if not _NAME.fullmatch(name) or name in names:
            raise SettingsError(f"client name {name!r} is not a unique name (letters, digits, '_.@-')", where=where)
        if not role_list or not all(_NAME.fullmatch(r) for r in role_list):
            raise SettingsError(f"roles {roles!r} must be names separated by commas", where=where)
        digest = digest.lower().removeprefix("sha256=")
        if not _DIGEST.fullmatch(digest):
            raise SettingsError("the token must be stored as its sha256 hex digest (64 hex digits), never in clear",
                                where=where, hint="printf %s \"$TOKEN\" | sha256sum")
        if digest in out:
            raise SettingsError(f"client {name!r} has the same token as {out[digest].name!r}", where=where,
                                hint="give every client its own token")
        names.add(name)
        out[digest] = Client(name, role_list)
    return out


class TokenStore:
    """The clients of the tokens file. `read` then `replace` on SIGHUP: a revoked token stops working without a
    restart, and a broken file keeps the clients in force (the reload fails as a whole)."""

    def __init__(self, path: Path | None) -> None:
        self.path = path
        self._by_digest: dict[str, Client] = self.read()

    def read(self) -> dict[str, Client]:
        """The file's clients now (raises SettingsError); nothing changes until `replace`."""
        return load_tokens(self.path) if self.path is not None else {}

    def __bool__(self) -> bool:
        return bool(self._by_digest)

    def replace(self, clients: Mapping[str, Client]) -> None:
        """Put `clients` in force (one reference swap: a request in flight sees the old set or the new)."""
        self._by_digest = dict(clients)

    def by_digest(self, digest: str) -> Client | None:
        """The client whose token has this digest (a browser session's; revoked: None)."""
        return self._by_digest.get(digest)

    def find(self, token: str) -> Client | None:
        """The client `token` belongs to. Every stored digest is compared in constant time (a host has a
        handful of clients), so the time taken says nothing about how close a guess came."""
        digest = token_digest(token)
        found = None
        for known, client in self._by_digest.items():
            if hmac.compare_digest(known, digest):
                found = client
        return found


class HttpPolicy:
    """The host's Cedar policies for the listener, parsed once."""

    def __init__(self, text: str = DEFAULT_POLICY, where: str = "built-in policy") -> None:
        self.where = where
        self._text = text
        self._parsed: cedarpy.PolicySet | None = None
        # A host's policy file is parsed now, so a broken one stops the start. The built-in one waits for the
        # first request it decides: cedarpy costs an idle daemon ~10 MB resident (issue 10) when no
        # authenticated request ever comes.
        if text != DEFAULT_POLICY:
            self._policies()

    def _policies(self) -> cedarpy.PolicySet:
        if self._parsed is None:
            import cedarpy
            try:
                self._parsed = cedarpy.PolicySet.from_str(self._text)
            except ValueError as err:
                raise SettingsError(f"the HTTP policy does not parse: {err}", where=self.where,
                                    hint="fix the Cedar syntax; every policy ends with `;`") from err
        return self._parsed

    @classmethod
    def from_file(cls, path: Path | None) -> HttpPolicy:
        """The policy file, or the built-in roles when there is none."""
        if path is None:
            return cls()
        try:
            return cls(path.read_text(), str(path))
        except (OSError, UnicodeDecodeError) as err:
            raise SettingsError(f"cannot read the HTTP policy file: {err}", where=str(path)) from err

    def decide(self, client: Client, action: str, mount: str, context: Mapping[str, Any]) -> tuple[bool, str]:
        """(allowed, why) for `client` doing `action` on `mount`; an evaluation error denies."""
        entities = [{"uid": {"type": "Stratum::Http::Client", "id": client.name}, "attrs": {},
                     "parents": [{"type": "Stratum::Http::Role", "id": r} for r in client.roles]},
                    *({"uid": {"type": "Stratum::Http::Role", "id": r}, "attrs": {}, "parents": []}
                      for r in client.roles)]
        request = {"principal": f'Stratum::Http::Client::{json.dumps(client.name)}',
                   "action": f'Stratum::Http::Action::{json.dumps(action)}',
                   "resource": f'Stratum::Http::Mount::{json.dumps(mount)}', "context": dict(context)}
        import cedarpy

        policies = self._policies()
        try:
            result = cedarpy.is_authorized(request, policies, cedarpy.Entities.from_json_str(json.dumps(entities)))
        except ValueError as err:
            return False, f"Cedar could not evaluate the request: {err}"
        if result.diagnostics.errors:
            return False, f"a policy of {self.where} failed to evaluate: {'; '.join(result.diagnostics.errors)}"
        if result.allowed:
            return True, f"allowed by {self.where} ({', '.join(sorted(result.diagnostics.reasons))})"
        if result.diagnostics.reasons:
            return False, f"denied by a forbid policy of {self.where}"
        return False, f"no policy of {self.where} permits {client.name} to {action} {mount}"


def mount_of(path: str, mounts: Sequence[str]) -> str:
    """The mount a path falls under ("/" when none): what Cedar sees as the resource."""
    for prefix in mounts:
        if path == prefix or path.startswith(prefix.rstrip("/") + "/"):
            return prefix
    return "/"


class AuthMiddleware:
    """The ASGI gate in front of every mount (the numbered checks of the module docstring)."""

    def __init__(self, app: Any, tokens: TokenStore, policy: HttpPolicy, mounts: Sequence[str],
                 metrics_public: bool = False, on_denied: OnDenied | None = None,
                 sessions: web.SessionStore | None = None, browser_mounts: Sequence[str] = BROWSER_MOUNTS) -> None:
        self.app = app
        self.sessions = sessions
        self.browser_mounts = tuple(m for m in browser_mounts if m in mounts) if sessions is not None else ()
        self.tokens = tokens
        self.policy = policy
        self.mounts = tuple(sorted(mounts, key=len, reverse=True))
        self.metrics_public = metrics_public
        self.on_denied = on_denied

    def public(self, path: str) -> bool:
        """Paths served without a token."""
        return path == "/healthz" or path.startswith(PUBLIC_PREFIXES) or (self.metrics_public and path == "/metrics")

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Send) -> None:
        if scope["type"] not in ("http", "websocket") or self.public(scope.get("path", "")):
            await self.app(scope, receive, send)
            return
        path = scope.get("path", "")
        mount = mount_of(path, self.mounts)
        browser = mount in self.browser_mounts and scope["type"] == "http"
        if browser and path in (f"{mount}/login", f"{mount}/logout"):
            await self._session_page(scope, receive, send, mount, path)
            return
        client = self._client(scope)
        csrf = ""
        if client is None and browser:
            found = await self._session(scope, send, mount)
            if found is None:
                return                     # answered (a redirect to the login page, or a refusal)
            client, csrf = found
        if client is None:
            reason = "a bearer token is required (Authorization: Bearer ...)"
            if browser:
                reason += f", or a session from {mount}/login"
            if not self.tokens:
                reason += "; this daemon has no clients: the host sets [http] tokens_file in stratumd.toml"
            await self._refuse(scope, send, 401, "", mount, reason)
            return
        if isinstance(client, str):
            await self._refuse(scope, send, 401, "", mount, client)
            return
        context = {"method": scope.get("method", "GET"), "path": path, "tls": scope.get("scheme") in ("https", "wss")}
        allowed, why = self.policy.decide(client, "request", mount, context)
        if not allowed:
            await self._refuse(scope, send, 403, client.name, mount, why)
            return
        policy, principal = self.policy, client

        def authorize(action: str) -> bool:
            return policy.decide(principal, action, mount, context)[0]

        state = scope.setdefault("state", {})
        state.update(principal=client.name, roles=client.roles, authorize=authorize)
        if csrf:
            state["csrf"] = csrf
        await self.app(scope, receive, send)

    async def _session(self, scope: dict[str, Any], send: Send, mount: str) -> tuple[Client | None, str] | None:
        """(client, csrf token) of the request's session cookie; (None, "") without a cookie for a script (the
        usual 401 follows); None once it has answered (a browser sent to log in, a cross-origin change)."""
        assert self.sessions is not None
        value = web.cookie(scope)
        session = self.sessions.find(value, mount) if value else None
        client = self.tokens.by_digest(session.token_digest) if session is not None else None
        if session is not None and client is None:
            self.sessions.close(value)         # its token was revoked: the session goes with it
        if client is None or session is None:
            html = "text/html" in web.header(scope, b"accept")
            if not value and not html:
                return None, ""
            target = scope.get("path", "") + (f"?{scope['query_string'].decode('latin-1')}"
                                               if scope.get("query_string") else "")
            if scope.get("method") not in web.SAFE_METHODS:
                target = mount + "/"
            await web.redirect(send, web.login_url(mount, target, expired=bool(value)),
                               ((b"set-cookie", web.set_cookie("", mount, 0, _tls(scope))),) if value else ())
            return None
        if scope.get("method") not in web.SAFE_METHODS and not web.same_origin(scope):
            await self._refuse(scope, send, 403, client.name, mount,
                               "a change from another origin is refused (the session cookie is not enough)")
            return None
        return client, session.csrf

    async def _session_page(self, scope: dict[str, Any], receive: Any, send: Send, mount: str, path: str) -> None:
        """`<mount>/login` (GET: the page; POST: token -> session) and `<mount>/logout` (POST)."""
        assert self.sessions is not None
        query = dict(urllib.parse.parse_qsl(scope.get("query_string", b"").decode("latin-1")))
        method = scope.get("method", "GET")
        if method in ("GET", "HEAD") and path.endswith("/login"):
            message = "Your session has ended: log in again." if query.get("expired") else ""
            await web.respond(send, 200, web.login_page(mount, web.safe_next(query.get("next", ""), mount), message))
            return
        if method != "POST":
            await web.respond(send, 405, b"use POST", [(b"allow", b"POST"), (b"content-type", b"text/plain")])
            return
        if not web.same_origin(scope):
            await self._refuse(scope, send, 403, "", mount, "a login or logout from another origin is refused")
            return
        fields = await web.read_form(receive)
        if fields is None:
            await web.respond(send, 413, b"the request is too large", [(b"content-type", b"text/plain")])
            return
        if path.endswith("/logout"):
            value = web.cookie(scope)
            session = self.sessions.find(value, mount) if value else None
            if session is not None and not hmac.compare_digest(fields.get("csrf", ""), session.csrf):
                await self._refuse(scope, send, 403, "", mount, "the logout form lacks its CSRF token: reload the page")
                return
            self.sessions.close(value)
            await web.redirect(send, f"{mount}/login", ((b"set-cookie", web.set_cookie("", mount, 0, _tls(scope))),))
            return
        next_path = web.safe_next(fields.get("next", ""), mount)
        client = self.tokens.find(fields.get("token", "").strip())
        if client is None:
            if self.on_denied is not None:
                self.on_denied(401, "", mount, "a login with a token that is not valid")
            reason = "That token is not valid: paste a token the host listed in the daemon's tokens file " \
                     "([http] tokens_file), or ask whoever runs the daemon for one."
            await web.respond(send, 401, web.login_page(mount, next_path, reason, error=True))
            return
        context = {"method": "GET", "path": next_path, "tls": _tls(scope)}
        allowed, why = self.policy.decide(client, "request", mount, context)
        if not allowed:
            if self.on_denied is not None:
                self.on_denied(403, client.name, mount, why)
            await web.respond(send, 403, web.login_page(mount, next_path, f"{client.name} may not use {mount}: {why}",
                                                        error=True))
            return
        value, _ = self.sessions.open(token_digest(fields.get("token", "").strip()), mount)
        await web.redirect(send, next_path,
                           ((b"set-cookie", web.set_cookie(value, mount, int(self.sessions.ttl), _tls(scope))),))

    def _client(self, scope: Mapping[str, Any]) -> Client | str | None:
        """The client the bearer token names; a reason string when the header is wrong; None when absent."""
        values = [v for k, v in scope.get("headers", []) if k == b"authorization"]
        if not values:
            return None
        scheme, _, token = values[0].decode("latin-1").partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer" or not token or len(values) > 1:
            return "the Authorization header must be one `Bearer <token>`"
        return self.tokens.find(token) or "the bearer token is not valid"

    async def _refuse(self, scope: Mapping[str, Any], send: Send, status: int, principal: str, mount: str,
                      reason: str) -> None:
        if self.on_denied is not None:
            self.on_denied(status, principal, mount, reason)
        if scope["type"] == "websocket":
            await send({"type": "websocket.close", "code": 1008})
            return
        body = json.dumps({"error": reason, "status": status}).encode()
        headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
        if status == 401:
            error = ', error="invalid_token"' if "not valid" in reason else ""
            headers.append((b"www-authenticate", f'Bearer realm="stratum"{error}'.encode()))
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": body})


def _tls(scope: Mapping[str, Any]) -> bool:
    return scope.get("scheme") in ("https", "wss")


class DenialReporter:
    """Refusals as events, at most one per (status, mount) per interval with a count of the rest: anyone who can
    reach the port can send them at will, and must grow neither the index nor the log without bound."""

    def __init__(self, emit: Callable[[str, str], None], interval: float = 10.0,
                 clock: Callable[[], float] | None = None) -> None:
        self._emit = emit
        self._interval = interval
        self._clock = clock or time.monotonic
        self._last: dict[tuple[int, str], tuple[float, int]] = {}

    def __call__(self, status: int, principal: str, mount: str, reason: str) -> None:
        """Report one refusal (an `OnDenied`)."""
        now = self._clock()
        key = (status, mount)
        last, count = self._last.get(key, (0.0, 0))
        if last and now - last < self._interval:
            self._last[key] = (last, count + 1)
            return
        self._last[key] = (now, 0)
        if len(self._last) > 1024:
            self._last = {key: (now, 0)}      # many mounts named by strangers: forget rather than grow
        more = f"; {count} more refused since the last report" if count else ""
        who = principal or "anonymous"
        self._emit(f"HTTP {status} for {who} on {mount}: {reason}{more}", who)
