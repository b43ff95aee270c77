"""Process lifecycle: signals, graceful shutdown, and the systemd notify protocol (sd_notify(3)).

The protocol is one datagram of `KEY=value` lines to the unix socket named by $NOTIFY_SOCKET:
READY=1 (also after a reload), RELOADING=1 with MONOTONIC_USEC, STATUS, WATCHDOG=1, STOPPING=1 and
EXTEND_TIMEOUT_USEC. Without $NOTIFY_SOCKET (not under systemd) every call is a no-op returning False.
"""

from __future__ import annotations

import os
import signal
import socket
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager

# How long a notification may wait for room in the receiver's queue (net.unix.max_dgram_qlen is often 10).
# libsystemd blocks without limit; we bound it so a stuck receiver cannot hang the main loop (the watchdog
# would then fire anyway) and drop the message instead.
SEND_TIMEOUT = 5.0


def _usec(seconds: float) -> str:
    return str(max(0, round(seconds * 1_000_000)))


class Notifier:
    """sd_notify over $NOTIFY_SOCKET (a unix datagram socket; '@' prefix = abstract namespace)."""

    def __init__(self, env: Mapping[str, str] | None = None, timeout: float = SEND_TIMEOUT) -> None:
        env = os.environ if env is None else env
        self.address = env.get("NOTIFY_SOCKET", "")
        self.timeout = timeout
        usec = env.get("WATCHDOG_USEC", "")
        pid = env.get("WATCHDOG_PID", "")
        # As sd_watchdog_enabled(3): the watchdog is ours only when WATCHDOG_PID is unset or names this
        # process (a child that inherited the variables must not pet the parent's watchdog).
        self._watchdog_pid = int(pid) if pid.isdigit() else (None if not pid else -1)
        self._watchdog_usec = int(usec) if usec.isdigit() else 0
        self._phase = "starting"              # starting | ready | reloading | stopping: what systemd waits for

    @property
    def watchdog_enabled(self) -> bool:
        """True when systemd expects WATCHDOG=1 from this process."""
        return self._watchdog_usec > 0 and self._watchdog_pid in (None, os.getpid())

    @property
    def watchdog_interval(self) -> float:
        """Seconds between pets (half of WATCHDOG_USEC, as sd_watchdog_enabled(3) advises); 0.0 when off."""
        return self._watchdog_usec / 1e6 / 2 if self.watchdog_enabled else 0.0

    def send(self, **fields: str) -> bool:
        """Send `KEY=value` lines; False when no socket is configured, it is gone, or its queue stays full."""
        if self.address.startswith("@"):
            address = "\0" + self.address[1:]
        elif self.address.startswith("/"):
            address = self.address
        else:
            return False                      # unset, or a form sd_notify does not accept either
        # A newline inside a value would start a new assignment: STATUS text must not inject READY=1.
        payload = "\n".join(f"{k}={' '.join(str(v).splitlines())}" for k, v in fields.items()).encode()
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
                # connect() first: poll() on a connected datagram socket waits for room in the peer's queue,
                # so the timeout bounds the wait instead of spinning on EAGAIN.
                sock.settimeout(self.timeout)
                sock.connect(address)
                sock.send(payload)
            return True
        except OSError:
            return False

    def ready(self, status: str) -> bool:
        """READY=1 with a STATUS line: at start-up, and again when a reload has finished."""
        self._phase = "ready"
        return self.send(READY="1", STATUS=status)

    def reloading(self, status: str = "reloading host settings") -> bool:
        """RELOADING=1 with MONOTONIC_USEC (CLOCK_MONOTONIC in µs), as Type=notify-reload requires; end with ready()."""
        now = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
        self._phase = "reloading"
        return self.send(RELOADING="1", MONOTONIC_USEC=str(now), STATUS=status)

    def status(self, status: str) -> bool:
        """Update the STATUS line."""
        return self.send(STATUS=status)

    def watchdog(self) -> bool:
        """Pet the watchdog; a no-op (False) when the watchdog is off or belongs to another process."""
        return self.send(WATCHDOG="1") if self.watchdog_enabled else False

    def stopping(self, status: str = "stopping") -> bool:
        """STOPPING=1: a graceful stop has begun."""
        self._phase = "stopping"
        return self.send(STOPPING="1", STATUS=status)

    def extend_timeout(self, seconds: float) -> bool:
        """EXTEND_TIMEOUT_USEC: ask for `seconds` more before the start/stop/reload timeout fires (repeat to go on)."""
        return self.send(EXTEND_TIMEOUT_USEC=_usec(seconds))

    @contextmanager
    def keepalive(self, seconds: float) -> Iterator[None]:
        """Keep systemd patient while the main thread sits in one call bounded by its own timeout of `seconds`.

        For a step that cannot pet the watchdog itself (a repo command, a fetch with a timeout): a thread pets it
        until the block ends, but for `seconds` at most, so a call that hangs past its bound still trips the
        watchdog. While starting, reloading or stopping it also sends EXTEND_TIMEOUT_USEC for `seconds`, so the
        action in flight is not cut short by TimeoutStartSec=/TimeoutStopSec=.
        """
        if self._phase != "ready":
            self.extend_timeout(seconds)
        if not self.watchdog_enabled:
            yield
            return
        done = threading.Event()
        deadline = time.monotonic() + seconds

        def pet() -> None:
            while not done.wait(self.watchdog_interval) and time.monotonic() < deadline:
                self.watchdog()

        thread = threading.Thread(target=pet, name="watchdog-keepalive", daemon=True)
        thread.start()
        try:
            yield
        finally:
            done.set()
            thread.join()


class Shutdown:
    """A stop flag set by SIGTERM/SIGINT, and a reload hook for SIGHUP."""

    def __init__(self) -> None:
        self.event = threading.Event()
        self.reload_requested = threading.Event()
        self._wake: Callable[[], None] | None = None
        self._on_stop: Callable[[], object] | None = None

    def install(self, wake: Callable[[], None], on_stop: Callable[[], object] | None = None) -> None:
        """Install handlers (main thread only); `wake` interrupts the main loop's wait.

        `on_stop` runs once, at the first SIGTERM/SIGINT, even while the main thread is busy with a run: pass
        `Notifier.stopping` so STOPPING=1 (and keepalive's EXTEND_TIMEOUT_USEC) go out before the action in
        flight finishes, not after.
        """
        self._wake = wake
        self._on_stop = on_stop
        signal.signal(signal.SIGTERM, self._stop)
        signal.signal(signal.SIGINT, self._stop)
        signal.signal(signal.SIGHUP, self._reload)

    def _stop(self, signum: int, frame: object) -> None:
        first = not self.event.is_set()
        self.event.set()
        if first and self._on_stop:
            self._on_stop()
        if self._wake:
            self._wake()

    def _reload(self, signum: int, frame: object) -> None:
        self.reload_requested.set()
        if self._wake:
            self._wake()

    def take_reload(self) -> bool:
        """True when a SIGHUP came since the last call; clears it first: a SIGHUP during a reload asks again."""
        if not self.reload_requested.is_set():
            return False
        self.reload_requested.clear()
        return True

    @property
    def stopping(self) -> bool:
        """True once a stop was requested."""
        return self.event.is_set()
