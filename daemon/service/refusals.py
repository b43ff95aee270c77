"""Refusals seen on the HTTP thread (a webhook with a bad signature, a client the listener turned away), logged and
recorded as events on the loop thread, at most one per receiver per interval.

Unauthenticated callers can cause these at will: the rate limit keeps a flood from growing the index or waking the
loop for each request; the count of refusals since the last report goes with the next one.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from daemon.index.store import Index

REJECTION_EVENT_INTERVAL_S = 10.0

# Runs `fn(index)` on the loop thread (the index has a single writer).
Post = Callable[[Callable[[Index], Any]], None]


class Refusals:
    """Reports refusals from the HTTP thread to the log and, through `post`, to the index."""

    def __init__(self, logger: Any, post: Post, interval: float = REJECTION_EVENT_INTERVAL_S) -> None:
        self.logger = logger
        self._post = post
        self._interval = interval
        self._last: dict[str, tuple[float, int]] = {}

    def webhook_rejected(self, receiver: str, reason: str, client: str) -> None:
        """A delivery to `/hooks/<receiver>` was refused (signature, replay, unknown receiver)."""
        now = time.monotonic()
        last, count = self._last.get(receiver, (0.0, 0))
        if last and now - last < self._interval:
            self._last[receiver] = (last, count + 1)
            return
        self._last[receiver] = (now, 0)
        self.logger.warning("webhook_rejected", receiver=receiver, reason=reason, client=client, since_last=count)
        more = f"; {count} more refused since the last report" if count else ""
        self._post(lambda index: index.event("webhook_rejected", f"{reason} (from {client}){more}", subject=receiver))

    def http_denied(self, message: str, principal: str) -> None:
        """The listener refused a client (already rate-limited by the auth layer): logged, and an event."""
        self.logger.warning("http_denied", message=message, principal=principal)
        self._post(lambda index: index.event("http_denied", message, subject=principal))
