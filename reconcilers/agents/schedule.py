"""Schedules: APScheduler 3.x jobs reconciled from the declarations in force, and missed runs after downtime.

APScheduler runs its own thread (BackgroundScheduler) rather than the daemon's Scheduler port: the port offers
one-shot timers with no job identity, while a schedule needs jobs that are added, changed and removed by id
(never duplicated), misfire handling and coalescing, which APScheduler does. Its jobs only enqueue a run (a
DuckDB insert), so its thread never does task work; a failing job is logged by APScheduler and the scheduler
keeps running.

Fire times come from croniter through `CronTrigger`, the same library validate uses, so what validate accepted
is what fires (APScheduler's own crontab parser counts weekdays from Monday, cron from Sunday). Each fire is
written to `last_fire`; at start a cron job whose next fire after its last recorded one is already past runs
once (coalesced, however many were missed).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from apscheduler.schedulers.background import BackgroundScheduler  # type: ignore[import-untyped]
from apscheduler.triggers.base import BaseTrigger  # type: ignore[import-untyped]
from apscheduler.triggers.interval import IntervalTrigger  # type: ignore[import-untyped]
from croniter import croniter  # type: ignore[import-untyped]  # no types

from reconcilers.agents.model import AgentsDesired
from reconcilers.agents.store import Store


class CronTrigger(BaseTrigger):  # type: ignore[misc]  # APScheduler ships no types
    """A cron expression evaluated by croniter (5 fields, or 6 with seconds first), in UTC."""

    def __init__(self, expr: str) -> None:
        self.expr = expr
        self._six = len(expr.split()) == 6

    def next_after(self, when: dt.datetime) -> dt.datetime:
        """The first fire time strictly after `when`."""
        it = croniter(self.expr, when.astimezone(dt.UTC), second_at_beginning=True) if self._six \
            else croniter(self.expr, when.astimezone(dt.UTC))
        out: dt.datetime = it.get_next(dt.datetime)
        return out

    def get_next_fire_time(self, previous_fire_time: dt.datetime | None, now: dt.datetime) -> dt.datetime:
        """APScheduler's hook: the next fire after the previous one (or after now)."""
        return self.next_after(previous_fire_time or now - dt.timedelta(microseconds=1))

    def __str__(self) -> str:
        return f"cron[{self.expr}]"


@dataclass(frozen=True, slots=True)
class Job:
    """One scheduled thing: a cron task or pipeline, or a check's interval."""

    id: str                                   # "task:<id>", "pipeline:<id>", "check:<id>"
    kind: str                                 # cron | interval
    when: str                                 # the cron expression, or the interval in seconds
    digest: str                               # what tells a change


def desired_jobs(desired: AgentsDesired) -> dict[str, Job]:
    """The jobs the declarations call for."""
    out: dict[str, Job] = {}
    for prefix, items in (("task", desired.tasks), ("pipeline", desired.pipelines)):
        for item_id, item in items.items():
            if item.trigger.kind == "cron" and item.trigger.schedule:
                jid = f"{prefix}:{item_id}"
                out[jid] = Job(jid, "cron", item.trigger.schedule, _digest(item.trigger.schedule, item_id))
    for cid, check in desired.checks.items():
        jid = f"check:{cid}"
        out[jid] = Job(jid, "interval", str(check.interval), _digest(str(check.interval), cid))
    return out


def _digest(*parts: str) -> str:
    return hashlib.sha256(json.dumps(parts).encode()).hexdigest()[:16]


@dataclass(frozen=True, slots=True)
class Change:
    """What a reconcile did: job ids added, changed, removed, and missed runs fired."""

    added: tuple[str, ...] = ()
    changed: tuple[str, ...] = ()
    removed: tuple[str, ...] = ()
    missed: tuple[str, ...] = ()


