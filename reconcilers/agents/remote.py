"""A worker on another machine: `stratumd --worker --role devops --queue-url nats://host:4222`.

It has no checkout of the repository: the declarations in force come from the daemon through JetStream's KV
bucket STRATUM_TEAM (re-read every few seconds), runs come from the role's durable consumer, and its own
execution records go to `<data-dir>/agents-worker.duckdb` (the run's outcome is shared through the results
bucket). SIGTERM or SIGINT stops it after the runs in hand (a run it leaves half done is redelivered after the
visibility timeout, and its idempotency key keeps it from acting twice).
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Callable, Sequence
from pathlib import Path

import structlog

from reconcilers.agents.model import AgentsDesired
from reconcilers.agents.natsqueue import NatsQueue
from reconcilers.agents.runner import Runner
from reconcilers.agents.snapshot import team_from_json
from reconcilers.agents.store import Store
from reconcilers.agents.worker import Worker
from reconcilers.errors import SettingsError

log = structlog.get_logger("stratum.agents.worker")
TEAM_REFRESH = 5.0


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
        seen = ""

        def refresh() -> None:
            nonlocal seen
            text = queue.get_team() or ""
            if text and text != seen:
                runner.team, seen = team_from_json(text), text
                queue.visibility = runner.team.settings.visibility     # the consumers' ack wait
                log.info("agents.worker_team", revision=runner.team.revision[:12], agents=len(runner.team.agents))

        refresh()
        while not seen and not stop.wait(1.0):         # no declarations yet: the daemon has not shared them
            refresh()
        worker = Worker(queue, runner, tuple(roles), visibility=queue.visibility)
        log.info("agents.worker_started", roles=list(roles), queue=queue_url.split("@")[-1])
        ticker = threading.Thread(target=lambda: _tick(stop, refresh), daemon=True)
        ticker.start()
        worker.serve(stop, poll=0.2)
        return 0
    finally:
        if runner is not None:
            runner.close()
        queue.close()
        store.close()


def _tick(stop: threading.Event, refresh: Callable[[], None]) -> None:
    while not stop.wait(TEAM_REFRESH):
        try:
            refresh()
        except Exception:
            log.exception("agents.worker_refresh_failed")
