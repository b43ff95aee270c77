"""The local control API: JSON lines over the daemon's unix socket (0600), used by the CLI and git hooks.

Request: one JSON object per line, `{"op": "...", ...}`; reply: one JSON object, `{"ok": true, ...}` or
`{"ok": false, "error": "..."}`. Operations are dispatched to a handler table the daemon provides.
"""

from __future__ import annotations

import json
import os
import socket
import socketserver
import threading
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from daemon.errors import StratumError

Handler = Callable[[dict[str, Any]], dict[str, Any]]
MAX_REQUEST = 1024 * 1024


class _Server(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    daemon_threads = True
    allow_reuse_address = True
    handlers: Mapping[str, Handler] = {}


class _RequestHandler(socketserver.StreamRequestHandler):
    server: _Server

    def handle(self) -> None:
        line = self.rfile.readline(MAX_REQUEST)
        try:
            request = json.loads(line)
            op = request.get("op")
            handler = self.server.handlers.get(str(op))
            if handler is None:
                reply: dict[str, Any] = {"ok": False, "error": f"unknown operation {op!r}"}
            else:
                reply = {"ok": True, **handler(request)}
        except StratumError as err:
            reply = {"ok": False, "error": err.render()}
        except (json.JSONDecodeError, AttributeError) as err:
            reply = {"ok": False, "error": f"bad request: {err}"}
        except Exception as err:  # noqa: BLE001 one bad request never takes the daemon down
            reply = {"ok": False, "error": f"internal error: {type(err).__name__}: {err}"}
        try:
            self.wfile.write((json.dumps(reply, default=str) + "\n").encode())
        except OSError:
            pass  # the client went away


class ApiServer:
    """Serves the handler table on `path` in a background thread."""

    def __init__(self, path: Path, handlers: Mapping[str, Handler]) -> None:
        self.path = path
        if path.exists() or path.is_symlink():
            path.unlink()
        old = os.umask(0o177)
        try:
            self._server = _Server(str(path), _RequestHandler)
        finally:
            os.umask(old)
        self._server.handlers = handlers
        self._thread = threading.Thread(target=self._server.serve_forever, name="api", daemon=True)

    def start(self) -> None:
        """Start serving."""
        self._thread.start()

    def stop(self) -> None:
        """Stop serving and remove the socket."""
        self._server.shutdown()
        self._server.server_close()
        self.path.unlink(missing_ok=True)


def call(path: Path, op: str, timeout: float = 600.0, **fields: Any) -> dict[str, Any]:
    """Send one request to a daemon; raises ConnectionError when none listens, StratumError on its error."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(timeout)
        sock.connect(str(path))
        sock.sendall((json.dumps({"op": op, **fields}) + "\n").encode())
        chunks = []
        while True:
            chunk = sock.recv(65536)
            if not chunk:
                break
            chunks.append(chunk)
            if chunk.endswith(b"\n"):
                break
    reply: dict[str, Any] = json.loads(b"".join(chunks))
    if not reply.get("ok"):
        raise StratumError(str(reply.get("error", "the daemon refused the request")))
    return reply


def daemon_running(path: Path) -> bool:
    """True when a daemon answers on `path`."""
    if not path.exists():
        return False
    try:
        call(path, "ping", timeout=2.0)
        return True
    except (OSError, ValueError, StratumError):
        return False
