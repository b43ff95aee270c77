"""The daemon's HTTP listener: /metrics, /healthz, and the interfaces reconcilers mount (MCP, vault API).

Who may use it is daemon/http/auth.py (bearer tokens, Cedar), what a client may hold of it daemon/http/limits.py
(deadlines, the connection cap), and the host settings of both daemon/http/config.py.
"""

from __future__ import annotations

import asyncio
import functools
import socket
import ssl
import threading
from collections.abc import Callable, Iterable
from typing import Any

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Mount, Route

from daemon.errors import SettingsError
from daemon.http.auth import AuthMiddleware, HttpPolicy, OnDenied, TokenStore, read_private
from daemon.http.config import HttpSettings, Limits, check_exposure, http_settings
from daemon.http.descriptors import accept_burst, quiet_accept_errors, widen_backlog
from daemon.http.limits import Stats, fd_budget, guarded_protocol
from daemon.http.sessions import SessionStore
from daemon.service.metrics import Metrics
from reconcilers.base import AnyReconciler


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


def reconciler_mounts(reconcilers: Iterable[AnyReconciler]) -> list[tuple[str, Any]]:
    """(prefix, lazily built app) for every interface the reconcilers serve (their `http_mounts()`)."""
    return [(m.prefix, LazyApp(m.factory)) for rec in reconcilers for m in rec.http_mounts() if not m.listen]


def own_listener_mounts(reconcilers: Iterable[AnyReconciler]) -> list[tuple[str, str, Any]]:
    """(prefix, listen address, app) for the interfaces served on listeners of their own (they authenticate
    by themselves: the vault API with its tokens); the app sees whole paths (no prefix stripped)."""
    return [(m.prefix, m.listen, LazyApp(m.factory)) for rec in reconcilers for m in rec.http_mounts() if m.listen]


def build_app(metrics: Metrics, health: Callable[[], dict[str, Any]], mounts: list[tuple[str, Any]],
              routes: Iterable[Any] = (), auth: Callable[[Any, list[str]], AuthMiddleware] | None = None) -> Any:
    """The ASGI app: metrics, health, extra routes (the webhook receiver) and reconciler mounts, behind `auth`
    (called with the app and the mount prefixes). The daemon always passes one; without it nothing is
    authenticated, which only in-process tests of a mounted app should want."""

    async def metrics_endpoint(request: Request) -> Response:
        return Response(metrics.render(), media_type="text/plain; version=0.0.4")

    async def health_endpoint(request: Request) -> Response:
        body = health()
        # 503 while not ready (the data directory refuses writes): load balancers and probes read the code.
        return JSONResponse(body, status_code=200 if body.get("ok", True) else 503)

    table: list[Any] = [Route("/metrics", metrics_endpoint), Route("/healthz", health_endpoint), *routes]
    table += [Mount(prefix, app=app) for prefix, app in mounts]
    app = Starlette(routes=table)
    return auth(app, ["/metrics", *(prefix for prefix, _ in mounts)]) if auth is not None else app


AuthFactory = Callable[[Any, list[str]], AuthMiddleware]


def listener_settings(listen: str, section: Any, where: str,
                      on_denied: OnDenied | None = None) -> tuple[HttpSettings, AuthFactory, TokenStore]:
    """The checked `[http]` table, the auth gate it describes and its token store (for reloads); raises
    SettingsError (before anything listens) on a bad table, an unreadable or open tokens file, a bad policy,
    or an exposed address in clear."""
    http = http_settings(section, where)
    check_exposure(listen, http, where)
    tokens = TokenStore(http.tokens_file)
    policy = HttpPolicy.from_file(http.policy_file)
    if http.tls_key is not None:
        read_private(http.tls_key, "TLS key file")
    sessions = SessionStore(http.session_ttl)      # browser logins (/forms/login); one table per listener

    def auth(app: Any, mounts: list[str]) -> AuthMiddleware:
        return AuthMiddleware(app, tokens, policy, mounts, http.metrics_public, on_denied, sessions)
    return http, auth, tokens


