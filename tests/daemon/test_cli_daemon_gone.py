"""A CLI read (`stratum status`, `log`, `events`, `drift`) whose daemon stops between the ping and the request
asks again and then reads the index, instead of failing with "closed the connection without a reply".

Seen in tests/daemon/test_startup.py::test_a_loop_polling_status_never_keeps_the_daemon_down once `stratum
status` got fast enough to hit a daemon's shutdown. Here a real unix socket plays the daemon: it answers the
ping, then closes the read request without a reply and removes its socket, as a stopping daemon does.
"""

from __future__ import annotations

import json
import socket
import threading
from pathlib import Path

from daemon.cli.common import daemon_or_local
from daemon.settings import load_settings


def _stopping_daemon(path: Path) -> threading.Thread:
    """Answer one ping, then take one request and close without a reply, removing the socket first."""
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(str(path))
    server.listen()

    def serve() -> None:
        with server:
            conn, _ = server.accept()
            with conn:
                conn.recv(65536)
                conn.sendall(json.dumps({"ok": True}).encode() + b"\n")
            conn, _ = server.accept()
            path.unlink()
            with conn:
                conn.recv(65536)                   # the request arrives; the daemon is gone before replying
    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    return thread


def test_a_read_whose_daemon_stops_falls_back_to_the_index(tmp_path: Path) -> None:
    settings = load_settings({"data_dir": str(tmp_path / "data")})
    settings.data_dir.mkdir(parents=True)
    server = _stopping_daemon(settings.socket_path)
    asked: list[str] = []

    def ask(sock: Path) -> str:
        from daemon.service import control_client

        asked.append("daemon")
        return str(control_client.call(sock, "status", timeout=10.0))

    assert daemon_or_local(settings, ask, lambda: "index", wait=30.0) == "index"
    assert asked == ["daemon"]
    server.join(10)
