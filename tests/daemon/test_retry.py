"""Error classes decide what happens to a failed action (daemon/run/retry.py): a transient error is retried with
capped backoff, a waiting one is requeued without counting as a failure, a terminal one is never retried; every
retry shows as an event and in the metrics. Real executor, real DuckDB index, real pipeline run."""

from __future__ import annotations

import random
import threading
from pathlib import Path
from typing import Any

from daemon.index.store import Index
from daemon.run.plan import Executor
from daemon.run.retry import RetryPolicy, Stopped, apply_with_retry
from daemon.service.metrics import Metrics
from reconcilers.base import Action, ApplyContext, Outcome
from reconcilers.errors import TerminalError, TransientError, WaitingError
from tests.daemon.test_plan import CTX, Recorder, _final_status, act, index  # noqa: F401 fixture
from tests.fixtures import Stack, WorkRepo, infra, resource

# Short delays: what is tested is which errors are retried and how often, not how long anything takes.
FAST = RetryPolicy(attempts=4, base=0.001, cap=0.004, max_wait=1.0)


class Scripted(Recorder):
    """The in-memory test reconciler, raising the scripted errors (one per call) before it applies."""

    def __init__(self, script: dict[str, list[Exception]]) -> None:
        super().__init__()
        self.script = script
        self.tries: dict[str, int] = {}

    def apply(self, action: Action, ctx: ApplyContext) -> Outcome:
        """Raise the next scripted error of this target, else apply as the Recorder does."""
        with self.lock:
            self.tries[action.target] = self.tries.get(action.target, 0) + 1
            pending = self.script.get(action.target, [])
            err = pending.pop(0) if pending else None
        if err is not None:
            raise err
        return super().apply(action, ctx)


def _run(rec: Scripted, idx: Index, actions: list[Action], policy: RetryPolicy = FAST,
         ) -> tuple[Any, Metrics]:
    metrics = Metrics()
    executor = Executor({"t": rec}, idx, 2, retry=policy, metrics=metrics)
    return executor.execute("run", actions, CTX), metrics


def _events(idx: Index, kind: str) -> list[str]:
    return [str(r[0]) for r in idx.query("SELECT message FROM events WHERE kind = ? ORDER BY ts", [kind])]


def _count(metrics: Metrics, reason: str) -> float:
    value = metrics.registry.get_sample_value("stratum_action_retries_total", {"reconciler": "t", "reason": reason})
    return value or 0.0


def test_two_transient_failures_then_success_apply_the_action(index: Index) -> None:  # noqa: F811
    """A target that fails twice and then works: the action is done after three tries, and the two retries are
    two events and two counts; its dependent runs after it."""
    rec = Scripted({"a": [TransientError("timeout"), TransientError("503")]})
    result, metrics = _run(rec, index, [act("a"), act("b", "a")])
    assert result.failed is None
    assert rec.tries == {"a": 3, "b": 1}
    assert _final_status(index, "run") == {"t:a": "done", "t:b": "done"}
    retries = _events(index, "action_retry")
    assert len(retries) == 2 and "try 1 of 4" in retries[0] and "timeout" in retries[0] and "503" in retries[1]
    assert _count(metrics, "transient") == 2


def test_a_transient_error_that_persists_fails_after_the_last_try(index: Index) -> None:  # noqa: F811
    """Tries are capped: after `attempts` the action fails with the last error (and the run would roll back)."""
    rec = Scripted({"a": [TransientError(f"down {i}") for i in range(10)]})
    result, metrics = _run(rec, index, [act("a")])
    assert result.failed is not None and "down 3" in result.failed[1]
    assert rec.tries == {"a": 4}
    assert _count(metrics, "transient") == 3


def test_waiting_is_requeued_and_not_a_failure(index: Index) -> None:  # noqa: F811
    """A dependency not ready yet: the action is requeued after the delay asked for, as often as needed within
    the waiting budget, and waits do not use up the tries (here a single try for transient errors)."""
    rec = Scripted({"a": [WaitingError("volume attaching", after=0.001) for _ in range(5)]})
    result, metrics = _run(rec, index, [act("a")], RetryPolicy(attempts=1, base=0.001, cap=0.002, max_wait=1.0))
    assert result.failed is None
    assert rec.tries == {"a": 6}
    assert len(_events(index, "action_waiting")) == 5 and _events(index, "action_retry") == []
    assert _count(metrics, "waiting") == 5 and _count(metrics, "transient") == 0


