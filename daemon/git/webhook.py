"""Webhook receivers: `POST /hooks/<name>` from GitHub, GitLab or our own HMAC sender triggers a fetch.

Receivers are host settings (`[webhooks.<name>]` tables of stratumd.toml), never repo content; each secret lives
in a file only the daemon's user may read. A request is checked in this order, so nothing a forger sends is
parsed or remembered before its signature holds:

    1. the receiver exists ............................................. 404
    2. Content-Length, then the streamed body, within max_body .......... 413 (never buffers past max_body + 1)
    3. required headers present and well formed ......................... 400
    4. signature or token, compared in constant time .................... 401
    5. generic-hmac only: timestamp within +-tolerance .................. 401
    6. payload (github/gitlab push: a JSON object with a `ref`) ......... 400
    7. delivery id not seen before, then remembered ..................... 409
    8. ping: 200; another event or branch: 202 ignored; push: 202 and `on_accept`

Every refusal of a configured receiver calls `on_reject` (for the audit event); a 404 does not, since the name
is the caller's invention. Replaying a GitHub/GitLab delivery after the delivery log (daemon/git/deliveries.py) forgot
it (24 h) can at worst cause one extra fetch, which is idempotent.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import re
import stat
import time
from collections.abc import Callable, Mapping
from contextlib import aclosing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

from starlette.datastructures import Headers
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from daemon.errors import SettingsError
from daemon.git.deliveries import DeliveryLog

MIB = 1024 * 1024
TYPES = ("github", "gitlab", "generic-hmac")
_KEYS = ("type", "secret_file", "max_body", "branch", "tolerance")
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
_DELIVERY = re.compile(r"[\x21-\x7e]{1,200}")      # printable ASCII, no spaces: safe in logs and the file
_MAX_SECRET = 64 * 1024


@dataclass(frozen=True, slots=True)
class Receiver:
    """One configured webhook receiver; `secret` is left out of its repr."""

    name: str
    type: str                                 # github | gitlab | generic-hmac
    secret: bytes = field(repr=False)
    max_body: int = MIB
    branch: str | None = None                 # only pushes to refs/heads/<branch> trigger a fetch
    tolerance: float = 300.0                  # generic-hmac: seconds the timestamp may differ from now


def receivers_from_settings(section: Mapping[str, Any], where: str = "") -> dict[str, Receiver]:
    """Receivers from the `[webhooks.<name>]` tables; `where` is the settings file named in errors."""
    return {name: _receiver(name, table, where) for name, table in section.items()}


def _receiver(name: Any, table: Any, where: str) -> Receiver:
    def bad(what: str, hint: str) -> SettingsError:
        return SettingsError(f"webhook receiver {name!r}: {what}", where=where, hint=hint)

    if not isinstance(name, str) or not _NAME.fullmatch(name):
        raise bad("the name must be letters, digits, '-', '_' or '.'", "rename the [webhooks.<name>] table")
    if not isinstance(table, Mapping):
        raise bad("must be a table", f"write it as a [webhooks.{name}] table")
    if "secret" in table:
        raise bad("an inline secret is not allowed",
                  'put the secret in a file readable only by the daemon (chmod 600) and set secret_file = "<path>"')
    unknown = sorted(str(k) for k in table if k not in _KEYS)
    if unknown:
        raise bad(f"unknown key(s): {', '.join(unknown)}", f"known keys: {', '.join(_KEYS)}")
    kind = table.get("type")
    if kind not in TYPES:
        raise bad(f"unknown type {kind!r}", f"type is one of: {', '.join(TYPES)}")
    if "tolerance" in table and kind != "generic-hmac":
        raise bad("tolerance applies only to generic-hmac receivers", "remove tolerance")
    secret_file = table.get("secret_file")
    if not isinstance(secret_file, str) or not secret_file:
        raise bad("secret_file is missing", 'set secret_file = "<path of a file holding the secret>"')
    max_body = table.get("max_body", MIB)
    if isinstance(max_body, bool) or not isinstance(max_body, int) or max_body < 1:
        raise bad(f"max_body must be a positive number of bytes, not {max_body!r}", f"e.g. max_body = {MIB}")
    branch = table.get("branch")
    if branch is not None and (not isinstance(branch, str) or not branch.removeprefix("refs/heads/")):
        raise bad(f"branch must be a branch name, not {branch!r}", 'e.g. branch = "main"')
    tolerance = table.get("tolerance", 300.0)
    if isinstance(tolerance, bool) or not isinstance(tolerance, int | float) or tolerance <= 0:
        raise bad(f"tolerance must be a positive number of seconds, not {tolerance!r}", "e.g. tolerance = 300")
    return Receiver(name=name, type=kind, secret=read_secret(Path(secret_file).expanduser()), max_body=max_body,
                    branch=branch.removeprefix("refs/heads/") if branch else None, tolerance=float(tolerance))


def read_secret(path: Path) -> bytes:
    """The secret in `path` without its trailing newline; the file must be a regular file, mode 0600 or stricter."""
    try:
        with path.open("rb") as fh:
            # fstat the open file, so the mode checked is that of the bytes read
            mode = os.fstat(fh.fileno()).st_mode
            data = fh.read(_MAX_SECRET + 1) if stat.S_ISREG(mode) else b""
    except OSError as err:
        raise SettingsError(f"cannot read the webhook secret file: {err.strerror}", where=str(path),
                            hint="create it with the secret (chmod 600) or fix secret_file") from err
    if not stat.S_ISREG(mode):
        raise SettingsError("the webhook secret file is not a regular file", where=str(path),
                            hint="point secret_file at a file holding the secret")
    if mode & 0o077:
        raise SettingsError(f"the webhook secret file is open to group or others (mode {stat.S_IMODE(mode):04o})",
                            where=str(path), hint=f"chmod 600 {path}")
    secret = data.rstrip(b"\r\n")
    if not secret or len(secret) > _MAX_SECRET:
        raise SettingsError("the webhook secret file is empty" if not secret else "the webhook secret is too long",
                            where=str(path), hint="write a random secret of 32 to 128 characters into it")
    return secret


class _Refused(Exception):
    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason


@dataclass(frozen=True, slots=True)
class _Outcome:
    event: str
    ref: str | None = None
    ignored: str = ""                         # why a valid delivery triggers nothing
    ping: bool = False


class WebhookEndpoint:
    """`POST /hooks/{name}`: checks a delivery against the receiver named `name`, then calls `on_accept(name,
    {type, event, delivery, ref})` for a push that should trigger a fetch, or `on_reject(name, reason, client)`.

    `receivers` is called per request, so reloaded host settings apply without rebuilding the app. The
    callbacks run on the server's event loop: they must be quick and must not raise."""

    def __init__(self, receivers: Callable[[], Mapping[str, Receiver]],
                 on_accept: Callable[[str, dict[str, Any]], None], on_reject: Callable[[str, str, str], None],
                 seen: DeliveryLog | None = None, clock: Callable[[], float] = time.time) -> None:
        self._receivers = receivers
        self._on_accept = on_accept
        self._on_reject = on_reject
        self._seen = seen if seen is not None else DeliveryLog()
        self._clock = clock

    def routes(self) -> list[Route]:
        """The route to add to the daemon's app."""
        return [Route("/hooks/{name}", self.handle, methods=["POST"])]

    async def handle(self, request: Request) -> JSONResponse:
        """Answer one delivery (the steps in the module docstring)."""
        name = request.path_params["name"]
        receiver = self._receivers().get(name)
        if receiver is None:
            return JSONResponse({"error": "no such webhook receiver"}, status_code=404)
        try:
            body = await _read_capped(request, receiver.max_body)
            delivery = self._verify(receiver, request.headers, body)
            outcome = _classify(receiver, request.headers, body)
            # Delivery ids are not covered by any signature: a captured delivery re-sent under a fresh id is
            # caught by the digest of what is signed (github: the body; generic-hmac: timestamp and body;
            # gitlab signs nothing, so its body).
            signed = request.headers.get("x-stratum-timestamp", "") if receiver.type == "generic-hmac" else ""
            digest = "sha256:" + hashlib.sha256(signed.encode() + b"\0" + body).hexdigest()
            try:
                fresh = self._seen.record(name, delivery) and self._seen.record(name, digest)
            except OSError as err:
                raise _Refused(503, "cannot record the delivery id; try again later") from err
            if not fresh:
                raise _Refused(409, f"replayed delivery {delivery}")
        except _Refused as refused:
            self._on_reject(name, refused.reason, request.client.host if request.client else "")
            return JSONResponse({"error": refused.reason}, status_code=refused.status)
        if outcome.ping:
            return JSONResponse({"accepted": False, "ping": True, "delivery": delivery}, status_code=200)
        if outcome.ignored:
            return JSONResponse({"accepted": False, "ignored": outcome.ignored, "delivery": delivery},
                                status_code=202)
        self._on_accept(name, {"type": receiver.type, "event": outcome.event, "delivery": delivery,
                               "ref": outcome.ref})
        return JSONResponse({"accepted": True, "delivery": delivery}, status_code=202)

    def _verify(self, receiver: Receiver, headers: Headers, body: bytes) -> str:
        """The delivery id, once the headers are complete and the signature or token holds."""
        if receiver.type == "github":
            delivery = _delivery(headers, "x-github-delivery")
            _required(headers, "x-github-event")
            expected = b"sha256=" + _hex_hmac(receiver.secret, body)
            _check(headers, "x-hub-signature-256", lambda given: hmac.compare_digest(expected, given.lower()),
                   "bad signature")
        elif receiver.type == "gitlab":
            key = "x-gitlab-event-uuid" if headers.get("x-gitlab-event-uuid") else "idempotency-key"
            delivery = _delivery(headers, key)
            _required(headers, "x-gitlab-event")
            _check(headers, "x-gitlab-token", lambda given: hmac.compare_digest(receiver.secret, given), "bad token")
        else:
            delivery = _delivery(headers, "x-stratum-delivery")
            stamp = _required(headers, "x-stratum-timestamp")
            if not stamp.isascii() or not stamp.isdigit() or len(stamp) > 12:
                raise _Refused(400, "X-Stratum-Timestamp must be unix seconds")
            expected = b"sha256=" + _hex_hmac(receiver.secret, f"{stamp}.".encode() + body)
            _check(headers, "x-stratum-signature", lambda given: hmac.compare_digest(expected, given.lower()),
                   "bad signature")
            # the timestamp is signed, so it is checked only once the signature holds
            skew = int(stamp) - self._clock()
            if skew < -receiver.tolerance:
                raise _Refused(401, "stale timestamp")
            if skew > receiver.tolerance:
                raise _Refused(401, "timestamp in the future")
        return delivery


