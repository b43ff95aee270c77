"""A tiny Starlette app on uvicorn that stands in for the vault service's router (being built in parallel in
reconcilers/vault/service/): it maps /v1/<mount>/<path> to an engine's `handle` over a MemoryStore per mount,
with no tokens, policy or audit. It lets the real `hvac` client drive the engines over real HTTP on loopback."""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from daemon.http.server import HttpServer
from reconcilers.vault.pki.storage import KeyValueStore, MemoryStore

Handler = Callable[[str, str, Mapping[str, Any], KeyValueStore], tuple[int, dict[str, Any]]]


def app_for(mounts: dict[str, Handler], stores: dict[str, MemoryStore]) -> Starlette:
    """An ASGI app serving each mount with its handler and its own store."""

    async def endpoint(request: Request) -> Response:
        mount, _, path = request.path_params["rest"].partition("/")
        if mount not in mounts:
            return JSONResponse({"errors": [f"no handler for route {mount!r}"]}, status_code=404)
        raw = await request.body()
        body: dict[str, Any]
        if request.headers.get("content-type", "").startswith("application/ocsp-request"):
            body = {"_raw": raw}
        else:
            body = json.loads(raw) if raw.strip() else {}
        method = request.method
        if method == "GET" and request.query_params.get("list") == "true":
            method = "LIST"
        status, reply = mounts[mount](method, path, body, stores.setdefault(mount, MemoryStore()))
        if "_raw" in reply:
            return Response(reply["_raw"], status_code=status, media_type=reply["_content_type"])
        if status == 204:
            return Response(status_code=204)
        return JSONResponse(reply, status_code=status)

    methods = ["GET", "POST", "PUT", "DELETE", "LIST"]
    return Starlette(routes=[Route("/v1/{rest:path}", endpoint, methods=methods)])


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextmanager
def serve(mounts: dict[str, Handler], stores: dict[str, MemoryStore] | None = None,
          ) -> Iterator[tuple[str, dict[str, MemoryStore]]]:
    """Run the app on a free loopback port in a thread; yields (base URL, stores by mount). Pass `stores` to
    share one (a `sys` handler that routes sys/leases to the database mount's store)."""
    stores = {} if stores is None else stores
    # The daemon's own listener stack (httptools with the guard that carries Vault's LIST method through).
    server = HttpServer("127.0.0.1:0", app_for(mounts, stores))
    server.start()
    for _ in range(600):                       # bounded: up to 60 s on a loaded machine
        if server.server.started:
            break
        time.sleep(0.1)
    assert server.server.started, "the stand-in router did not start"
    try:
        yield f"http://127.0.0.1:{server.port}", stores
    finally:
        server.stop()