def test_waiting_past_the_budget_fails_the_action(index: Index) -> None:  # noqa: F811
    """A dependency that never comes is a failure once `max_wait` seconds of waiting are spent."""
    rec = Scripted({"a": [WaitingError("dns not propagated", after=0.004) for _ in range(100)]})
    result, _ = _run(rec, index, [act("a")], RetryPolicy(base=0.001, cap=0.002, max_wait=0.01))
    assert result.failed is not None and "still waiting" in result.failed[1]
    assert "dns not propagated" in result.failed[1]
    assert rec.tries["a"] < 10


def test_a_terminal_error_is_never_retried(index: Index) -> None:  # noqa: F811
    """The revision is wrong for the target: one try, no retry event, the action fails."""
    rec = Scripted({"a": [TerminalError("port 99999 is out of range", where="infra/a.ncl:3")]})
    result, metrics = _run(rec, index, [act("a")])
    assert result.failed is not None and "out of range" in result.failed[1]
    assert rec.tries == {"a": 1}
    assert _events(index, "action_retry") == [] and _count(metrics, "transient") == 0


def test_backoff_doubles_is_capped_and_jittered() -> None:
    """base * 2^(n-1), never above the cap, a longer hint from the target honoured (still capped), and the
    jitter takes at most its share off."""
    policy = RetryPolicy(base=1.0, cap=8.0, jitter=0.0)
    assert [policy.backoff(n) for n in range(1, 6)] == [1.0, 2.0, 4.0, 8.0, 8.0]
    assert policy.backoff(1, hint=5.0) == 5.0 and policy.backoff(1, hint=60.0) == 8.0
    jittered = [RetryPolicy(base=1.0, cap=8.0, jitter=0.5).backoff(3, rng=random.Random(s)) for s in range(50)]
    assert all(2.0 <= d <= 4.0 for d in jittered) and len(set(jittered)) > 1


def test_a_stopping_daemon_does_not_wait_out_a_backoff() -> None:
    """Shutdown during a backoff: the action is not tried again and fails at once with why."""
    stop = threading.Event()
    stop.set()
    tries = []

    def apply(action: Action, ctx: ApplyContext) -> Outcome:
        tries.append(action.id)
        raise TransientError("flaky")

    try:
        apply_with_retry(apply, act("a"), CTX, RetryPolicy(base=60.0, cap=60.0), lambda *a: None, stop)
    except Stopped as err:
        assert "stopping" in err.what
    else:
        raise AssertionError("expected Stopped")
    assert tries == ["t:a"]


def test_a_real_run_applies_through_transient_failures(tmp_path: Path, repo: WorkRepo, stack: Stack) -> None:
    """End to end: the infra reconciler's apply fails twice transiently on one file, the run succeeds, the
    file is there, and the retries are in the events and the daemon's metrics."""
    real_apply = stack.infra.apply
    failures = {"motd": 2}

    def flaky(action: Action, ctx: ApplyContext) -> Outcome:
        if failures.get(action.target, 0) > 0:
            failures[action.target] -= 1
            raise TransientError("the disk was busy")
        return real_apply(action, ctx)

    stack.infra.apply = flaky  # type: ignore[method-assign]  # the injected failure of a real target
    stack.pipeline.retry = FAST
    rev = repo.commit({"infra/a.ncl": infra(resource("motd", "file", path="etc/motd", content="hi\n"))})
    result = stack.run(rev)
    assert result.status == "succeeded", result
    assert (stack.root / "etc/motd").read_text() == "hi\n"
    assert len(_events(stack.index, "action_retry")) == 2
    assert stack.pipeline.metrics.registry.get_sample_value(
        "stratum_action_retries_total", {"reconciler": "infra", "reason": "transient"}) == 2
