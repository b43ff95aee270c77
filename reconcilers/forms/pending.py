"""Previewed answers kept server-side between the plan page and its submit button.

The plan page carries only an opaque one-time token: answers (passwords included) never go back into HTML,
where a cache, a history or a screenshot could keep them. A token is bound to the form and to the principal
who previewed; it is taken once (submit), expires after TTL_S, and at most MAX_PENDING wait at a time (the
oldest is dropped first), so the store stays small whatever clients do.
"""

from __future__ import annotations

import secrets
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

TTL_S = 15 * 60.0
MAX_PENDING = 256


@dataclass(frozen=True, slots=True)
class Pending:
    """Checked answers waiting for their submit."""

    form: str
    principal: str
    answers: dict[str, Any]
    expires: float


class PendingAnswers:
    """Tokens -> previewed answers (thread-safe; the web backend serves from a thread pool)."""

    def __init__(self, ttl: float = TTL_S, limit: int = MAX_PENDING,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._items: OrderedDict[str, Pending] = OrderedDict()
        self._lock = threading.Lock()
        self._ttl = ttl
        self._limit = limit
        self._clock = clock

    def put(self, form: str, principal: str, answers: dict[str, Any]) -> str:
        """Keep `answers`; the token that takes them back."""
        token = secrets.token_urlsafe(32)
        with self._lock:
            self._expire()
            while len(self._items) >= self._limit:
                self._items.popitem(last=False)
            self._items[token] = Pending(form, principal, dict(answers), self._clock() + self._ttl)
        return token

    def take(self, token: str, form: str, principal: str) -> dict[str, Any] | None:
        """The answers of `token` if it is live, for this form and principal (then it is gone); else None."""
        with self._lock:
            self._expire()
            found = self._items.get(token)
            if found is None or found.form != form or found.principal != principal:
                return None
            del self._items[token]
            return found.answers

    def __len__(self) -> int:
        with self._lock:
            return len(self._items)

    def _expire(self) -> None:
        now = self._clock()
        for token in [t for t, p in self._items.items() if p.expires <= now]:
            del self._items[token]
