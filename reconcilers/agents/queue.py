"""The task queue: at-least-once delivery with a visibility timeout, retries with backoff, a dead letter, and
idempotency keys, behind one small Protocol so the embedded DuckDB queue and NATS JetStream (natsqueue.py)
behave the same (tests run the same behaviour tests on both).

    enqueue   add a run for a role (a second run with the same idempotency key while one is queued is the
              same run); `approval` runs wait in `awaiting_approval` until approved
    lease     the oldest ready run of the roles asked for, invisible to others for `visibility` seconds;
              a lease that expires (the worker died) makes the run ready again: redelivered
    ack       done; its idempotency key is remembered with the result
    nak       failed: ready again after backoff x 2^(attempt-1) (or `delay`), dead once attempts are spent
    term      dead at once (bad input: retrying cannot help)
    release   back after a delay without spending an attempt (every agent of the role was at its cap)
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from reconcilers.agents.store import Store

READY, LEASED, DONE, DEAD, CANCELLED, AWAITING = ("ready", "leased", "done", "dead", "cancelled",
                                                  "awaiting_approval")
MAX_BACKOFF = 3600.0


@dataclass(frozen=True, slots=True)
class Message:
    """One delivery of a queued run."""

    id: str
    role: str
    task: str
    spec: dict[str, Any]
    trigger: str
    attempt: int                              # 1 on the first delivery
    max_attempts: int
    idem_key: str = ""
    enqueued_at: float = 0.0


class Queue(Protocol):
    """What runners need of a queue."""

    def enqueue(self, role: str, spec: dict[str, Any], *, trigger: str = "manual", idem_key: str = "",
                retries: int = 0, backoff: float = 5.0, approval: bool = False) -> str:
        """Queue a run; its id."""
        ...

    def lease(self, roles: Sequence[str], owner: str, visibility: float) -> Message | None:
        """The next ready run of `roles`, leased to `owner`, or None."""
        ...

    def ack(self, msg: Message, result: str = "") -> None:
        """The run is done."""
        ...

    def nak(self, msg: Message, error: str, delay: float | None = None) -> bool:
        """The run failed; True when it will be retried, False when it went to the dead letter."""
        ...

    def term(self, msg: Message, error: str) -> None:
        """The run cannot succeed: dead letter now."""
        ...

    def release(self, msg: Message, delay: float) -> None:
        """Put the run back without spending an attempt (no agent was free)."""
        ...

    def done_result(self, idem_key: str) -> str | None:
        """The result of the run that already acted under `idem_key`, or None."""
        ...


def retry_delay(backoff: float, attempt: int) -> float:
    """Seconds before delivery `attempt + 1`: backoff x 2^(attempt-1), capped at an hour."""
    return float(min(MAX_BACKOFF, backoff * (2 ** max(0, attempt - 1))))


class DuckDBQueue:
    """The embedded queue in the agents' DuckDB file."""

    def __init__(self, store: Store, clock: Callable[[], float] = time.time) -> None:
        self.store = store
        self.clock = clock

    def enqueue(self, role: str, spec: dict[str, Any], *, trigger: str = "manual", idem_key: str = "",
                retries: int = 0, backoff: float = 5.0, approval: bool = False) -> str:
        """Queue a run; a run with the same idempotency key still queued or running is returned instead."""
        now = self.clock()
        with self.store.transaction() as con:
            if idem_key:
                row = con.execute("SELECT id FROM queue WHERE idem_key = ? AND state IN (?, ?, ?)",
                                  [idem_key, READY, LEASED, AWAITING]).fetchone()
                if row is not None:
                    return str(row[0])
            mid = uuid.uuid4().hex
            con.execute("INSERT INTO queue VALUES (?, ?, ?, ?, ?, ?, ?, 0, ?, ?, ?, NULL, NULL, ?, NULL, NULL, NULL)",
                        [mid, role, str(spec.get("id", "")), json.dumps(spec), trigger, idem_key or None,
                         AWAITING if approval else READY, retries + 1, backoff, now, now])
        return mid

    def lease(self, roles: Sequence[str], owner: str, visibility: float) -> Message | None:
        """The oldest ready (or lease-expired) run of `roles`, leased to `owner`."""
        if not roles:
            return None
        now = self.clock()
        marks = ", ".join("?" for _ in roles)
        with self.store.transaction() as con:
            row = con.execute(
                f"SELECT id, role, task, spec, trigger, attempts, max_attempts, idem_key, enqueued_at FROM queue "
                f"WHERE role IN ({marks}) AND ((state = ? AND available_at <= ?) OR (state = ? AND leased_until < ?)) "
                "ORDER BY available_at, enqueued_at LIMIT 1", [*roles, READY, now, LEASED, now]).fetchone()
            if row is None:
                return None
            con.execute("UPDATE queue SET state = ?, attempts = attempts + 1, leased_until = ?, lease_owner = ? "
                        "WHERE id = ?", [LEASED, now + visibility, owner, row[0]])
        return Message(id=row[0], role=row[1], task=row[2], spec=json.loads(row[3]), trigger=row[4],
                       attempt=int(row[5]) + 1, max_attempts=int(row[6]), idem_key=row[7] or "",
                       enqueued_at=float(row[8]))

    def extend(self, msg: Message, visibility: float) -> None:
        """Keep a long run invisible (a heartbeat from its worker)."""
        self.store.execute("UPDATE queue SET leased_until = ? WHERE id = ? AND state = ?",
                           [self.clock() + visibility, msg.id, LEASED])

    def ack(self, msg: Message, result: str = "") -> None:
        """Done; the idempotency key remembers the result."""
        now = self.clock()
        with self.store.transaction() as con:
            # Only a leased run becomes done: one cancelled meanwhile stays cancelled.
            con.execute("UPDATE queue SET state = ?, finished_at = ?, result = ?, leased_until = NULL "
                        "WHERE id = ? AND state = ?", [DONE, now, result[:4000], msg.id, LEASED])
            if msg.idem_key:
                con.execute("INSERT OR REPLACE INTO idempotency VALUES (?, ?, ?, ?)",
                            [msg.idem_key, msg.id, result[:4000], now])

    def nak(self, msg: Message, error: str, delay: float | None = None) -> bool:
        """Failed: retried after a backoff, or dead when attempts are spent."""
        now = self.clock()
        with self.store.transaction() as con:
            row = con.execute("SELECT attempts, max_attempts, backoff FROM queue WHERE id = ?", [msg.id]).fetchone()
            if row is None:
                return False
            attempts, max_attempts, backoff = int(row[0]), int(row[1]), float(row[2])
            if attempts >= max_attempts:
                con.execute("UPDATE queue SET state = ?, finished_at = ?, last_error = ?, leased_until = NULL "
                            "WHERE id = ?", [DEAD, now, error[:4000], msg.id])
                return False
            wait = retry_delay(backoff, attempts) if delay is None else delay
            con.execute("UPDATE queue SET state = ?, available_at = ?, last_error = ?, leased_until = NULL "
                        "WHERE id = ?", [READY, now + wait, error[:4000], msg.id])
            return True

    def release(self, msg: Message, delay: float) -> None:
        """Put a run back after `delay` without spending an attempt (no agent of its role was free)."""
        self.store.execute("UPDATE queue SET state = ?, attempts = attempts - 1, available_at = ?, "
                           "leased_until = NULL WHERE id = ? AND state = ?",
                           [READY, self.clock() + delay, msg.id, LEASED])

    def term(self, msg: Message, error: str) -> None:
        """Dead letter now."""
        self.store.execute("UPDATE queue SET state = ?, finished_at = ?, last_error = ?, leased_until = NULL "
                           "WHERE id = ?", [DEAD, self.clock(), error[:4000], msg.id])

    def done_result(self, idem_key: str) -> str | None:
        """The remembered result of `idem_key`, or None."""
        if not idem_key:
            return None
        rows = self.store.query("SELECT result FROM idempotency WHERE key = ?", [idem_key])
        return str(rows[0][0] or "") if rows else None

    # -- what people do --------------------------------------------------------------------------------
    def approve(self, mid: str) -> bool:
        """Release a run waiting for approval; False when no such run waits."""
        return self._move(mid, AWAITING, READY)

    def reject(self, mid: str, reason: str = "rejected") -> bool:
        """Refuse a run waiting for approval."""
        return self._move(mid, AWAITING, CANCELLED, reason)

    def cancel(self, mid: str, reason: str = "cancelled") -> bool:
        """Cancel a run that has not finished (a leased run's worker finds it cancelled when it acks)."""
        return self._move(mid, None, CANCELLED, reason)

    def _move(self, mid: str, from_state: str | None, to_state: str, reason: str = "") -> bool:
        now = self.clock()
        with self.store.transaction() as con:
            row = con.execute("SELECT state FROM queue WHERE id = ?", [mid]).fetchone()
            if row is None or (from_state is not None and row[0] != from_state) or row[0] in (DONE, DEAD,
                                                                                              CANCELLED):
                return False
            con.execute("UPDATE queue SET state = ?, available_at = ?, last_error = ?, "
                        "finished_at = CASE WHEN ? = ? THEN ? ELSE NULL END WHERE id = ?",
                        [to_state, now, reason or None, to_state, CANCELLED, now, mid])
        return True

    def state(self, mid: str) -> str | None:
        """The run's state, or None when unknown."""
        rows = self.store.query("SELECT state FROM queue WHERE id = ?", [mid])
        return str(rows[0][0]) if rows else None

    def pending(self) -> list[dict[str, Any]]:
        """Runs waiting for approval, oldest first: id, role, task, trigger, enqueued_at."""
        return self.store.dicts("SELECT id, role, task, trigger, enqueued_at FROM queue WHERE state = ? "
                                "ORDER BY enqueued_at", [AWAITING])

    def outcome(self, mid: str) -> tuple[str, str, str] | None:
        """(state, result, last error) of a run, or None when unknown."""
        rows = self.store.query("SELECT state, result, last_error FROM queue WHERE id = ?", [mid])
        return (str(rows[0][0]), str(rows[0][1] or ""), str(rows[0][2] or "")) if rows else None

    def rows(self, state: str | None = None, limit: int = 200) -> list[dict[str, Any]]:
        """Queued runs (newest first), optionally of one state."""
        where, params = ("WHERE state = ?", [state]) if state else ("", [])
        return self.store.dicts(f"SELECT id, role, task, trigger, state, attempts, max_attempts, enqueued_at, "
                                f"finished_at, last_error FROM queue {where} ORDER BY enqueued_at DESC LIMIT ?",
                                [*params, limit])
