"""Schedules reconciled from each revision with APScheduler (added, changed, removed, never duplicated), real
fires, and a missed cron run fired once after downtime from the last-fire times kept in DuckDB."""

from __future__ import annotations

import datetime as dt
import threading
from pathlib import Path
from types import MappingProxyType

from reconcilers.agents.model import AgentsDesired, Check, Task, Trigger
from reconcilers.agents.schedule import CronTrigger, Schedule
from reconcilers.agents.store import Store


def desired(**crons: str) -> AgentsDesired:
    """Cron tasks `id=expr`."""
    tasks = {t: Task(t, t, "devops", Trigger("cron", e), command=("true",)) for t, e in crons.items()}
    return AgentsDesired(tasks=MappingProxyType(tasks))


def test_jobs_are_added_changed_and_removed_never_duplicated(tmp_path: Path) -> None:
    """Reconciling the same declarations twice changes nothing; a changed cron is rescheduled; a removed task's
    job goes away."""
    fired: list[str] = []
    s = Schedule(Store(tmp_path / "a.duckdb"), lambda j, t: fired.append(j))
    try:
        first = s.reconcile(desired(a="0 3 * * *", b="0 4 * * *"))
        assert first.added == ("task:a", "task:b")
        again = s.reconcile(desired(a="0 3 * * *", b="0 4 * * *"))
        assert (again.added, again.changed, again.removed) == ((), (), ())
        assert sorted(j.id for j in s.scheduler.get_jobs()) == ["task:a", "task:b"]
        third = s.reconcile(desired(a="0 5 * * *"))
        assert (third.changed, third.removed) == (("task:a",), ("task:b",))
        assert [j.id for j in s.scheduler.get_jobs()] == ["task:a"]
        assert str(s.scheduler.get_job("task:a").trigger) == "cron[0 5 * * *]"
        assert fired == []
    finally:
        s.close()


def test_check_intervals_are_jobs_too(tmp_path: Path) -> None:
    """Each check runs on its interval as a job."""
    s = Schedule(Store(tmp_path / "a.duckdb"), lambda j, t: None)
    try:
        d = AgentsDesired(checks=MappingProxyType({"pg": Check("pg", "tcp", host="127.0.0.1", port=1,
                                                                interval=30)}))
        assert s.reconcile(d).added == ("check:pg",)
    finally:
        s.close()


def test_a_cron_job_fires(tmp_path: Path) -> None:
    """A per-second schedule fires through APScheduler's thread (bounded wait, no timing asserted)."""
    fired = threading.Event()
    s = Schedule(Store(tmp_path / "a.duckdb"), lambda j, t: fired.set())
    try:
        s.reconcile(desired(fast="* * * * * *"))
        assert fired.wait(15), "the per-second job never fired"
    finally:
        s.close()


def test_a_missed_run_runs_once_after_downtime(tmp_path: Path) -> None:
    """Down across three nightly fires: on start the job fires once (coalesced), not three times; a job first
    seen does not fire."""
    store = Store(tmp_path / "a.duckdb")
    now = dt.datetime(2026, 3, 10, 12, 0, tzinfo=dt.UTC).timestamp()
    three_days = now - 3 * 86_400
    store.execute("INSERT INTO last_fire VALUES (?, ?)", ["task:nightly", three_days])
    fired: list[tuple[str, float]] = []
    s = Schedule(store, lambda j, t: fired.append((j, t)), clock=lambda: now, start=False)
    change = s.reconcile(desired(nightly="0 3 * * *", fresh="0 3 * * *"))
    assert change.missed == ("task:nightly",)
    assert fired == [("task:nightly", dt.datetime(2026, 3, 8, 3, 0, tzinfo=dt.UTC).timestamp())]
    assert dict(store.query("SELECT job, at_ts FROM last_fire"))["task:nightly"] == now
    assert s.reconcile(desired(nightly="0 3 * * *", fresh="0 3 * * *")).missed == ()


def test_weekdays_count_from_sunday_as_in_cron() -> None:
    """`0 0 * * 0` fires on a Sunday (APScheduler's own crontab parser would pick Monday)."""
    nxt = CronTrigger("0 0 * * 0").next_after(dt.datetime(2026, 3, 10, tzinfo=dt.UTC))
    assert nxt.weekday() == 6
