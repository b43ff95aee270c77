"""The durable DuckDB queue: at-least-once delivery, visibility timeout, retries with backoff, dead letter,
idempotency keys and approvals; a real DuckDB file, reopened to show the queue survives a restart. Time is a
clock the test moves (no sleeping, no timed assertions)."""

from __future__ import annotations

from pathlib import Path

from reconcilers.agents.queue import AWAITING, CANCELLED, DEAD, DONE, READY, DuckDBQueue, retry_delay
from reconcilers.agents.store import Store


class Clock:
    """A clock the test moves."""

    def __init__(self) -> None:
        self.now = 1_000.0

    def __call__(self) -> float:
        return self.now


def make(tmp_path: Path) -> tuple[DuckDBQueue, Clock]:
    """A queue on a fresh DuckDB file."""
    clock = Clock()
    return DuckDBQueue(Store(tmp_path / "agents.duckdb"), clock), clock


def test_a_run_is_delivered_once_per_lease_and_acked(tmp_path: Path) -> None:
    """A leased run is invisible to other workers until acked; acked runs are not delivered again."""
    q, _ = make(tmp_path)
    mid = q.enqueue("devops", {"id": "t"})
    msg = q.lease(["devops"], "w1", 30)
    assert msg is not None and (msg.id, msg.attempt, msg.task) == (mid, 1, "t")
    assert q.lease(["devops"], "w2", 30) is None
    q.ack(msg, "ok")
    assert q.state(mid) == DONE
    assert q.lease(["devops"], "w2", 30) is None


def test_roles_only_get_their_runs(tmp_path: Path) -> None:
    """A worker for one role never leases another role's run."""
    q, _ = make(tmp_path)
    q.enqueue("security", {"id": "s"})
    assert q.lease(["devops"], "w", 30) is None
    assert q.lease(["security", "devops"], "w", 30) is not None


def test_an_expired_lease_is_redelivered(tmp_path: Path) -> None:
    """A worker that dies holding a run: once the visibility timeout passes, another worker gets it."""
    q, clock = make(tmp_path)
    q.enqueue("devops", {"id": "t"})
    first = q.lease(["devops"], "dead-worker", 30)
    assert first is not None
    clock.now += 31
    again = q.lease(["devops"], "w2", 30)
    assert again is not None and again.id == first.id and again.attempt == 2


def test_failures_back_off_then_go_to_the_dead_letter(tmp_path: Path) -> None:
    """nak retries after backoff x 2^(attempt-1); after retries+1 attempts the run is dead."""
    q, clock = make(tmp_path)
    mid = q.enqueue("devops", {"id": "t"}, retries=2, backoff=10)
    for attempt, wait in ((1, 10), (2, 20)):
        msg = q.lease(["devops"], "w", 30)
        assert msg is not None and msg.attempt == attempt
        assert q.nak(msg, "boom") is True
        clock.now += wait - 1
        assert q.lease(["devops"], "w", 30) is None, "delivered before its backoff"
        clock.now += 1
    msg = q.lease(["devops"], "w", 30)
    assert msg is not None and msg.attempt == 3
    assert q.nak(msg, "boom") is False
    assert q.state(mid) == DEAD
    assert retry_delay(10, 30) == 3600.0


def test_term_is_dead_at_once(tmp_path: Path) -> None:
    """A run that cannot succeed skips its retries."""
    q, _ = make(tmp_path)
    mid = q.enqueue("devops", {"id": "t"}, retries=5)
    msg = q.lease(["devops"], "w", 30)
    assert msg is not None
    q.term(msg, "bad input")
    assert q.state(mid) == DEAD


def test_idempotency_keys_dedupe_and_remember(tmp_path: Path) -> None:
    """The same key while queued is the same run; once done, its result is remembered for redeliveries."""
    q, _ = make(tmp_path)
    a = q.enqueue("devops", {"id": "t"}, idem_key="k1")
    assert q.enqueue("devops", {"id": "t"}, idem_key="k1") == a
    msg = q.lease(["devops"], "w", 30)
    assert msg is not None and q.done_result("k1") is None
    q.ack(msg, "did it")
    assert q.done_result("k1") == "did it"


def test_approval_gates_hold_runs_until_approved(tmp_path: Path) -> None:
    """An approval run is not delivered until approved; a rejected one never is."""
    q, _ = make(tmp_path)
    a = q.enqueue("devops", {"id": "a"}, approval=True)
    b = q.enqueue("devops", {"id": "b"}, approval=True)
    assert q.state(a) == AWAITING and q.lease(["devops"], "w", 30) is None
    assert [r["id"] for r in q.rows(AWAITING)] == [b, a] or {r["id"] for r in q.rows(AWAITING)} == {a, b}
    assert q.approve(a) and q.reject(b)
    assert q.approve(b) is False
    assert q.state(a) == READY and q.state(b) == CANCELLED
    msg = q.lease(["devops"], "w", 30)
    assert msg is not None and msg.id == a


def test_a_cancelled_run_stays_cancelled_when_its_worker_acks(tmp_path: Path) -> None:
    """Cancelling a running run wins over the worker's late ack."""
    q, _ = make(tmp_path)
    mid = q.enqueue("devops", {"id": "t"})
    msg = q.lease(["devops"], "w", 30)
    assert msg is not None and q.cancel(mid)
    q.ack(msg, "late")
    assert q.state(mid) == CANCELLED


def test_the_queue_survives_a_restart(tmp_path: Path) -> None:
    """Queued runs are in the DuckDB file: a new process (a reopened store) delivers them."""
    q, _ = make(tmp_path)
    mid = q.enqueue("devops", {"id": "t", "command": ["true"]})
    q.store.close()
    q2, _ = make(tmp_path)
    msg = q2.lease(["devops"], "w", 30)
    assert msg is not None and msg.id == mid and msg.spec["command"] == ["true"]
