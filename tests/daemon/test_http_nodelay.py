"""The daemon's listener sets TCP_NODELAY on its connections: without it, a response whose head and body are
written apart (uvicorn's h11 does) waited for the client's delayed ACK, ~40 ms on every request (seen in
bench/vault.py: a bare endpoint answered 350 requests/s on 16 connections)."""

from __future__ import annotations

import http.client
import socket
from typing import Any

from daemon.http.server import HttpServer
from tests.proc import wait_for


async def _bare(scope: dict[str, Any], receive: Any, send: Any) -> None:
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"2")]})
    await send({"type": "http.response.body", "body": b"ok"})


def test_accepted_connections_have_tcp_nodelay() -> None:
    """Every connection the listener accepted has TCP_NODELAY on (asyncio sets it only when the listening
    socket's proto is IPPROTO_TCP)."""
    server = HttpServer("127.0.0.1:0", _bare)
    server.start()
    try:
        wait_for(lambda: server.server.started, 20)
        conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
        conn.request("GET", "/")
        assert conn.getresponse().read() == b"ok"
        states = list(server.server.server_state.connections)
        assert states
        for protocol in states:
            sock = protocol.transport.get_extra_info("socket")
            assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) != 0
        conn.close()
    finally:
        server.stop()
