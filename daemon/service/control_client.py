"""The client side of the control socket (daemon/service/control_socket.py): one request, one reply.

Kept apart from the server so a CLI verb asking a running daemon imports neither asyncio nor the descriptor
budget (with structlog): about half of `stratum status`'s own start-up. `control_socket` re-exports both names.
"""

from __future__ import annotations

import json
import socket
import time
from pathlib import Path
from typing import Any

from daemon.errors import StratumError


def call(path: Path, op: str, timeout: float = 600.0, **fields: Any) -> dict[str, Any]:
    """Send one request to a daemon; raises ConnectionError when none listens, StratumError on its error."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(timeout)
        _connect(sock, path, min(timeout, 10.0))
        try:
            sock.sendall((json.dumps({"op": op, **fields}) + "\n").encode())
        except (BrokenPipeError, ConnectionResetError):
            pass  # a busy daemon answers and closes before reading: its reply may be waiting
        chunks = []
        while True:
            try:
                chunk = sock.recv(65536)
            except ConnectionResetError:
                chunk = b""
            if not chunk:
                break
            chunks.append(chunk)
            if chunk.endswith(b"\n"):
                break
    if not chunks:
        raise ConnectionError(f"the daemon on {path} closed the connection without a reply")
    reply: dict[str, Any] = json.loads(b"".join(chunks))
    if not reply.get("ok"):
        raise StratumError(str(reply.get("error", "the daemon refused the request")))
    return reply


def _connect(sock: socket.socket, path: Path, patience: float) -> None:
    """Connect, waiting out a listen backlog that is momentarily full (a unix socket with a timeout answers
    EAGAIN at once instead of queueing the caller)."""
    deadline = time.monotonic() + patience
    while True:
        try:
            sock.connect(str(path))
            return
        except BlockingIOError:
            if time.monotonic() >= deadline:
                raise
            time.sleep(0.05)


def daemon_running(path: Path) -> bool:
    """True when a daemon answers on `path`."""
    if not path.exists():
        return False
    try:
        call(path, "ping", timeout=2.0)
        return True
    except (OSError, ValueError, StratumError):
        return False
