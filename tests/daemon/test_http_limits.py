"""What a slow or greedy client may hold of the HTTP listener: real sockets against a real uvicorn on loopback.

Deadlines are set to a second or two so every test ends by itself; nothing here asserts how fast anything is."""

from __future__ import annotations

import asyncio
import http.client
import logging
import select
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
import structlog
from prometheus_client import CollectorRegistry, generate_latest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse
from starlette.routing import Route

from daemon.errors import SettingsError
from daemon.http.config import Limits
from daemon.http.descriptors import quiet_accept_errors
from daemon.http.limits import HeadWithBody
from daemon.http.server import HttpServer

LIMITS = Limits(header_timeout=1.0, body_timeout=1.0, keepalive_timeout=1.0, max_requests_per_connection=3,
                max_connections=20, fd_reserve=64)


async def echo(request: Request) -> PlainTextResponse:
    """Reads the whole body, answers its length."""
    return PlainTextResponse(str(len(await request.body())))


def serve(limits: Limits, app: Any = None) -> HttpServer:
    """A started server under `limits` with `app`, by default one with /healthz and /echo."""
    app = app or Starlette(routes=[Route("/healthz", lambda r: JSONResponse({"ok": True})),
                                   Route("/echo", echo, methods=["POST"])])
    server = HttpServer("127.0.0.1:0", app, limits=limits)
    server.start()
    deadline = time.monotonic() + 10
    while not server.server.started:
        assert time.monotonic() < deadline, "uvicorn did not start"
        time.sleep(0.01)
    return server


@pytest.fixture
def server() -> Iterator[HttpServer]:
    """A server with one-second deadlines, 3 requests per connection and room for 20 connections."""
    s = serve(LIMITS)
    yield s
    s.server.should_exit = True
    s.stop()


