"""The same queue behaviour on both queues: the embedded DuckDB queue and NATS JetStream (a real nats-server on
loopback from tests/servers.py). Time passes through `advance`: the DuckDB queue's clock moves, the NATS
server's real time passes (bounded waits, nothing timed is asserted)."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from reconcilers.agents.natsqueue import NatsQueue
from reconcilers.agents.queue import DEAD, DONE, DuckDBQueue, Message
from reconcilers.agents.store import Store
from tests.servers import Nats, nats  # noqa: F401  (the session's nats-server fixture)

VISIBILITY = 3.0             # wide: a loaded machine must not redeliver between a lease and the next check


class Harness:
    """A queue and a way to let time pass."""

    def __init__(self, queue: DuckDBQueue | NatsQueue, clock: list[float] | None) -> None:
        self.queue = queue
        self.clock = clock
        self.role = f"r{uuid.uuid4().hex[:10]}"           # a subject and consumer of this test's own

    def advance(self, seconds: float) -> None:
        if self.clock is not None:
            self.clock[0] += seconds
        else:
            time.sleep(seconds)

    def lease(self, wait: float = 0.0) -> Message | None:
        """Lease, retrying for up to `wait` seconds of the queue's time."""
        deadline = time.monotonic() + (wait if self.clock is None else 0) + 0.01
        while True:
            msg = self.queue.lease([self.role], "w", VISIBILITY)
            if msg is not None or time.monotonic() >= deadline:
                return msg
            time.sleep(0.1)


@pytest.fixture(params=["duckdb", "nats"])
def harness(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Harness]:
    """Each test runs on both queues."""
    if request.param == "duckdb":
        clock = [1000.0]
        store = Store(tmp_path / "q.duckdb")
        yield Harness(DuckDBQueue(store, lambda: clock[0]), clock)
        store.close()
    else:
        server: Nats = request.getfixturevalue("nats")
        q = NatsQueue(server.url, visibility=VISIBILITY)
        yield Harness(q, None)
        q.close()


def test_delivered_once_then_acked(harness: Harness) -> None:
    """A leased run is not delivered to another worker; once acked it is done and never again."""
    q = harness.queue
    mid = q.enqueue(harness.role, {"id": "t"})
    msg = harness.lease(wait=10)
    assert msg is not None and (msg.id, msg.attempt) == (mid, 1)
    assert harness.lease() is None
    q.ack(msg, "ok")
    assert q.outcome(mid) == (DONE, "ok", "")
    harness.advance(VISIBILITY + 0.5)
    assert harness.lease(wait=0.5) is None


def test_an_unacked_run_is_redelivered_after_the_visibility_timeout(harness: Harness) -> None:
    """A worker that dies holding a run: after the visibility timeout the run comes back, attempt 2."""
    q = harness.queue
    mid = q.enqueue(harness.role, {"id": "t"}, retries=3)
    first = harness.lease(wait=10)
    assert first is not None and first.id == mid
    harness.advance(VISIBILITY + 0.5)
    again = harness.lease(wait=10)
    assert again is not None and again.id == mid and again.attempt == 2


def test_nak_retries_then_dead_letters(harness: Harness) -> None:
    """A failed run comes back after its delay; out of attempts it is dead."""
    q = harness.queue
    mid = q.enqueue(harness.role, {"id": "t", "backoff": 0.5}, retries=1, backoff=0.5)
    msg = harness.lease(wait=10)
    assert msg is not None and q.nak(msg, "boom") is True
    harness.advance(0.6)
    msg = harness.lease(wait=10)
    assert msg is not None and msg.attempt == 2
    assert q.nak(msg, "boom again") is False
    assert q.outcome(mid)[0] == DEAD  # type: ignore[index]


def test_idempotency_keys(harness: Harness) -> None:
    """The same key queued twice is one run; its result is remembered once acked."""
    q = harness.queue
    key = f"incident-{uuid.uuid4().hex}"
    a = q.enqueue(harness.role, {"id": "t"}, idem_key=key)
    assert q.enqueue(harness.role, {"id": "t"}, idem_key=key) == a
    msg = harness.lease(wait=10)
    assert msg is not None and q.done_result(key) is None
    q.ack(msg, "did it")
    assert q.done_result(key) == "did it"
    assert harness.lease(wait=0.5) is None


def test_approval_holds_a_run(harness: Harness) -> None:
    """A run needing approval is not delivered until approved; a rejected one never is."""
    q = harness.queue
    a = q.enqueue(harness.role, {"id": "a"}, approval=True)
    b = q.enqueue(harness.role, {"id": "b"}, approval=True)
    assert harness.lease(wait=0.5) is None
    assert [r["id"] for r in q.pending() if r["role"] == harness.role] == [a, b]
    assert q.approve(a) and q.reject(b) and not q.approve(b)
    assert [r["id"] for r in q.pending() if r["role"] == harness.role] == []
    msg = harness.lease(wait=10)
    assert msg is not None and msg.id == a


def test_release_spends_no_attempt(harness: Harness) -> None:
    """A run put back because no agent was free keeps its attempts: the next delivery is still attempt 1."""
    q = harness.queue
    q.enqueue(harness.role, {"id": "t"})
    msg = harness.lease(wait=10)
    assert msg is not None
    q.release(msg, 0.3)
    harness.advance(0.5)
    again = harness.lease(wait=10)
    assert again is not None and again.id == msg.id and again.attempt == 1