async def _read_capped(request: Request, limit: int) -> bytes:
    """The body, refused by its Content-Length before reading, or as soon as the stream passes `limit`."""
    length = request.headers.get("content-length")
    if length is not None and (not length.isascii() or not length.isdigit()):
        raise _Refused(400, "bad Content-Length")
    if length is not None and int(length) > limit:
        raise _Refused(413, f"body over {limit} bytes")
    body = bytearray()
    try:
        async with aclosing(request.stream()) as stream:
            async for chunk in stream:
                body += chunk[: limit + 1 - len(body)]
                if len(body) > limit:
                    raise _Refused(413, f"body over {limit} bytes")
    except ClientDisconnect as err:
        raise _Refused(400, "client disconnected before the body ended") from err
    return bytes(body)


def _classify(receiver: Receiver, headers: Headers, body: bytes) -> _Outcome:
    """What a verified delivery asks for. github/gitlab pushes must carry a JSON object with a `ref` (400
    otherwise: the secret's holder sent something broken); a generic-hmac body is opaque unless it is a JSON
    object with a `ref`, and without one it triggers a fetch whatever the branch filter."""
    if receiver.type == "github":
        event = _required(headers, "x-github-event")
        if event == "ping":
            return _Outcome(event, ping=True)
        pushes: tuple[str, ...] = ("push",)
    elif receiver.type == "gitlab":
        event, pushes = _required(headers, "x-gitlab-event"), ("Push Hook", "Tag Push Hook")
    else:
        event = headers.get("x-stratum-event", "").strip() or "push"
        if event == "ping":
            return _Outcome(event, ping=True)
        return _filtered(receiver, event, _opaque_ref(body))
    if event not in pushes:
        return _Outcome(event, ignored=f"event {event}")
    ref = _payload(body, headers).get("ref")
    if not isinstance(ref, str) or not ref:
        raise _Refused(400, "push payload has no ref")
    return _filtered(receiver, event, ref)


