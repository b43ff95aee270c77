"""A worker on another machine: `stratumd --worker --role devops --queue-url nats://host:4222`.

It has no checkout of the repository: the declarations in force come from the daemon through JetStream's KV
bucket STRATUM_TEAM (re-read every few seconds), runs come from the role's durable consumer, and its own
execution records go to `<data-dir>/agents-worker.duckdb` (the run's outcome is shared through the results
bucket). Each record is also published to the stream STRATUM_EXECUTIONS (`Outbox`); the daemon's agents service
records it in its own DuckDB file once (by execution id) and writes its execution node. A record whose publish
failed (the server away) stays unshipped in the worker's file and is published again by the next sweep (at
start and every few seconds): at-least-once, deduplicated by id on the daemon's side. SIGTERM or SIGINT stops
it after the runs in hand (a run it leaves half done is redelivered after the visibility timeout, and its
idempotency key keeps it from acting twice).
"""

from __future__ import annotations

import signal
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import structlog

from reconcilers.agents.model import AgentsDesired, AgentSettings
from reconcilers.agents.natsqueue import NatsQueue
from reconcilers.agents.retention import purge
from reconcilers.agents.runner import Outcome, Runner
from reconcilers.agents.snapshot import team_from_json
from reconcilers.agents.store import Store
from reconcilers.agents.worker import Worker
from reconcilers.errors import SettingsError

log = structlog.get_logger("stratum.agents.worker")
TEAM_REFRESH = 5.0
TIDY_BEATS = 720             # team refreshes between two purges of the worker's file (an hour)
SWEEP_BATCH = 200            # unshipped records published per sweep
MAX_OUTPUT = 1500            # characters of output shipped (what an execution node quotes)
_TEXT = {"id": 64, "message": 200, "task": 200, "task_type": 200, "role": 64, "agent": 200, "provider": 200,
         "trigger": 64, "summary": 500, "error": 2000, "rule": 200, "explain": 4000}
_NUMBERS = {"started": float, "finished": float, "tokens_in": int, "tokens_out": int, "cost": float,
            "attempt": int, "quality": float}
RECORDED = ("succeeded", "failed", "skipped", "blocked")


def record_body(out: Outcome | Mapping[str, Any]) -> dict[str, Any]:
    """The shipped form of an execution: the fields the store keeps, cut as it cuts them, and the end of the
    output (already scrubbed of secrets by the runner; absent for a row read back from the store)."""
    row = {name: getattr(out, name) for name in (*_TEXT, *_NUMBERS, "outcome", "output")} \
        if isinstance(out, Outcome) else dict(out)
    body: dict[str, Any] = {k: str(row.get(k) or "")[:n] for k, n in _TEXT.items()}
    body.update({k: kind(row.get(k) or 0) for k, kind in _NUMBERS.items()})
    body["finished"] = body["finished"] or time.time()
    body["outcome"] = str(row.get("outcome") or "failed")
    body["output"] = str(row.get("output") or "")[-MAX_OUTPUT:]
    return body


def outcome_from(body: Any) -> Outcome:
    """An Outcome from a shipped record (anyone who may publish on the server could send one: every field is
    checked and cut); ValueError when it is not a record."""
    if not isinstance(body, dict) or not isinstance(body.get("id"), str) or not body["id"]:
        raise ValueError("not an execution record (no id)")
    if body.get("outcome") not in RECORDED:
        raise ValueError(f"execution {body['id'][:64]!r}: outcome {str(body.get('outcome'))[:40]!r} is not recorded")
    fields: dict[str, Any] = {k: str(body.get(k) or "")[:n] for k, n in _TEXT.items()}
    for k, kind in _NUMBERS.items():
        value = body.get(k) or 0
        if not isinstance(value, int | float) or isinstance(value, bool):
            raise ValueError(f"execution {fields['id']!r}: {k} is not a number")
        fields[k] = kind(value)
    return Outcome(**fields, outcome=body["outcome"], output=str(body.get("output") or "")[-MAX_OUTPUT:])


