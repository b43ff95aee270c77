"""What a slow or greedy client may hold of the HTTP listener, and the descriptors the daemon keeps for itself.

uvicorn (0.55) has a keep-alive timeout, but nothing bounds the time a client takes to send a request's head
or body, and `limit_concurrency` counts a connection only once its head has arrived: a client sending one header
line every 10 s holds a descriptor forever, and ~20,000 of them exhausted the daemon's descriptors (issue 16).
`guarded_protocol` adds to uvicorn's httptools protocol (the C llhttp parser; with uvicorn's h11 protocol, which
parses in pure Python, a bare endpoint cost the server ~320 us of CPU per request, with httptools ~70 us):

1. a head deadline: the request line and headers within `header_timeout` of the connection opening, or of the
   previous response on a keep-alive connection (plus `keepalive_timeout`); else 408 and close; and a head
   size bound, `max_header_bytes` (llhttp has none of its own); else 431 and close;
2. a body deadline: the whole body within `body_timeout` of the head; else close (the app sees a disconnect);
3. at most `max_requests_per_connection` requests on one connection;
4. a connection cap: the connection past `max_connections` evicts the oldest one still waiting for its request
   head (slow clients lose their place to new ones, so a flood of them never locks out /healthz); when every
   connection is busy with a request, the newcomer is closed at once.

`fd_budget` raises the soft descriptor limit to the hard one and caps connections below it, keeping `fd_reserve`
descriptors for the index, git, the Nickel workers and the control socket (daemon/http/descriptors.py).
"""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Iterator
from dataclasses import replace
from typing import Any

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from daemon.http.config import Limits
from daemon.http.descriptors import http_share, raise_nofile
from daemon.log import structlog  # imported through daemon.log: without rich (see there)


def _reply(status: bytes, text: bytes) -> bytes:
    """A whole plain-text response that closes the connection."""
    return (b"HTTP/1.1 " + status + b"\r\ncontent-type: text/plain; charset=utf-8\r\nconnection: close\r\n"
            b"content-length: " + str(len(text)).encode() + b"\r\n\r\n" + text)


_REQUEST_TIMEOUT = _reply(b"408 Request Timeout", b"the request head did not arrive in time.\n")
_HEAD_TOO_LARGE = _reply(b"431 Request Header Fields Too Large",
                         b"the request head is too large (max_header_bytes in the [http] settings).\n")

log = structlog.get_logger("stratum.http")


def fd_budget(limits: Limits) -> Limits:
    """Raise the descriptor limit (daemon/http/descriptors.py); the limits with max_connections fitting below it."""
    soft = raise_nofile()
    room = http_share(soft, limits.max_connections, limits.fd_reserve)
    if room < limits.max_connections:
        log.warning("http_connections_capped", max_connections=room, configured=limits.max_connections,
                    nofile=soft, fd_reserve=limits.fd_reserve,
                    message="the descriptor limit leaves room for fewer HTTP connections than configured")
        return replace(limits, max_connections=room)
    return limits


class Stats:
    """What the listener refused or cut, by reason; a Prometheus collector (`registry.register(stats)`)."""

    def __init__(self) -> None:
        self.closed: Counter[str] = Counter()
        self.peak = 0                            # the most connections held at once, after eviction

    def collect(self) -> Iterator[Metric]:
        """stratum_http_connections_closed_total{reason} and stratum_http_connections_peak."""
        closed = CounterMetricFamily("stratum_http_connections_closed",
                                     "HTTP connections the listener cut off, by reason", labels=["reason"])
        for reason in ("header_timeout", "header_too_large", "bad_request", "body_timeout", "evicted",
                       "over_capacity", "max_requests"):
            closed.add_metric([reason], self.closed[reason])
        yield closed
        yield GaugeMetricFamily("stratum_http_connections_peak", "The most HTTP connections held at once",
                                value=self.peak)


class HeadWithBody:
    """The transport as a response sees it: the head (its first write) is held until the body's first write,
    so both leave in one send() instead of two (a system call and a TCP segment per response: a third of the
    listener's CPU under load was in these writes). An app writes its body in the same step of its task
    (nothing awaits in between), so the head waits for nothing; a head whose body comes later (a stream, or
    none: HEAD, 204) leaves by itself once that step ends (call_soon), or before a close."""

    __slots__ = ("_fresh", "_held", "_loop", "_transport")

    def __init__(self, transport: asyncio.Transport, loop: asyncio.AbstractEventLoop) -> None:
        self._transport = transport
        self._loop = loop
        self._held: bytes | None = None
        self._fresh = True                         # no write yet: the next one is the head

    def write(self, data: bytes) -> None:
        """Hold the head; send it with what follows."""
        if self._fresh:
            self._fresh = False
            self._held = bytes(data)
            self._loop.call_soon(self.flush)
            return
        held, self._held = self._held, None
        self._transport.write(held + data if held is not None else data)

    def flush(self) -> None:
        """Send a head still held."""
        held, self._held = self._held, None
        if held is not None and not self._transport.is_closing():
            self._transport.write(held)

    def close(self) -> None:
        """Send what is held, then close."""
        self.flush()
        self._transport.close()

    def is_closing(self) -> bool:
        """As the transport."""
        return self._transport.is_closing()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._transport, name)