def slow_client(port: int, first: bytes = b"GET /healthz HTTP/1.1\r\n") -> socket.socket:
    """A connection that sent `first` and will send nothing more by itself."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    if first:
        sock.sendall(first)
    return sock


def read_until_closed(sock: socket.socket) -> bytes:
    """Everything the server sends until it closes (the socket's 10 s timeout bounds the wait)."""
    out = b""
    try:
        while chunk := sock.recv(4096):
            out += chunk
    except ConnectionResetError:
        pass
    return out


def read_until(sock: socket.socket, marker: bytes) -> bytes:
    """What the server sends up to and including `marker`, failing if it closes first (the socket's 10 s
    timeout bounds each wait)."""
    out = b""
    while marker not in out:
        chunk = sock.recv(4096)
        assert chunk, f"closed before {marker!r}"
        out += chunk
    return out


def healthz(port: int) -> int:
    """Status of GET /healthz on a fresh connection."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request("GET", "/healthz")
        return conn.getresponse().status
    finally:
        conn.close()


def test_a_request_head_sent_slowly_is_cut_off_with_408(server: HttpServer) -> None:
    """A client sending one header line now and then is answered 408 and closed at the head deadline."""
    sock = slow_client(server.port)
    with sock:
        sock.sendall(b"X-Slow: 1\r\n")
        reply = read_until_closed(sock)
    assert reply.startswith(b"HTTP/1.1 408 ")
    assert server.stats.closed["header_timeout"] >= 1


def test_cut_connections_are_counted_in_metrics(server: HttpServer) -> None:
    """What the listener cut off shows in Prometheus metrics, by reason."""
    registry = CollectorRegistry()
    registry.register(server.stats)
    with slow_client(server.port) as sock:
        read_until_closed(sock)
    text = generate_latest(registry).decode()
    assert 'stratum_http_connections_closed_total{reason="header_timeout"} 1.0' in text
    assert 'stratum_http_connections_closed_total{reason="evicted"} 0.0' in text


def test_a_silent_connection_is_closed(server: HttpServer) -> None:
    """A connection that never sends a byte is closed (without a reply) at the head deadline."""
    with slow_client(server.port, b"") as sock:
        assert read_until_closed(sock) == b""


def test_a_body_sent_slowly_is_cut_off(server: HttpServer) -> None:
    """A request whose body stops halfway is closed at the body deadline; the app sees a disconnect."""
    with slow_client(server.port, b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n0123456789") as sock:
        assert read_until_closed(sock) == b""
    assert server.stats.closed["body_timeout"] == 1


def test_keep_alive_connections_serve_a_bounded_number_of_requests(server: HttpServer) -> None:
    """After max_requests_per_connection responses the server closes the connection."""
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
    try:
        for _ in range(3):
            conn.request("POST", "/echo", body=b"abc")
            resp = conn.getresponse()
            assert resp.read() == b"3"
        assert conn.sock is not None
        assert read_until_closed(conn.sock) == b""
    finally:
        conn.close()
    assert server.stats.closed["max_requests"] == 1


def test_slow_clients_past_the_cap_are_evicted_and_healthz_answers() -> None:
    """60 slow clients against a cap of 20 (and a head deadline too long to help): the oldest waiting ones make
    room for newer ones, so /healthz answers, and the server never holds more than the cap."""
    server = serve(Limits(header_timeout=60.0, max_connections=20, fd_reserve=64))
    socks = [slow_client(server.port) for _ in range(60)]
    try:
        assert healthz(server.port) == 200
        assert server.stats.closed["evicted"] >= 40
        assert server.stats.peak <= 20
    finally:
        for s in socks:
            s.close()
        server.stop()


def test_bad_requests_do_not_write_a_log_line_each(server: HttpServer) -> None:
    """Malformed requests and WebSocket upgrade requests are answered without a uvicorn warning apiece."""
    records: list[logging.LogRecord] = []
    handler = logging.Handler(logging.WARNING)
    handler.emit = records.append  # type: ignore[method-assign]
    logger = logging.getLogger("uvicorn.error")
    logger.addHandler(handler)
    try:
        for _ in range(10):
            with slow_client(server.port, b"NOT HTTP AT ALL\r\n\r\n") as sock:
                assert read_until_closed(sock).startswith(b"HTTP/1.1 400 ")
            with slow_client(server.port, b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: upgrade\r\n"
                                          b"Upgrade: websocket\r\nConnection: close\r\n\r\n") as sock:
                assert read_until_closed(sock).startswith(b"HTTP/1.1 200 ")
    finally:
        logger.removeHandler(handler)
    assert records == []


def test_accept_failures_are_logged_once_a_minute_without_tracebacks() -> None:
    """A hundred accept() failures make one warning with no traceback; other loop errors still reach asyncio."""
    loop = asyncio.new_event_loop()
    try:
        quiet_accept_errors(loop, "http")
        with structlog.testing.capture_logs() as logs:
            for _ in range(100):
                loop.call_exception_handler({"message": "socket.accept() out of system resource",
                                             "exception": OSError(24, "Too many open files")})
        assert [e["event"] for e in logs] == ["accept_failed"]
        assert "Too many open files" in logs[0]["error"]
    finally:
        loop.close()


def test_a_port_in_use_is_a_settings_error(server: HttpServer) -> None:
    """Listening where something already listens says where and what to do, not a bare OSError."""
    with pytest.raises(SettingsError) as err:
        HttpServer(f"127.0.0.1:{server.port}", Starlette(), limits=LIMITS)
    assert f"cannot listen on 127.0.0.1:{server.port}" in err.value.render()


def test_descriptor_budget_raises_the_soft_limit_and_caps_connections() -> None:
    """In a process whose soft limit is below the hard one, the soft limit is raised to the hard one and the
    connection cap leaves fd_reserve descriptors for the daemon, less the accept burst (the backlog, 64)
    asyncio may take before the cap sees those connections."""
    code = (
        "import resource\n"
        "from daemon.http.config import Limits\n"
        "from daemon.http.limits import fd_budget\n"
        "resource.setrlimit(resource.RLIMIT_NOFILE, (200, 1000))\n"
        "lim = fd_budget(Limits(max_connections=5000, fd_reserve=300))\n"
        "print(resource.getrlimit(resource.RLIMIT_NOFILE)[0], lim.max_connections)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60)
    assert out.stdout.splitlines()[-1].split() == ["1000", "636"]
    assert "http_connections_capped" in out.stdout


def test_a_request_head_past_max_header_bytes_is_refused_with_431() -> None:
    """llhttp (the httptools parser) has no head size bound of its own: a head growing past max_header_bytes
    is answered 431 and closed, instead of being buffered for as long as the client sends header lines."""
    server = serve(Limits(header_timeout=30.0, max_header_bytes=4096, max_connections=20, fd_reserve=64))
    try:
        with slow_client(server.port) as sock:
            for _ in range(20):                    # up to 20 x 1 KiB header lines, never the blank line
                sock.sendall(b"X-Big: " + b"a" * 1024 + b"\r\n")
                if _readable(sock, 0.2):
                    break                          # the answer came: send no more
            reply = read_until_closed(sock)
        assert reply.startswith(b"HTTP/1.1 431 ")
        assert b"max_header_bytes" in reply
        assert server.stats.closed["header_too_large"] == 1
        assert healthz(server.port) == 200         # a head just under the bound still passes (and the server lives)
    finally:
        server.stop()


def _readable(sock: socket.socket, wait: float = 0.0) -> bool:
    """Whether the server sent something (or closed) within `wait` seconds."""
    return bool(select.select([sock], [], [], wait)[0])


def test_a_body_trickled_byte_by_byte_is_cut_off_at_the_body_deadline(server: HttpServer) -> None:
    """The body deadline runs from the end of the head for the whole body: bytes arriving now and then do not
    extend it (a client sending one byte every 0.3 s is cut off after about a second, not after 30 s)."""
    with slow_client(server.port, b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n") as sock:
        sent = 0
        try:
            for _ in range(100):                   # bounded: 100 bytes at most, ~30 s if never cut off
                sock.sendall(b"x")
                sent += 1
                time.sleep(0.3)
                if _readable(sock) and not sock.recv(1, socket.MSG_PEEK):
                    break                          # the server closed it
        except (BrokenPipeError, ConnectionResetError):
            pass
    assert sent < 20
    assert server.stats.closed["body_timeout"] == 1


def test_pipelined_requests_are_answered_in_order(server: HttpServer) -> None:
    """Two requests sent in one write are both answered, in order, on the one connection."""
    with slow_client(server.port, b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n\r\nabc"
                                  b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nConnection: close\r\n\r\n"
                                  b"abcde") as sock:
        reply = read_until_closed(sock)
    assert reply.count(b"HTTP/1.1 200 ") == 2
    assert reply.index(b"\r\n\r\n3") < reply.index(b"\r\n\r\n5")


def test_a_keep_alive_request_head_sent_slowly_is_cut_off_with_408(server: HttpServer) -> None:
    """The head deadline is armed again after each response: a second request whose head stalls gets 408."""
    with slow_client(server.port, b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n") as sock:
        read_until(sock, b'{"ok":true}')
        sock.sendall(b"GET /healthz HTTP/1.1\r\n")
        reply = read_until_closed(sock)
    assert reply.startswith(b"HTTP/1.1 408 ")
    assert server.stats.closed["header_timeout"] == 1


def test_a_malformed_request_is_refused_at_once_and_counted(server: HttpServer) -> None:
    """A head that is not HTTP is answered 400 and closed at its first bad line (without waiting for a blank
    line or the deadline), and counted as `bad_request` among the connections cut off."""
    with slow_client(server.port, b"X-Slow: 1\r\n") as sock:       # a header line where the request line goes
        assert read_until_closed(sock).startswith(b"HTTP/1.1 400 ")
    assert server.stats.closed["bad_request"] == 1
    assert server.stats.closed["header_timeout"] == 0


async def _method_echo(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """Answers the request's method."""
    body = scope["method"].encode()
    headers = [(b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    await send({"type": "http.response.body", "body": body})


@pytest.mark.parametrize(("chunks", "expected"), [
    ([b"LIST /v1/secret/metadata/ HTTP/1.1\r\nHost: x\r\n\r\n"], [b"LIST"]),
    ([b"LI", b"ST /v1/secret/metadata/ HTTP/1.1\r\nHost: x\r\n\r\n"], [b"LIST"]),
    ([b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", b"LIST / HTTP/1.1\r\nHost: x\r\n\r\n",
      b"LOCK / HTTP/1.1\r\nHost: x\r\n\r\n"], [b"GET", b"LIST", b"LOCK"])])
def test_the_vault_list_method_reaches_the_app(chunks: list[bytes], expected: list[bytes]) -> None:
    """LIST (Vault's method for listing keys; llhttp does not know it) reaches the app as LIST, sent whole, split
    inside the method, or after another request on a keep-alive connection; LOCK stays LOCK."""
    server = serve(LIMITS, _method_echo)
    try:
        methods = []
        with slow_client(server.port, b"") as sock:
            for chunk in chunks:
                sock.sendall(chunk)
                if not chunk.endswith(b"\r\n\r\n"):
                    time.sleep(0.2)                # a separate read on the server's side
                    continue
                reply = b""
                while not reply.endswith((b"GET", b"LIST", b"LOCK")):
                    more = sock.recv(4096)
                    assert more, f"closed early: {reply!r}"
                    reply += more
                methods.append(reply.rsplit(b"\r\n\r\n", 1)[1])
        assert methods == expected
    finally:
        server.stop()


def test_a_response_head_and_body_leave_in_one_write() -> None:
    """HeadWithBody hands the real transport (an asyncio socket transport on a socketpair) one write for a
    head and its body, and still sends a lone head once the writer's step ends."""
    a, b = socket.socketpair()

    async def run() -> list[bytes]:
        loop = asyncio.get_running_loop()
        transport, _ = await loop.connect_accepted_socket(asyncio.Protocol, a)
        writes: list[bytes] = []
        real_write = transport.write

        def counting_write(data: Any) -> None:
            writes.append(bytes(data))
            real_write(data)
        transport.write = counting_write  # type: ignore[method-assign]
        combined = HeadWithBody(transport, loop)  # type: ignore[arg-type]
        combined.write(b"HEAD1\r\n\r\n")
        combined.write(b"body1")
        lone = HeadWithBody(transport, loop)  # type: ignore[arg-type]
        lone.write(b"HEAD2\r\n\r\n")
        await asyncio.sleep(0)                 # the step ends: the lone head leaves
        await asyncio.sleep(0)
        transport.close()
        return writes

    writes = asyncio.run(run())
    assert writes == [b"HEAD1\r\n\r\nbody1", b"HEAD2\r\n\r\n"]
    b.settimeout(10)
    assert read_until_closed(b) == b"HEAD1\r\n\r\nbody1HEAD2\r\n\r\n"
    b.close()


def test_a_streamed_response_head_is_not_held_for_its_body() -> None:
    """An app that sends its head and only later its body (a stream): the client gets the head first."""
    release = threading.Event()

    async def stream(scope: dict[str, Any], receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"4")]})
        while not release.is_set():
            await asyncio.sleep(0.01)          # bounded by the test: it sets `release` once it saw the head
        await send({"type": "http.response.body", "body": b"done"})

    server = serve(LIMITS, stream)
    try:
        with slow_client(server.port, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n") as sock:
            head = read_until(sock, b"\r\n\r\n")
            assert head.startswith(b"HTTP/1.1 200 ") and head.endswith(b"\r\n\r\n")
            release.set()
            assert read_until(sock, b"done") == b"done"
        with slow_client(server.port, b"HEAD / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n") as sock:
            assert read_until_closed(sock).startswith(b"HTTP/1.1 200 ")      # a HEAD: no body write at all
    finally:
        release.set()
        server.stop()