def _filtered(receiver: Receiver, event: str, ref: str | None) -> _Outcome:
    if receiver.branch and ref is not None and ref != f"refs/heads/{receiver.branch}":
        return _Outcome(event, ref, ignored=f"ref {ref} is not refs/heads/{receiver.branch}")
    return _Outcome(event, ref)


def _payload(body: bytes, headers: Headers) -> dict[str, Any]:
    """The JSON object in `body` (or in its `payload` form field: GitHub's form content type)."""
    if headers.get("content-type", "").startswith("application/x-www-form-urlencoded"):
        body = parse_qs(body.decode("utf-8", "replace")).get("payload", [""])[0].encode()
    try:
        payload = json.loads(body)
    except (ValueError, RecursionError) as err:
        raise _Refused(400, "payload is not JSON") from err
    if not isinstance(payload, dict):
        raise _Refused(400, "payload is not a JSON object")
    return payload


def _opaque_ref(body: bytes) -> str | None:
    """The `ref` of a generic-hmac body when it is a JSON object holding one; the body is otherwise opaque."""
    try:
        payload = json.loads(body)
    except (ValueError, RecursionError):
        return None
    ref = payload.get("ref") if isinstance(payload, dict) else None
    return ref if isinstance(ref, str) and ref else None


def _hex_hmac(secret: bytes, message: bytes) -> bytes:
    return hmac.new(secret, message, hashlib.sha256).hexdigest().encode()


def _required(headers: Headers, name: str) -> str:
    value = headers.get(name, "").strip()
    if not value:
        raise _Refused(400, f"missing header {name}")
    return value


def _delivery(headers: Headers, name: str) -> str:
    value = _required(headers, name)
    if not _DELIVERY.fullmatch(value):
        raise _Refused(400, f"header {name} must be 1 to 200 printable ASCII characters")
    return value


def _check(headers: Headers, name: str, holds: Callable[[bytes], bool], bad: str) -> None:
    """401 unless header `name` is present and `holds`; the header's value is never echoed."""
    given = headers.get(name, "").strip()
    if not given:
        raise _Refused(401, f"missing header {name}")
    # Starlette decodes headers as latin-1: encoding back gives the bytes that were sent
    if not holds(given.encode("latin-1", "replace")):
        raise _Refused(401, bad)
