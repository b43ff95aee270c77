"""The local control API: JSON lines over the daemon's unix socket (0600), used by the CLI and git hooks.

Request: one JSON object per line, `{"op": "...", ...}`; reply: one JSON object, `{"ok": true, ...}` or
`{"ok": false, "error": "..."}`. Operations are dispatched to a handler table the daemon provides.
"""

from __future__ import annotations

import asyncio
import json
import os
import queue
import socket
import threading
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from daemon.errors import StratumError
from daemon.http.descriptors import accept_burst, quiet_accept_errors, widen_backlog
from daemon.service.control_client import call as call  # the client, re-exported (it lives apart: see there)
from daemon.service.control_client import daemon_running as daemon_running

Handler = Callable[[dict[str, Any]], dict[str, Any]]
MAX_REQUEST = 1024 * 1024
REQUEST_TIMEOUT_S = 10.0     # to send the request line once connected
REPLY_TIMEOUT_S = 30.0       # to take the reply once it is ready
MAX_CONNECTIONS = 128        # open connections; past it the oldest one still silent is closed
WORKERS = 16                 # handlers running at once (an `apply` holds one until its run ends)
INLINE_OPS = frozenset({"ping", "notify"})   # never block: answered on the loop, even when every worker waits


class _Conn:
    """One open connection; `since` is set while it has not sent its request line."""

    __slots__ = ("since", "writer")

    def __init__(self, writer: asyncio.StreamWriter) -> None:
        self.writer = writer
        self.since: float | None = time.monotonic()


class ApiServer:
    """Serves the handler table on `path` from one event-loop thread; handlers run on a bounded pool.

    A connection costs a descriptor, never a thread, until its request line is in: an idle client is closed
    after `request_timeout`, and past `max_connections` the one that has been silent longest is closed to make
    room, so a pile of idle clients cannot lock the CLI out."""

    def __init__(self, path: Path, handlers: Mapping[str, Handler], *, request_timeout: float = REQUEST_TIMEOUT_S,
                 reply_timeout: float = REPLY_TIMEOUT_S, max_connections: int = MAX_CONNECTIONS,
                 workers: int = WORKERS) -> None:
        self.path = path
        self.handlers = handlers
        self.request_timeout, self.reply_timeout = request_timeout, reply_timeout
        self.max_connections = max_connections
        self.closed: dict[str, int] = {"idle": 0, "evicted": 0, "busy": 0, "too_large": 0}
        if path.exists() or path.is_symlink():
            path.unlink()
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        old = os.umask(0o177)
        try:
            self._sock.bind(str(path))     # created 0600: only the daemon's user may talk to it
        finally:
            os.umask(old)
        self._sock.listen(accept_burst(max_connections))
        self._pool = _Workers(workers)
        self._conns: set[_Conn] = set()
        self._loop = asyncio.new_event_loop()
        self._server: asyncio.AbstractServer | None = None
        self._thread = threading.Thread(target=self._run, name="api", daemon=True)

    def start(self) -> None:
        """Start serving."""
        ready = threading.Event()
        self._loop.call_soon(ready.set)
        self._thread.start()
        ready.wait(10)

    def _run(self) -> None:
        loop = self._loop
        asyncio.set_event_loop(loop)
        quiet_accept_errors(loop, "control")
        self._server = loop.run_until_complete(asyncio.start_unix_server(
            self._serve, sock=self._sock, limit=MAX_REQUEST, backlog=accept_burst(self.max_connections)))
        widen_backlog(self._sock)
        try:
            loop.run_forever()
        finally:
            # Stopped: let every connection's task see its cancellation, so none is destroyed pending.
            tasks = asyncio.all_tasks(loop)
            for task in tasks:
                task.cancel()
            loop.run_until_complete(asyncio.gather(*tasks, return_exceptions=True))
            loop.close()

    def stop(self) -> None:
        """Stop serving and remove the socket."""
        def close() -> None:
            if self._server is not None:
                self._server.close()
            for conn in list(self._conns):
                conn.writer.transport.abort()
            self._loop.stop()
        if self._thread.is_alive():
            self._loop.call_soon_threadsafe(close)
            self._thread.join(timeout=5)
        elif not self._loop.is_closed():
            self._loop.close()
        self._sock.close()
        self._pool.stop()
        self.path.unlink(missing_ok=True)

    def open_connections(self) -> int:
        """Connections open now (for tests and status)."""
        return len(self._conns)

    def _make_room(self, newcomer: _Conn) -> bool:
        """Over the cap: close the connection silent the longest. False when that is the newcomer (every other
        connection is busy with a request): it is told so and closed."""
        silent = [c for c in self._conns if c.since is not None]
        oldest = min(silent, key=lambda c: c.since or 0.0)        # the newcomer is silent too: never empty
        # Out of the count now: its task sees the close only on a later turn of the loop.
        oldest.since = None
        self._conns.discard(oldest)
        if oldest is newcomer:
            self.closed["busy"] += 1
            busy = {"ok": False, "error": f"the daemon is busy: {len(self._conns)} control requests are in "
                                          "progress; try again when one finishes"}
            newcomer.writer.write((json.dumps(busy) + "\n").encode())
            newcomer.writer.close()
            return False
        self.closed["evicted"] += 1
        oldest.writer.transport.abort()
        return True

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        conn = _Conn(writer)
        self._conns.add(conn)
        try:
            if len(self._conns) > self.max_connections and not self._make_room(conn):
                return
            try:
                line = await asyncio.wait_for(reader.readline(), self.request_timeout)
            except TimeoutError:
                self.closed["idle"] += 1
                return
            except ValueError:              # the line is longer than MAX_REQUEST
                self.closed["too_large"] += 1
                line = b""
                reply: dict[str, Any] = {"ok": False, "error": f"bad request: over {MAX_REQUEST} bytes"}
            else:
                reply = {}
            conn.since = None
            if writer.transport.is_closing():
                return
            if not reply and _op(line) in INLINE_OPS:
                # `daemon_running` pings with a 2 s timeout: it must not queue behind applies waiting for a run.
                reply = self._dispatch(line)
            elif not reply:
                reply = await self._pool.run(self._loop, self._dispatch, line)
            writer.write((json.dumps(reply, default=str) + "\n").encode())
            await asyncio.wait_for(writer.drain(), self.reply_timeout)
        except (OSError, TimeoutError, asyncio.IncompleteReadError):
            pass  # the client went away or does not read: nothing to tell it
        except asyncio.CancelledError:
            pass  # the server is stopping; asyncio's stream callback would log a cancelled task as an error
        finally:
            self._conns.discard(conn)
            writer.close()

    def _dispatch(self, line: bytes) -> dict[str, Any]:
        """One request line -> its reply; on a pool thread."""
        try:
            request = json.loads(line)
            op = request.get("op")
            handler = self.handlers.get(str(op))
            if handler is None:
                return {"ok": False, "error": f"unknown operation {op!r}"}
            return {"ok": True, **handler(request)}
        except StratumError as err:
            return {"ok": False, "error": err.render()}
        except (json.JSONDecodeError, AttributeError) as err:
            return {"ok": False, "error": f"bad request: {err}"}
        except Exception as err:  # noqa: BLE001 one bad request never takes the daemon down
            return {"ok": False, "error": f"internal error: {type(err).__name__}: {err}"}


