"""Process lifecycle: signals, graceful shutdown, and the systemd notify protocol (READY, STATUS, WATCHDOG)."""

from __future__ import annotations

import os
import signal
import socket
import threading
from collections.abc import Callable, Mapping


class Notifier:
    """sd_notify over $NOTIFY_SOCKET (a unix datagram socket; '@' prefix = abstract namespace)."""

    def __init__(self, env: Mapping[str, str] | None = None) -> None:
        env = os.environ if env is None else env
        self.address = env.get("NOTIFY_SOCKET", "")
        usec = env.get("WATCHDOG_USEC", "")
        self.watchdog_interval = int(usec) / 1e6 / 2 if usec.isdigit() and int(usec) > 0 else 0.0

    def send(self, **fields: str) -> bool:
        """Send `KEY=value` lines; False when no socket is configured or it is gone."""
        if not self.address:
            return False
        address = "\0" + self.address[1:] if self.address.startswith("@") else self.address
        payload = "\n".join(f"{k}={v}" for k, v in fields.items()).encode()
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
                sock.sendto(payload, address)
            return True
        except OSError:
            return False

    def ready(self, status: str) -> None:
        """READY=1 with a STATUS line."""
        self.send(READY="1", STATUS=status)

    def status(self, status: str) -> None:
        """Update the STATUS line."""
        self.send(STATUS=status)

    def watchdog(self) -> None:
        """Pet the watchdog."""
        self.send(WATCHDOG="1")

    def stopping(self) -> None:
        """STOPPING=1."""
        self.send(STOPPING="1")


class Shutdown:
    """A stop flag set by SIGTERM/SIGINT, and a reload hook for SIGHUP."""

    def __init__(self) -> None:
        self.event = threading.Event()
        self.reload_requested = threading.Event()
        self._wake: Callable[[], None] | None = None

    def install(self, wake: Callable[[], None]) -> None:
        """Install handlers (main thread only); `wake` interrupts the main loop's wait."""
        self._wake = wake
        signal.signal(signal.SIGTERM, self._stop)
        signal.signal(signal.SIGINT, self._stop)
        signal.signal(signal.SIGHUP, self._reload)

    def _stop(self, signum: int, frame: object) -> None:
        self.event.set()
        if self._wake:
            self._wake()

    def _reload(self, signum: int, frame: object) -> None:
        self.reload_requested.set()
        if self._wake:
            self._wake()

    @property
    def stopping(self) -> bool:
        """True once a stop was requested."""
        return self.event.is_set()