class _Server(uvicorn.Server):
    """uvicorn with accept() failures logged once a minute instead of a traceback each, and a deadline on the
    TLS handshake (uvicorn passes none, so asyncio's 60 s applies, and a connection still in its handshake
    holds a descriptor the connection cap cannot see yet)."""

    def __init__(self, config: uvicorn.Config, handshake_timeout: float) -> None:
        super().__init__(config)
        self.handshake_timeout = handshake_timeout

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        loop = asyncio.get_running_loop()
        quiet_accept_errors(loop, "http")
        if self.config.ssl is not None:
            # This loop is ours alone (uvicorn's thread), so wrapping its create_server touches nothing else.
            loop.create_server = functools.partial(  # type: ignore[method-assign]
                loop.create_server, ssl_handshake_timeout=self.handshake_timeout)
        await super().startup(sockets=sockets)
        for sock in sockets or ():
            widen_backlog(sock)


class HttpServer:
    """uvicorn in a background thread on host:port (port 0 picks a free port; see `.port`), with the deadlines
    and the connection cap of `limits` and TLS when `http` names a certificate."""

    def __init__(self, listen: str, app: Any, http: HttpSettings | None = None, limits: Limits | None = None) -> None:
        http = http or HttpSettings()
        self.limits = fd_budget(limits or http.limits)
        self.stats = Stats()
        host, _, port = listen.rpartition(":")
        # IPPROTO_TCP, not 0: asyncio sets TCP_NODELAY only on sockets whose proto says TCP (accepted ones inherit
        # it), and without it every response whose head and body are written apart waited ~40 ms for an ACK.
        self.sock = socket.socket(socket.AF_INET6 if ":" in host.strip("[]") else socket.AF_INET, socket.SOCK_STREAM,
                                  socket.IPPROTO_TCP)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            self.sock.bind((host.strip("[]") or "127.0.0.1", int(port or 0)))
        except (OSError, ValueError) as err:
            self.sock.close()
            raise SettingsError(f"cannot listen on {listen}: {err}", where="http_listen",
                                hint="choose a free port, or stop what listens there") from err
        self.port: int = self.sock.getsockname()[1]
        self.scheme = "https" if http.tls else "http"
        tls: dict[str, Any] = {"ssl_certfile": str(http.tls_cert), "ssl_keyfile": str(http.tls_key)} if http.tls else {}
        # No mount speaks WebSocket: "none" keeps an upgrade from moving a connection out of the guarded protocol.
        # log_level "error": uvicorn's warnings are one line per bad request (malformed, an upgrade asked for),
        # which anyone who can reach the port could use to flood the log; its errors are our apps failing.
        # proxy_headers off: uvicorn's default trusts X-Forwarded-For/-Proto from 127.0.0.1, and on a loopback
        # listener that is every client, so any local process could claim another address (the vault's audit
        # `remote_address`, Cedar's `context.source`). No proxy is configured in front of the daemon; it also
        # takes a middleware layer off every request.
        config = uvicorn.Config(app, log_level="error", access_log=False, lifespan="off", ws="none",
                                proxy_headers=False, http=guarded_protocol(self.limits, self.stats),
                                timeout_keep_alive=max(1, round(self.limits.keepalive_timeout)),
                                backlog=accept_burst(self.limits.max_connections), **tls)
        try:
            config.load()      # here, not in the thread: a bad certificate is an error at start
        except (ssl.SSLError, OSError) as err:
            self.sock.close()
            raise SettingsError(f"cannot load the TLS certificate or key: {err}", where=str(http.tls_cert),
                                hint="tls_cert is a PEM certificate (chain), tls_key its PEM private key") from err
        self.server = _Server(config, self.limits.header_timeout)
        self._thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.sock]}, name="http",
                                        daemon=True)

    def start(self) -> None:
        """Start serving."""
        self._thread.start()

    def stop(self) -> None:
        """Ask uvicorn to exit and wait briefly."""
        self.server.should_exit = True
        self._thread.join(timeout=5)
