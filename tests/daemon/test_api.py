"""The control socket: real unix-socket clients against ApiServer; idle and flooding clients are bounded.

Deadlines are a second so every test ends by itself; nothing asserts how fast anything is."""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from daemon.errors import StratumError
from daemon.service import control_socket as api


def handlers() -> dict[str, api.Handler]:
    """ping, echo, and one that fails."""
    def boom(req: dict[str, Any]) -> dict[str, Any]:
        raise RuntimeError("kaput")
    return {"ping": lambda req: {"pong": True}, "echo": lambda req: {"got": req.get("value")}, "boom": boom}


@pytest.fixture
def server(tmp_path: Path) -> Iterator[api.ApiServer]:
    """A control socket with one-second deadlines and room for 50 connections."""
    s = api.ApiServer(tmp_path / "s.sock", handlers(), request_timeout=1.0, reply_timeout=1.0, max_connections=50,
                      workers=4)
    s.start()
    yield s
    s.stop()


def idle_client(path: Path) -> socket.socket:
    """A connection that sends nothing."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.connect(str(path))      # blocking: waits for room in the listen backlog instead of failing
    sock.settimeout(10)
    return sock


def test_requests_are_answered(server: api.ApiServer) -> None:
    """Known operations answer; unknown ones, bad JSON and handler errors are replies, not crashes."""
    assert api.call(server.path, "ping")["pong"] is True
    assert api.call(server.path, "echo", value=[1, 2])["got"] == [1, 2]
    with pytest.raises(StratumError, match="unknown operation"):
        api.call(server.path, "nope")
    with pytest.raises(StratumError, match="internal error: RuntimeError: kaput"):
        api.call(server.path, "boom")
    with idle_client(server.path) as sock:
        sock.sendall(b"{not json\n")
        assert "bad request" in json.loads(sock.makefile().readline())["error"]


def test_the_socket_is_private(server: api.ApiServer) -> None:
    """The socket file is 0600: only the daemon's user may talk to it."""
    assert server.path.stat().st_mode & 0o777 == 0o600


def test_an_idle_connection_is_closed(server: api.ApiServer) -> None:
    """A client that connects and sends nothing is closed at the request deadline."""
    with idle_client(server.path) as sock:
        assert sock.recv(100) == b""
    assert server.closed["idle"] == 1


def test_a_request_over_the_size_limit_is_refused(server: api.ApiServer) -> None:
    """A request line over MAX_REQUEST gets an error reply, not a daemon holding a megabyte per client."""
    with idle_client(server.path) as sock:
        sock.sendall(b"x" * (api.MAX_REQUEST + 10) + b"\n")
        assert "over" in json.loads(sock.makefile().readline())["error"]


def test_idle_connections_hold_no_threads_and_cannot_lock_out_the_cli(server: api.ApiServer) -> None:
    """300 idle clients against a cap of 50: no thread per client, at most the cap held, and a ping answers."""
    before = threading.active_count()
    socks = [idle_client(server.path) for _ in range(300)]
    try:
        assert api.call(server.path, "ping", timeout=10)["pong"] is True
        assert threading.active_count() <= before + 4
        assert server.open_connections() <= 50
        assert server.closed["evicted"] >= 250
    finally:
        for s in socks:
            s.close()


def test_a_newcomer_finding_every_connection_busy_is_told_so(tmp_path: Path) -> None:
    """When every connection under the cap is busy with a request, a new client gets a `busy` error reply
    (what the CLI shows), not a silent reset."""
    gate = threading.Event()
    running: list[int] = []

    def slow(req: dict[str, Any]) -> dict[str, Any]:
        running.append(1)
        return {"done": gate.wait(10)}
    s = api.ApiServer(tmp_path / "s.sock", {"slow": slow}, max_connections=2, workers=2)
    s.start()
    try:
        callers = [threading.Thread(target=api.call, args=(s.path, "slow")) for _ in range(2)]
        for t in callers:
            t.start()
        deadline = time.monotonic() + 10
        while len(running) < 2 and time.monotonic() < deadline:
            time.sleep(0.01)
        with pytest.raises(StratumError, match="the daemon is busy"):
            api.call(s.path, "slow", timeout=10)
        gate.set()
        for t in callers:
            t.join(10)
    finally:
        gate.set()
        s.stop()


def test_slow_handlers_run_on_the_bounded_pool(tmp_path: Path) -> None:
    """Requests past the pool's size wait their turn instead of each taking a thread; a ping still answers."""
    gate = threading.Event()
    running: list[int] = []

    def slow(req: dict[str, Any]) -> dict[str, Any]:
        running.append(1)
        gate.wait(10)
        return {}
    s = api.ApiServer(tmp_path / "s.sock", {"slow": slow, "ping": lambda req: {}}, workers=2)
    s.start()
    try:
        callers = [threading.Thread(target=api.call, args=(s.path, "slow")) for _ in range(5)]
        for t in callers:
            t.start()
        deadline = time.monotonic() + 10
        while len(running) < 2 and time.monotonic() < deadline:
            time.sleep(0.01)
        time.sleep(0.2)    # give a third handler the chance to start, were the pool unbounded
        assert len(running) == 2
        assert api.daemon_running(s.path)     # a ping does not queue behind the busy workers
        gate.set()
        for t in callers:
            t.join(10)
        assert len(running) == 5
    finally:
        gate.set()
        s.stop()
