"""File descriptors: the daemon's budget, and quiet handling of accept() when they run out.

The daemon raises its soft RLIMIT_NOFILE to the hard limit at start, then splits it: `fd_reserve` descriptors
stay for its own work (the index, git packs, the Nickel workers, the ref watcher, logs) and for the control
socket, which may hold up to half of the reserve; the HTTP listener may hold the rest. Both listeners close
connections past their share, so a flood of clients never takes the descriptors a commit needs.
"""

from __future__ import annotations

import asyncio
import resource
import time
from collections.abc import Callable
from typing import Any

from daemon.log import structlog  # imported through daemon.log: without rich (see there)

ACCEPT_LOG_INTERVAL_S = 60.0
MIN_CONNECTIONS = 8
KERNEL_BACKLOG = 1024   # connections the kernel queues before accept(): they cost no descriptor of ours yet

log = structlog.get_logger("stratum.descriptors")


def raise_nofile() -> int:
    """Raise the soft descriptor limit to the hard one (as far as allowed); returns the soft limit in force."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = hard if hard != resource.RLIM_INFINITY else max(soft, 65536)
    if target > soft:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
        except (ValueError, OSError):
            pass  # keep the soft limit we have; the shares below fit it
    return soft


def accept_burst(share: int) -> int:
    """The `backlog` to give asyncio for a listener allowed `share` connections. asyncio accepts up to `backlog`
    connections in one go before any of them is seen (and closed if over the cap), so it is also how far past
    its share a listener can overshoot for a moment. The kernel's queue is set apart, to KERNEL_BACKLOG, by
    listening again once asyncio has (`widen_backlog`), so a flood does not make new clients' SYNs drop."""
    return max(MIN_CONNECTIONS, min(64, share // 4))


def widen_backlog(sock: Any) -> None:
    """Let the kernel queue KERNEL_BACKLOG connections on a socket asyncio already listens on."""
    sock.listen(KERNEL_BACKLOG)


def http_share(soft: int, wanted: int, reserve: int) -> int:
    """How many HTTP connections fit below `soft` with `reserve` kept back, overshoot included."""
    room = soft - reserve
    return max(MIN_CONNECTIONS, min(wanted, room - accept_burst(room)))


def control_share(reserve: int, wanted: int) -> int:
    """How many control-socket connections the reserve allows: half of it at most, overshoot included."""
    half = reserve // 2
    return max(MIN_CONNECTIONS, min(wanted, half - accept_burst(half)))


def quiet_accept_errors(loop: asyncio.AbstractEventLoop, listener: str,
                        clock: Callable[[], float] = time.monotonic) -> None:
    """Log a failed accept() (EMFILE, ENFILE, ENOBUFS) once a minute with a count, without a traceback, where
    asyncio would log a traceback each time; other loop errors go to asyncio's default handler."""
    state = {"last": 0.0, "missed": 0}

    def handler(lp: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        if "accept" not in str(context.get("message", "")):
            lp.default_exception_handler(context)
            return
        now = clock()
        if state["last"] and now - state["last"] < ACCEPT_LOG_INTERVAL_S:
            state["missed"] += 1
            return
        exc = context.get("exception")
        log.warning("accept_failed", listener=listener,
                    error=f"{type(exc).__name__}: {exc}" if exc else context.get("message"),
                    since_last=state["missed"], message="the listener pauses accepting for a second and retries")
        state["last"], state["missed"] = now, 0

    loop.set_exception_handler(handler)