def guarded_protocol(limits: Limits, stats: Stats) -> type[HttpToolsProtocol]:
    """uvicorn's httptools protocol with the deadlines and the cap of the module docstring."""
    # Shared by the connections of one server (its event loop is one thread: no locks). `waiting` holds the
    # connections in their head phase in the order they entered it, so the oldest is found in O(1) at the cap.
    waiting: dict[Guarded, None] = {}
    live = [0]

    class Guarded(HttpToolsProtocol):
        _timer: asyncio.TimerHandle | None = None
        _phase = "new"                           # new -> head (waiting for one) -> body -> app -> head ... closed
        _requests = 0
        _got_bytes = False
        _head_bytes = 0                          # bytes received while the current head is incomplete
        _list = False                            # the request being parsed was sent as LIST (parsed as LOCK)
        _held = b""                              # the first bytes of a request, too few to tell LIST apart

        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            super().connection_made(transport)
            live[0] += 1
            if live[0] > limits.max_connections and not self._evict_one():
                stats.closed["over_capacity"] += 1
                self._retire()
                transport.abort()
                return
            stats.peak = max(stats.peak, live[0])
            self._wait_head(limits.header_timeout)

        def _evict_one(self) -> bool:
            """Close the connection that has waited longest for a request head."""
            if not waiting:
                return False
            stats.closed["evicted"] += 1
            next(iter(waiting))._close(timed_out=False)
            return True

        def _enter(self, phase: str) -> None:
            waiting.pop(self, None)
            if phase == "head":
                waiting[self] = None              # to the end: the newest waiter
            self._phase = phase

        def _retire(self) -> None:
            """Closed: out of the count and the queue, once."""
            self._disarm()
            if self._phase != "closed":
                waiting.pop(self, None)
                live[0] -= 1
                self._phase = "closed"

        def _wait_head(self, seconds: float) -> None:
            self._enter("head")
            self._got_bytes = False
            self._head_bytes = 0
            self._arm(seconds, self._head_late)

        def _arm(self, seconds: float, callback: Any) -> None:
            if self._timer is not None:
                self._timer.cancel()
            self._timer = self.loop.call_later(seconds, callback)

        def _disarm(self) -> None:
            if self._timer is not None:
                self._timer.cancel()
                self._timer = None

        def _head_late(self) -> None:
            stats.closed["header_timeout"] += 1
            self._close(timed_out=True)

        def _body_late(self) -> None:
            stats.closed["body_timeout"] += 1
            self._close(timed_out=False)

        def _close(self, timed_out: bool, reply: bytes = _REQUEST_TIMEOUT) -> None:
            began = self._phase == "head" and self._got_bytes     # a request begun, no response started
            self._retire()
            if self.transport.is_closing():
                return
            if timed_out and began:
                self.transport.write(reply)       # the client began a request: tell it why
                self.transport.close()
            else:
                self.transport.abort()

        def data_received(self, data: bytes) -> None:
            self._got_bytes = True
            if self._phase == "head" and self._head_bytes == 0 and not self._list:
                # The first bytes of a request: llhttp knows no LIST method (Vault's, used by hvac and the
                # vault CLI to list keys), so it is parsed as LOCK, of the same length, and named LIST again
                # once the head is in. Only here, at a request's start, where the method is known to begin.
                data, self._held = self._held + data, b""
                if data[:5] == b"LIST ":
                    data, self._list = b"LOCK " + data[5:], True
                elif len(data) < 5 and b"LIST "[:len(data)] == data:
                    self._held = data             # "LI": wait for the rest of the method
                    return
            super().data_received(data)
            if self._phase == "head" and self.parser is not None and not self.transport.is_closing():
                # llhttp keeps no bound on a head's size (h11 had one): count what arrived while it is incomplete.
                self._head_bytes += len(data)
                if self._head_bytes > limits.max_header_bytes:
                    stats.closed["header_too_large"] += 1
                    self._close(timed_out=True, reply=_HEAD_TOO_LARGE)
            elif self._phase == "body" and self._timer is None:
                # Armed once, when the head is in and the body is not: the whole body within body_timeout of
                # it (a GET's head and end arrive together and never arm it).
                self._arm(limits.body_timeout, self._body_late)

        def send_400_response(self, msg: str) -> None:
            # A malformed request line or head: llhttp refuses it at the first bad byte (h11 waited for the
            # whole head, so a flood of garbage held connections until the deadline or eviction cut them).
            stats.closed["bad_request"] += 1
            self._retire()
            super().send_400_response(msg)

        # Parser callbacks (llhttp, from inside feed_data): move the deadline along with the request.
        def on_headers_complete(self) -> None:
            self._requests += 1
            self._head_bytes = 0
            if self._phase != "closed":
                self._enter("body")
                self._disarm()
            super().on_headers_complete()         # builds the scope and schedules the app (not run yet)
            if self._list:
                self._list = False
                self.scope["method"] = "LIST"
            if self.cycle is not None and self.cycle.transport is self.transport:
                self.cycle.transport = HeadWithBody(self.transport, self.loop)  # type: ignore[assignment]

        def on_message_complete(self) -> None:
            if self._phase == "body":
                self._enter("app")
                self._disarm()
            super().on_message_complete()

        def on_response_complete(self) -> None:
            super().on_response_complete()        # may start a pipelined request already parsed
            if self.transport.is_closing() or self._phase == "closed":
                return
            if self._requests >= limits.max_requests_per_connection:
                stats.closed["max_requests"] += 1
                self._retire()
                self.transport.close()            # not abort: the response may still be in the write buffer
                return
            if self._phase == "app" and (self.cycle is None or self.cycle.response_complete):
                # Idle keep-alive: uvicorn closes it after keepalive_timeout unless a byte comes; the head
                # deadline covers a client that starts a request and then dawdles.
                self._wait_head(limits.keepalive_timeout + limits.header_timeout)

        def connection_lost(self, exc: Exception | None) -> None:
            self._retire()
            super().connection_lost(exc)

    return Guarded
