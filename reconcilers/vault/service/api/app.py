"""The ASGI app of the vault listener: /v1/<path> -> VaultService.handle, answers in Vault's JSON.

Bodies are capped (413 past `max_body`, before reading them when Content-Length says so); a body that is not a
JSON object is a 400; any error the service raises becomes `{"errors": [...]}` with its status; anything
unexpected is a 500 with no detail (logged with the path only: bodies may hold secrets).
"""

from __future__ import annotations

import asyncio
import json
from typing import Any
from urllib.parse import parse_qsl

import anyio.to_thread
import orjson

from reconcilers.vault.service.core import VaultService, body_json
from reconcilers.vault.service.errors import BadRequest, NotFound, ServiceError, TooLarge
from reconcilers.vault.service.request import ApiRequest

MAX_BODY = 1024 * 1024
PREFIX = "/v1/"
_HEADERS = [(b"content-type", b"application/json"), (b"cache-control", b"no-store")]
# The request headers the API reads (the rest are not decoded at all).
_WANTED = frozenset((b"content-length", b"transfer-encoding", b"content-type", b"x-vault-token", b"authorization"))


def _dumps(body: dict[str, Any]) -> bytes:
    """An answer as JSON: orjson (several times faster), the standard library for what orjson refuses (lone
    surrogates, integers past 64 bits)."""
    try:
        return orjson.dumps(body, option=orjson.OPT_NON_STR_KEYS)
    except orjson.JSONEncodeError:
        return json.dumps(body).encode()


class VaultApp:
    """ASGI app; `inline` answers on the event loop (the file backend: fast, local), otherwise in a thread."""

    def __init__(self, service: VaultService, max_body: int = MAX_BODY, inline: bool | None = None) -> None:
        self.service = service
        self.max_body = max_body
        self.inline = service.storage_type == "file" if inline is None else inline
        # Requests run in the current event loop turn, and in the last turn that ran any (see `_waits`).
        self._this_turn = 0
        self._last_turn = 0
        self._loop: Any = None                  # whose turns those are (a test may run the app on several)

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        extra: list[tuple[bytes, bytes]] = []
        try:
            req = await self._request(scope, receive)
            if self.inline:
                # Under load a KV read's audit entries are written with the others of this loop turn (one
                # write() for them all): its answer waits until they are, and is refused if they cannot be.
                waits = self._waits()
                status, body = self.service.handle(req, waits)
                for written in waits or ():
                    await written
            else:
                status, body = await anyio.to_thread.run_sync(self.service.handle, req)
        except ServiceError as err:
            status, body = err.status, {"errors": err.messages}
            extra = [(k.encode("latin-1"), v.encode("latin-1")) for k, v in err.headers]
        except Exception as err:  # noqa: BLE001 a bug answers 500; the listener and the vault stay up
            import structlog  # here: the daemon configured it long before (importing it first pulls in rich)

            structlog.get_logger("stratum.vault.api").error("vault_request_failed", path=scope.get("path", "")[:200],
                                                             error=type(err).__name__)
            status, body = 500, {"errors": ["internal error"]}
        headers = _HEADERS
        if body is not None and isinstance(body.get("_raw"), bytes | bytearray):
            # An engine's raw answer (a DER CRL or certificate, an OCSP response): its bytes, its content type.
            payload = bytes(body["_raw"])
            headers = [(b"content-type", str(body.get("_content_type") or "application/octet-stream").encode()),
                       (b"cache-control", b"no-store")]
        else:
            payload = b"" if body is None or status == 204 or scope["method"] == "HEAD" else _dumps(body)
        await send({"type": "http.response.start", "status": status,
                    "headers": [*headers, *extra, (b"content-length", str(len(payload)).encode())]})
        await send({"type": "http.response.body", "body": payload})

    def _waits(self) -> list[Any] | None:
        """A list for the service to put what this request must wait for (its audit entries joining the
        turn's batch) when other requests run in this loop turn or ran in the last busy one; None otherwise:
        a lone request writes its own entries at once (a batch of one would only add a wait and two loop
        turns, ~9 us of CPU here)."""
        loop = asyncio.get_running_loop()
        if loop is not self._loop:
            self._loop, self._this_turn, self._last_turn = loop, 0, 0
        if not self._this_turn:
            loop.call_soon(self._turn_ended)
        self._this_turn += 1
        return [] if self._this_turn > 1 or self._last_turn > 1 else None

    def _turn_ended(self) -> None:
        self._last_turn, self._this_turn = self._this_turn, 0

    async def _request(self, scope: dict[str, Any], receive: Any) -> ApiRequest:
        path = scope["path"]
        if not path.startswith(PREFIX):
            raise NotFound("the vault API is under /v1/")
        # One pass over the headers, decoding only the few the API reads (every request comes through here:
        # a dict of all of them, decoded, cost as much as the rest of this method).
        token = auth = ctype = ""
        length, chunked = b"0", False
        for k, v in scope["headers"]:
            if k not in _WANTED:
                k = k.lower()                    # ASGI servers send names lowercased (the first test)
                if k not in _WANTED:
                    continue
            if k == b"x-vault-token":
                token = v.decode("latin-1")
            elif k == b"content-length":
                length = v
            elif k == b"authorization":
                auth = v.decode("latin-1")
            elif k == b"content-type":
                ctype = v.decode("latin-1")
            else:
                chunked = True                   # transfer-encoding
        length = length.strip()
        if not length.isdigit():                 # bytes: ASCII digits only
            raise BadRequest("invalid Content-Length")
        if int(length) > self.max_body:
            raise TooLarge(f"the request body is over {self.max_body} bytes")
        raw = bytearray()
        # No body announced (a GET, mostly): nothing to wait for. A chunked body has no length: read it.
        more = int(length) != 0 or chunked
        while more:
            message = await receive()
            if message["type"] == "http.disconnect":
                raise BadRequest("the client went away")
            raw += message.get("body", b"")
            if len(raw) > self.max_body:
                raise TooLarge(f"the request body is over {self.max_body} bytes")
            more = message.get("more_body", False)
        if not token and auth.lower().startswith("bearer "):
            token = auth[7:].strip()
        method = scope["method"].upper()
        rel = path[len(PREFIX):].rstrip("/") if method != "LIST" else path[len(PREFIX):]
        qs = scope.get("query_string", b"")
        query = dict(parse_qsl(qs.decode("latin-1"))) if qs else {}
        client = scope.get("client") or ("", 0)
        if ctype.startswith("application/ocsp-request"):
            body: dict[str, Any] = {"_raw": bytes(raw)}      # an OCSP request is DER, not JSON (pki's ocsp)
        else:
            body = body_json(bytes(raw)) if method not in ("GET", "HEAD") and raw else {}
        return ApiRequest(method, rel.rstrip("/") if method == "LIST" else rel, body, query, token, client[0])
