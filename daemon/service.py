"""stratumd: the daemon's main loop.

1. Take the apply lock, open the index (rebuilding it from git when it was corrupt or missing).
2. Resolve runs a killed daemon left `running` (roll back by default, resume by setting).
3. Start the triggers (ref watcher, control socket, remote fetch timer) and the HTTP listener.
4. Loop: wake on a trigger or a timer; record new commits; run the newest; check drift when due; serve
   queued control requests. All pipeline work happens on this one thread: the index has a single writer.
5. On SIGTERM/SIGINT finish (or checkpoint) the run in flight, then stop.
"""

from __future__ import annotations

import concurrent.futures as cf
import os
import queue
import time
from collections.abc import Callable
from typing import Any

from daemon import log
from daemon.api import ApiServer
from daemon.errors import SourceError, StratumError
from daemon.http import HttpServer, build_app, reconciler_mounts
from daemon.lifecycle import Notifier, Shutdown
from daemon.lock import ApplyLock
from daemon.rebuild import rebuild
from daemon.report import plan_to_dict, run_to_dict
from daemon.runtime import Runtime, build
from daemon.settings import Settings
from daemon.source import sanitize_url
from daemon.status import events, runs, status
from daemon.watch import RefWatcher, Wakeup


class Daemon:
    """One daemon for one repository branch and one data directory."""

    def __init__(self, settings: Settings, notifier: Notifier | None = None) -> None:
        self.settings = settings
        self.notifier = notifier or Notifier()
        self.shutdown = Shutdown()
        self.wake = Wakeup()
        self.jobs: queue.Queue[tuple[Callable[[], Any], cf.Future[Any]]] = queue.Queue()
        self.lock = ApplyLock(settings.data_dir)
        self.logger = log.get(repo=sanitize_url(settings.repo), branch=settings.branch)
        self.runtime: Runtime | None = None
        self.http: HttpServer | None = None
        self.last_head: str | None = None
        self._branch_missing = False
        self._last_drift: set[str] = set()
        self.loops = 0                        # main-loop iterations: an idle daemon must not spin

    # control API handlers --------------------------------------------------------------------------
    def _submit(self, fn: Callable[[], Any], timeout: float = 3600) -> Any:
        future: cf.Future[Any] = cf.Future()
        self.jobs.put((fn, future))
        self.wake.ring("api")
        return future.result(timeout=timeout)

    def _handlers(self) -> dict[str, Callable[[dict[str, Any]], dict[str, Any]]]:
        rt = self._rt

        def apply(req: dict[str, Any]) -> dict[str, Any]:
            rev = req.get("revision") or self.settings.branch
            return {"run": run_to_dict(self._submit(lambda: rt.pipeline.run(rev, trigger=req.get("trigger", "cli"))))}

        def plan(req: dict[str, Any]) -> dict[str, Any]:
            rev = req.get("revision") or self.settings.branch
            return {"plan": plan_to_dict(self._submit(lambda: rt.pipeline.plan(rev)))}

        def notify(req: dict[str, Any]) -> dict[str, Any]:
            self.wake.ring(str(req.get("reason", "hook")))
            return {}

        return {
            "ping": lambda req: {"pid": os.getpid()},
            "notify": notify,
            "status": lambda req: {"status": self.status()},
            "log": lambda req: {"runs": runs(rt.index, int(req.get("limit", 20)))},
            "events": lambda req: {"events": events(rt.index, int(req.get("limit", 50)))},
            "apply": apply,
            "rollback": lambda req: apply({**req, "trigger": "rollback"}),
            "plan": plan,
            "drift": lambda req: {"drift": self._submit(self.drift_report)},
        }

    @property
    def _rt(self) -> Runtime:
        assert self.runtime is not None
        return self.runtime

    def status(self) -> dict[str, Any]:
        """Status with Ready conditions, plus daemon facts."""
        extra = {"daemon": {"pid": os.getpid(), "http_port": self.http.port if self.http else None,
                            "head": self.last_head, "loops": self.loops}}
        return status(self._rt.index, self._rt.reconcilers, self._rt.unavailable, extra)

    def _health(self) -> dict[str, Any]:
        return {"ok": True, "last_applied_revision": self._rt.index.get_state("last_applied_revision")}

    # drift -------------------------------------------------------------------------------------------
    def drift_report(self) -> list[dict[str, Any]]:
        """Drift of the last applied revision, as problem dicts."""
        rev = self._rt.index.get_state("last_applied_revision")
        if rev is None:
            return []
        report = self._rt.pipeline.plan(rev)
        return [p.as_dict() for p in report.drift]

    def _drift_check(self) -> None:
        found = self.drift_report()
        self._rt.pipeline.metrics.drift.set(len(found))
        # Events only when something changed: drift already reported at the last check is not repeated.
        keys = {f"{p['path']}:{p['message']}" for p in found}
        for p in found:
            if f"{p['path']}:{p['message']}" not in self._last_drift:
                self._rt.index.event("drift", p["message"], reconciler=p["reconciler"], subject=p["path"])
        self._last_drift = keys
        if found:
            self.logger.info("drift", resources=len(found))
            rev = self._rt.index.get_state("last_applied_revision")
            if rev and any("policy correct" in p["message"] for p in found):
                self._rt.pipeline.run(rev, trigger="drift")

    # the loop ----------------------------------------------------------------------------------------
    def start(self) -> None:
        """Steps 1-3 of the module docstring."""
        self.lock.acquire()
        self.runtime = build(self.settings)
        rt = self.runtime
        if rt.index.rebuilt_reason:
            self.logger.warning("index_corrupt", message=rt.index.rebuilt_reason)
            rebuild(rt.source, rt.pipeline)
        elif rt.index.get_state("last_seen_head") is None and rt.index.query("SELECT count(*) FROM runs")[0][0] == 0:
            rebuild(rt.source, rt.pipeline)
        for result in rt.pipeline.resolve_interrupted(self.settings.on_interrupted):
            self.logger.warning("interrupted_run_resolved", run_id=result.run_id, outcome=result.status)
        self.last_head = rt.index.get_state("last_seen_head")
        self.api = ApiServer(self.settings.socket_path, self._handlers())
        self.api.start()
        mounts = reconciler_mounts(rt.reconcilers.values())
        self.http = HttpServer(self.settings.http_listen, build_app(rt.pipeline.metrics, self._health, mounts))
        self.http.start()
        self.watcher = RefWatcher(rt.source.git_dir, self.settings.branch, self.wake) if not rt.source.remote else None
        if self.watcher:
            self.watcher.start()
        self.logger.info("started", data_dir=str(self.settings.data_dir), socket=str(self.settings.socket_path),
                         http_port=self.http.port, root=str(self.settings.local_root), pid=os.getpid())

    def serve(self, install_signals: bool = True) -> None:
        """Run until stopped."""
        if install_signals:
            self.shutdown.install(lambda: self.wake.ring("signal"))
        self.start()
        rt = self._rt
        self.notifier.ready(self._status_line())
        next_fetch = 0.0
        next_drift = time.monotonic() + self.settings.drift_interval if self.settings.drift_interval else float("inf")
        self.wake.ring("start")
        try:
            while not self.shutdown.stopping:
                now = time.monotonic()
                deadlines = [next_drift - now]
                if rt.source.remote:
                    deadlines.append(next_fetch - now)
                if self.notifier.watchdog_interval:
                    deadlines.append(self.notifier.watchdog_interval)
                finite = [x for x in deadlines if x != float("inf")]
                reasons = self.wake.wait(max(0.0, min(finite)) if finite else None)
                self.loops += 1
                if self.shutdown.stopping:
                    break
                self._drain_jobs()
                if rt.source.remote and (time.monotonic() >= next_fetch or "webhook" in reasons):
                    self._fetch()
                    next_fetch = time.monotonic() + self.settings.interval
                self._maybe_run(reasons)
                if time.monotonic() >= next_drift:
                    self._guard(self._drift_check)
                    next_drift = time.monotonic() + self.settings.drift_interval
                self.notifier.watchdog()
        finally:
            self.stop()

    def _guard(self, fn: Callable[[], Any]) -> None:
        try:
            fn()
        except StratumError as err:
            self.logger.error("error", message=err.render())
        except Exception:
            self.logger.exception("loop_error")

    def _drain_jobs(self) -> None:
        while True:
            try:
                fn, future = self.jobs.get_nowait()
            except queue.Empty:
                return
            try:
                future.set_result(fn())
            except Exception as err:  # noqa: BLE001 handed to the waiting API caller
                future.set_exception(err)

    def _fetch(self) -> None:
        try:
            self._rt.source.fetch()
        except SourceError as err:
            self.logger.warning("fetch_failed", message=err.what)
            self._rt.index.event("fetch_failed", err.what)

    def _maybe_run(self, reasons: list[str]) -> None:
        rt = self._rt
        try:
            head = rt.source.head()
        except StratumError as err:
            self.logger.error("source_error", message=err.render())
            return
        if head is None:
            if not self._branch_missing:
                self._branch_missing = True
                msg = f"branch {self.settings.branch} does not exist; the last applied revision stays in force"
                self.logger.warning("branch_missing", message=msg)
                rt.index.event("branch_missing", msg)
            return
        self._branch_missing = False
        if head == self.last_head:
            return
        commits = rt.source.new_commits(self.last_head, head)
        rt.index.record_commits(commits)
        rt.pipeline.metrics.commits.inc(len(commits))
        if self.last_head is not None and not rt.source.is_ancestor(self.last_head, head):
            msg = f"history rewritten: {self.last_head[:12]} is not an ancestor of {head[:12]} (force push)"
            self.logger.warning("history_rewritten", message=msg)
            rt.index.event("history_rewritten", msg, revision=head)
        for c in commits[:-1]:
            rt.index.set_revision_status(c.id, "superseded")
        self.last_head = head
        rt.index.set_state("last_seen_head", head)
        if rt.index.get_state("suspended") == "true":
            self.logger.info("suspended", revision=head[:12])
            return
        trigger = ",".join(sorted(set(reasons) - {"api"})) or "poll"
        self._guard(lambda: rt.pipeline.run(head, trigger=trigger, incremental=True))
        self.notifier.status(self._status_line())

    def _status_line(self) -> str:
        applied = self._rt.index.get_state("last_applied_revision")
        return f"applied {applied[:12]}" if applied else "no revision applied yet"

    def stop(self) -> None:
        """Stop listeners and release everything (the run in flight already finished: one thread)."""
        self.notifier.stopping()
        if getattr(self, "watcher", None):
            self.watcher.stop()  # type: ignore[union-attr]
        if getattr(self, "api", None):
            self.api.stop()
        if self.http:
            self.http.stop()
        if self.runtime:
            self.runtime.close()
        self.lock.release()
        self.logger.info("stopped")