@dataclass
class Outbox:
    """Ships this worker's execution records to the daemon through the queue's executions stream."""

    store: Store
    queue: NatsQueue

    def ship(self, out: Outcome) -> None:
        """Publish one just-recorded execution and mark it shipped (a failure leaves it to the sweep)."""
        try:
            self.queue.publish_execution(record_body(out))
        except Exception as err:  # noqa: BLE001 the record stands in the worker's file; the sweep publishes it
            log.warning("agents.worker_ship_failed", execution=out.id, error=f"{type(err).__name__}: {err}"[:300])
            return
        self.store.execute("INSERT OR IGNORE INTO shipped VALUES (?)", [out.id])

    def sweep(self, limit: int = SWEEP_BATCH) -> int:
        """Publish the recorded executions not shipped yet (oldest first, at most `limit`); how many."""
        rows = self.store.dicts("SELECT * FROM executions WHERE outcome IN ('succeeded', 'failed', 'skipped', "
                                "'blocked') AND id NOT IN (SELECT id FROM shipped) ORDER BY finished LIMIT ?",
                                [limit])
        for row in rows:
            self.queue.publish_execution(record_body(row))
            self.store.execute("INSERT OR IGNORE INTO shipped VALUES (?)", [row["id"]])
        return len(rows)

    def tidy(self, settings: AgentSettings) -> int:
        """The worker's own retention (as the daemon's, from the declarations): ship what is due, then purge by
        age and count; marks of removed records go too. How many records went."""
        self.sweep()
        gone = purge(self.store, settings.retention_days, settings.retention_count)
        self.store.execute("DELETE FROM shipped WHERE id NOT IN (SELECT id FROM executions)")
        return gone


def serve_worker(data_dir: Path, roles: Sequence[str], queue_url: str, *, stop: threading.Event | None = None,
                 ) -> int:
    """Serve runs of `roles` until stopped; the exit code."""
    if not roles:
        raise SettingsError("a worker needs at least one --role", hint="stratumd --worker --role devops ...")
    if not queue_url.startswith(("nats://", "tls://")):
        raise SettingsError(f"--queue-url {queue_url!r} is not a NATS URL", hint="nats://host:4222")
    stop = stop or threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        if threading.current_thread() is threading.main_thread():
            signal.signal(sig, lambda *_: stop.set())
    queue = NatsQueue(queue_url)
    store = Store(data_dir / "agents-worker.duckdb")
    runner: Runner | None = None
    try:
        runner = Runner(store, queue, AgentsDesired(), data_dir / "agents" / "work")
        outbox = Outbox(store, queue)
        runner.recorded = outbox.ship           # a failure is logged; the record stays for the next sweep
        seen = ""

        def refresh() -> None:
            nonlocal seen
            text = queue.get_team() or ""
            if text and text != seen:
                runner.team, seen = team_from_json(text), text
                queue.visibility = runner.team.settings.visibility     # the consumers' ack wait
                log.info("agents.worker_team", revision=runner.team.revision[:12], agents=len(runner.team.agents))

        shipped = outbox.sweep()
        if shipped:
            log.info("agents.worker_shipped", records=shipped)
        refresh()
        while not seen and not stop.wait(1.0):         # no declarations yet: the daemon has not shared them
            refresh()
        outbox.tidy(runner.team.settings)
        worker = Worker(queue, runner, tuple(roles), visibility=queue.visibility)
        log.info("agents.worker_started", roles=list(roles), queue=queue_url.split("@")[-1])
        ticker = threading.Thread(target=lambda: _tick(stop, refresh, outbox, runner), daemon=True)
        ticker.start()
        worker.serve(stop, poll=0.2)
        return 0
    finally:
        if runner is not None:
            runner.close()
        queue.close()
        store.close()


def _tick(stop: threading.Event, refresh: Callable[[], None], outbox: Outbox, runner: Runner) -> None:
    beats = 0
    while not stop.wait(TEAM_REFRESH):
        beats += 1
        try:
            refresh()
            if beats % TIDY_BEATS == 0:
                outbox.tidy(runner.team.settings)
            else:
                outbox.sweep()
        except Exception:
            log.exception("agents.worker_refresh_failed")