class Schedule:
    """The APScheduler jobs of the declarations in force. `fire(job_id, scheduled_at)` is called per fire."""

    def __init__(self, store: Store, fire: Callable[[str, float], None], clock: Callable[[], float] = time.time,
                 *, start: bool = True) -> None:
        self.store = store
        self.fire = fire
        self.clock = clock
        self.scheduler = BackgroundScheduler(timezone=dt.UTC, job_defaults={
            "coalesce": True, "max_instances": 1, "misfire_grace_time": 3600})
        self.jobs: dict[str, Job] = {}
        self._caught_up = False
        if start:
            self.scheduler.start()

    def reconcile(self, desired: AgentsDesired) -> Change:
        """Make the jobs match `desired`: add, change (reschedule), remove; never two jobs for one id."""
        want = desired_jobs(desired)
        added = [j for j in want if j not in self.jobs]
        changed = [j for j in want if j in self.jobs and want[j].digest != self.jobs[j].digest]
        removed = [j for j in self.jobs if j not in want]
        for jid in removed:
            self._remove(jid)
        for jid in added + changed:
            job = want[jid]
            trigger = CronTrigger(job.when) if job.kind == "cron" else IntervalTrigger(seconds=float(job.when),
                                                                                       timezone=dt.UTC)
            # A check probes at once, then on its interval (a new daemon shows check states within seconds).
            first = {"next_run_time": dt.datetime.now(dt.UTC)} if job.kind == "interval" else {}
            self.scheduler.add_job(self._run, trigger, id=jid, args=[jid], replace_existing=True, name=jid, **first)
            self.jobs[jid] = job
        missed: list[str] = []
        if not self._caught_up:
            missed = self.catch_up()
            self._caught_up = True
        return Change(tuple(sorted(added)), tuple(sorted(changed)), tuple(sorted(removed)), tuple(missed))

    def _remove(self, jid: str) -> None:
        try:
            self.scheduler.remove_job(jid)
        except Exception:  # noqa: BLE001 JobLookupError: already gone; the map is the truth
            pass
        self.jobs.pop(jid, None)

    def catch_up(self) -> list[str]:
        """Fire once each cron job whose next fire after its recorded last fire is past (downtime)."""
        now = self.clock()
        last = dict(self.store.query("SELECT job, at_ts FROM last_fire"))
        out: list[str] = []
        fresh: list[str] = []
        for jid, job in sorted(self.jobs.items()):
            if job.kind != "cron":
                continue
            if jid not in last:
                fresh.append(jid)               # first seen: nothing was missed, start counting from now
                continue
            due = CronTrigger(job.when).next_after(dt.datetime.fromtimestamp(float(last[jid]), dt.UTC))
            if due.timestamp() <= now:
                out.append(jid)
                self._run(jid, due.timestamp())
        if fresh:
            # One statement for all of them: a row at a time costs ~10 ms each here (1,000 jobs: 20 s).
            self.store.execute("INSERT OR REPLACE INTO last_fire SELECT unnest(?::VARCHAR[]), ?", [fresh, now])
        return out

    def _run(self, jid: str, scheduled: float | None = None) -> None:
        when = self.clock() if scheduled is None else scheduled
        self._mark(jid, self.clock())
        self.fire(jid, when)

    def _mark(self, jid: str, at: float) -> None:
        self.store.execute("INSERT OR REPLACE INTO last_fire VALUES (?, ?)", [jid, at])

    def next_fires(self) -> Mapping[str, Any]:
        """Job id -> next fire time (unix seconds, None when paused)."""
        now = dt.datetime.now(dt.UTC)
        out: dict[str, Any] = {}
        for j in self.scheduler.get_jobs():
            # A scheduler not started (a CLI process) has pending jobs without a next run time: ask the trigger.
            nxt = getattr(j, "next_run_time", None) or j.trigger.get_next_fire_time(None, now)
            out[j.id] = nxt.timestamp() if nxt else None
        return out

    def close(self) -> None:
        """Stop the scheduler thread."""
        if self.scheduler.running:
            self.scheduler.shutdown(wait=False)
