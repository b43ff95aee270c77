"""A worker: leases runs of its roles from a queue and hands them to a Runner, a few at a time.

`drain()` runs until the queue has nothing ready (tests, `stratum task run`, benchmarks); `serve(stop)` polls
until `stop` is set (the daemon's agents service, `stratumd --worker`). Both are bounded by what is queued or
by the stop event, and a failing run never ends the loop (the runner records it).
"""

from __future__ import annotations

import concurrent.futures as cf
import threading
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field

from reconcilers.agents.queue import Queue
from reconcilers.agents.runner import Outcome, Runner

VISIBILITY = 300.0           # seconds a leased run stays invisible (longer than the default task timeout)


@dataclass
class Worker:
    """Lease, run, settle."""

    queue: Queue
    runner: Runner
    roles: Sequence[str]
    owner: str = field(default_factory=lambda: f"worker-{uuid.uuid4().hex[:8]}")
    visibility: float = VISIBILITY
    parallel: int = 1

    def run_once(self) -> Outcome | None:
        """Lease one ready run and run it; None when nothing is ready."""
        msg = self.queue.lease(self.roles, self.owner, self.visibility)
        return None if msg is None else self.runner.handle(msg)

    def drain(self, limit: int = 100_000) -> list[Outcome]:
        """Run ready runs until none is left (at most `limit`)."""
        out: list[Outcome] = []
        for _ in range(limit):
            done = self.run_once()
            if done is None:
                break
            out.append(done)
        return out

    def serve(self, stop: threading.Event, poll: float = 0.5) -> None:
        """Run until `stop` is set, `parallel` runs at a time, polling when idle."""
        with cf.ThreadPoolExecutor(max_workers=self.parallel, thread_name_prefix="agents-worker") as pool:
            slots = threading.Semaphore(self.parallel)
            while not stop.is_set():
                if not slots.acquire(timeout=poll):
                    continue
                msg = self.queue.lease(self.roles, self.owner, self.visibility)
                if msg is None:
                    slots.release()
                    stop.wait(poll)
                    continue
                fut = pool.submit(self.runner.handle, msg)
                fut.add_done_callback(lambda _f: slots.release())
