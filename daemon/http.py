"""The daemon's HTTP listener: /metrics, /healthz, and the interfaces reconcilers mount (MCP, vault API)."""

from __future__ import annotations

import socket
import threading
from collections.abc import Callable, Iterable
from typing import Any

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Mount, Route

from daemon.metrics import Metrics


class LazyApp:
    """An ASGI app built on its first request: a reconciler's interface (the MCP server imports a large
    SDK) costs no memory in a daemon nobody asks it of."""

    def __init__(self, factory: Callable[[], Any]) -> None:
        self._factory = factory
        self._app: Any = None
        self._lock = threading.Lock()

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if self._app is None:
            with self._lock:
                if self._app is None:
                    self._app = self._factory()
        await self._app(scope, receive, send)


def reconciler_mounts(reconcilers: Iterable[Any]) -> list[tuple[str, Any]]:
    """(prefix, lazily built app) for every reconciler serving an interface (`asgi_prefix` + `asgi_app()`)."""
    mounts: list[tuple[str, Any]] = []
    for rec in reconcilers:
        prefix, factory = getattr(rec, "asgi_prefix", None), getattr(rec, "asgi_app", None)
        if prefix and factory is not None:
            mounts.append((prefix, LazyApp(_app_of(factory))))
    return mounts


def _app_of(factory: Callable[[], Any]) -> Callable[[], Any]:
    return lambda: factory()[1]


def build_app(metrics: Metrics, health: Callable[[], dict[str, Any]], mounts: list[tuple[str, Any]],
              routes: Iterable[Any] = ()) -> Starlette:
    """The ASGI app: metrics, health, extra routes (the webhook receiver) and reconciler mounts."""

    async def metrics_endpoint(request: Request) -> Response:
        return Response(metrics.render(), media_type="text/plain; version=0.0.4")

    async def health_endpoint(request: Request) -> Response:
        body = health()
        # 503 while not ready (the data directory refuses writes): load balancers and probes read the code.
        return JSONResponse(body, status_code=200 if body.get("ok", True) else 503)

    table: list[Any] = [Route("/metrics", metrics_endpoint), Route("/healthz", health_endpoint), *routes]
    table += [Mount(prefix, app=app) for prefix, app in mounts]
    return Starlette(routes=table)


class HttpServer:
    """uvicorn in a background thread on host:port (port 0 picks a free port; see `.port`)."""

    def __init__(self, listen: str, app: Starlette) -> None:
        host, _, port = listen.rpartition(":")
        self.sock = socket.socket(socket.AF_INET6 if ":" in host.strip("[]") else socket.AF_INET)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind((host.strip("[]") or "127.0.0.1", int(port or 0)))
        self.port: int = self.sock.getsockname()[1]
        config = uvicorn.Config(app, log_level="warning", access_log=False, lifespan="off")
        self.server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.sock]}, name="http",
                                        daemon=True)

    def start(self) -> None:
        """Start serving."""
        self._thread.start()

    def stop(self) -> None:
        """Ask uvicorn to exit and wait briefly."""
        self.server.should_exit = True
        self._thread.join(timeout=5)