def _op(line: bytes) -> str:
    """The operation a request line names, cheaply ("" when it does not parse)."""
    try:
        request = json.loads(line)
    except ValueError:
        return ""
    return str(request.get("op", "")) if isinstance(request, dict) else ""


class _Workers:
    """Up to `size` daemon threads running handlers (started as needed). Daemon threads, because a handler may
    wait an hour for a run the stopping loop will never finish, and must not hold the process open.

    Each job is matched to a worker when submitted (an idle one, else a new one while fewer than `size` run,
    else it waits for the next to finish), so two jobs submitted at once never share one worker."""

    def __init__(self, size: int) -> None:
        self.size = size
        self._jobs: queue.SimpleQueue[tuple[asyncio.AbstractEventLoop, asyncio.Future[Any], Callable[[bytes], Any],
                                            bytes] | None] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._threads: list[threading.Thread] = []
        self._idle = 0          # workers with no job claimed
        self._waiting = 0       # jobs queued with no worker claimed yet

    def run(self, loop: asyncio.AbstractEventLoop, fn: Callable[[bytes], Any], arg: bytes) -> asyncio.Future[Any]:
        """fn(arg) on a worker; the future resolves on `loop`. Past `size` busy workers, jobs wait in line."""
        future: asyncio.Future[Any] = loop.create_future()
        with self._lock:
            if self._idle:
                self._idle -= 1
            elif len(self._threads) < self.size:
                thread = threading.Thread(target=self._work, name=f"api-{len(self._threads)}", daemon=True)
                self._threads.append(thread)
                thread.start()
            else:
                self._waiting += 1
        self._jobs.put((loop, future, fn, arg))
        return future

    def _work(self) -> None:
        while (job := self._jobs.get()) is not None:
            loop, future, fn, arg = job
            result = fn(arg)
            try:
                loop.call_soon_threadsafe(_settle, future, result)
            except RuntimeError:
                pass  # the loop closed meanwhile: nobody waits for this reply
            with self._lock:
                if self._waiting:
                    self._waiting -= 1      # this worker takes a job that waited for one
                else:
                    self._idle += 1

    def stop(self) -> None:
        """Let idle workers exit (busy ones exit after their job)."""
        for _ in self._threads:
            self._jobs.put(None)


def _settle(future: asyncio.Future[Any], result: Any) -> None:
    if not future.done():
        future.set_result(result)
