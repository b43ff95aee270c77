"""stratumd: the daemon's main loop.

1. Take the apply lock, open the index (rebuilding it from git when it was corrupt or missing).
2. Resolve runs a killed daemon left `running` (roll back by default, resume by setting).
3. Start the triggers (ref watcher, control socket, remote fetch timer) and the HTTP listener.
4. Loop: wake on a trigger or a timer; record new commits; run the newest unless applying is suspended or a
   deny window is active (then it waits, queued, and runs when that ends); check drift when due; serve
   queued control requests. All pipeline work happens on this one thread: the index has a single writer.
5. SIGHUP re-reads host settings (keeping the old ones when the new ones are broken). SIGTERM/SIGINT: the
   actions in flight finish and are checkpointed, nothing new starts, and the daemon stops.
"""

from __future__ import annotations

import concurrent.futures as cf
import os
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import fields
from datetime import UTC, datetime
from typing import Any

from daemon import log
from daemon.control.host_controls import HostControls, host_controls, merge_reload, refuse_manual
from daemon.control.windows import Gate, gate, next_change
from daemon.errors import IndexError_, SettingsError, SourceError, StratumError
from daemon.git.deliveries import DeliveryLog
from daemon.git.source import sanitize_url
from daemon.git.watch import RefWatcher, Wakeup
from daemon.git.webhook import WebhookEndpoint
from daemon.http.auth import DenialReporter, TokenStore
from daemon.http.descriptors import control_share
from daemon.http.limits import fd_budget
from daemon.http.server import HttpServer, build_app, listener_settings, reconciler_mounts
from daemon.index.read_models import events, runs, set_suspended, status
from daemon.index.rebuild import rebuild
from daemon.run.report import drift_to_list, plan_to_dict, run_to_dict
from daemon.run.runtime import Runtime, build
from daemon.service.control_socket import MAX_CONNECTIONS, ApiServer
from daemon.service.lifecycle import Notifier, Shutdown
from daemon.service.lock import ApplyLock, StartingMark
from daemon.service.readiness import Storage, storage_failure
from daemon.settings import Settings, effective, write_effective

REJECTION_EVENT_INTERVAL_S = 10.0
STOP_GRACE_S = 600.0   # how long systemd waits at SIGTERM for the actions in flight (commands time out at 300 s)
RUN_BOUND_S = 3600.0   # the longest a loop iteration (one run) may hold the main thread before the watchdog trips
START_WAIT_S = 30.0    # how long start-up waits out readers of the index (a CLI read, a backup script)


class Daemon:
    """One daemon for one repository branch and one data directory."""

    def __init__(self, settings: Settings, notifier: Notifier | None = None,
                 reload: Callable[[], Settings] | None = None) -> None:
        self.settings = settings
        self.controls = host_controls(settings)
        self._reload = reload
        self._config_existed = bool(settings.config_path and settings.config_path.exists())
        self.notifier = notifier or Notifier()
        self.shutdown = Shutdown()
        self.wake = Wakeup()
        self.jobs: queue.Queue[tuple[Callable[[], Any], cf.Future[Any]]] = queue.Queue()
        self.lock = ApplyLock(settings.data_dir, wait=START_WAIT_S)
        self.logger = log.get(repo=sanitize_url(settings.repo), branch=settings.branch)
        self.runtime: Runtime | None = None
        self.http: HttpServer | None = None
        self.http_tokens: TokenStore | None = None
        self.last_head: str | None = None
        self._branch_missing = False
        self._last_drift: set[str] = set()
        self.loops = 0                        # main-loop iterations: an idle daemon must not spin
        self.pending: str | None = None       # the newest commit recorded but not yet run (suspended, window)
        self._blocked_reason: tuple[str, str] | None = None
        self._rejections: dict[str, tuple[float, int]] = {}
        self._gate_cache: tuple[HostControls, Gate, datetime | None] | None = None
        self.storage = Storage(settings.data_dir)

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

            def job() -> Any:
                # Checked when the run starts (on the loop), not when queued: a run in flight may outlast a window.
                if not req.get("force"):
                    self._refuse_manual()
                result = rt.pipeline.run(rev, trigger=req.get("trigger", "cli"))
                if self.pending == result.revision and result.status == "succeeded":
                    self.pending = None
                return result
            return {"run": run_to_dict(self._submit(job))}

        def plan(req: dict[str, Any]) -> dict[str, Any]:
            rev = req.get("revision") or self.settings.branch
            return {"plan": plan_to_dict(self._submit(lambda: rt.pipeline.plan(rev)))}

        def notify(req: dict[str, Any]) -> dict[str, Any]:
            self.wake.ring(str(req.get("reason", "hook")))
            return {}

        def suspend(req: dict[str, Any]) -> dict[str, Any]:
            return dict(self._submit(lambda: self.set_suspended(True, str(req.get("reason") or ""),
                                                                  str(req.get("by") or ""))))

        def resume(req: dict[str, Any]) -> dict[str, Any]:
            return dict(self._submit(lambda: self.set_suspended(False, "", str(req.get("by") or ""))))

        return {
            "ping": lambda req: {"pid": os.getpid()},
            "notify": notify,
            "status": lambda req: {"status": self.status()},
            "log": lambda req: {"runs": runs(rt.index, int(req.get("limit", 20)), bool(req.get("actions")))},
            "events": lambda req: {"events": events(rt.index, int(req.get("limit", 50)))},
            "apply": apply,
            "rollback": lambda req: apply({**req, "trigger": "rollback"}),
            "plan": plan,
            "drift": lambda req: {"drift": self._submit(self.drift_report)},
            "suspend": suspend,
            "resume": resume,
            "windows": lambda req: {"gate": self._gate_dict()},
            "settings": lambda req: {"settings": effective(self.settings)},
        }

    # suspend, resume, windows ----------------------------------------------------------------------
    def set_suspended(self, on: bool, reason: str, by: str) -> dict[str, Any]:
        """Suspend (commits are recorded, nothing is applied) or resume applying; main thread only."""
        out = set_suspended(self._rt.index, on, reason, by, time.time())
        if out["changed"]:
            self.logger.info("suspended" if on else "resumed", by=by, reason=reason)
        if not on:
            self.wake.ring("resume")
        return {**out, "pending": self.pending}

    def _refuse_manual(self) -> None:
        refuse_manual(self._rt.index, self.controls.windows)

    def _gate_dict(self) -> dict[str, Any]:
        return self._gate().as_dict()

    def _gate(self) -> Gate:
        """The windows' verdict now. Cached until the next instant it can change: for windows as long as their
        own period, working out when a block ends walks many cron steps, and the loop asks on every wake."""
        now = datetime.now(UTC)
        cached = self._gate_cache
        if cached is not None and cached[0] is self.controls and (cached[2] is None or now < cached[2]):
            return cached[1]
        g = gate(self.controls.windows, now)
        flip = next_change(self.controls.windows, now) if self.controls.windows else None
        self._gate_cache = (self.controls, g, flip)
        return g


    @property
    def _rt(self) -> Runtime:
        assert self.runtime is not None
        return self.runtime

    def status(self) -> dict[str, Any]:
        """Status with Ready conditions, plus daemon facts."""
        extra = {"repository": sanitize_url(str(self.settings.repo)), "branch": self.settings.branch,
                 "daemon": {"pid": os.getpid(), "http_port": self.http.port if self.http else None,
                            "head": self.last_head, "loops": self.loops, "pending": self.pending,
                            "window": self._gate_dict(), **self.storage.as_dict()}}
        out = status(self._rt.index, self._rt.reconcilers, self._rt.unavailable, extra)
        if not self.storage.ready:
            # Nothing applies until the data directory takes writes again: every reconciler is not ready.
            for rec in out["reconcilers"].values():
                rec["conditions"] = [{"type": "Ready", "status": "False", "reason": "StorageUnavailable",
                                      "message": f"the data directory refuses writes: {self.storage.reason}"}]
        return out

    def _health(self) -> dict[str, Any]:
        try:
            applied = self._rt.index.get_state("last_applied_revision")
        except Exception as err:  # noqa: BLE001 health must answer even when the index cannot be read
            applied = None
            self._storage_failed(err)
        return {"ok": self.storage.ready, **self.storage.as_dict(), "last_applied_revision": applied}

    # drift -------------------------------------------------------------------------------------------
    def drift_report(self) -> list[dict[str, Any]]:
        """Drift of the last applied revision, as problem dicts."""
        rev = self._rt.index.get_state("last_applied_revision")
        if rev is None:
            return []
        return drift_to_list(self._rt.pipeline.plan(rev))

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
                blocked = self._blocked()
                if blocked:
                    self.logger.info("drift_correction_deferred", reason=blocked)
                else:
                    self._rt.pipeline.run(rev, trigger="drift")

    # the loop ----------------------------------------------------------------------------------------
    def start(self) -> None:
        """Steps 1-3 of the module docstring."""
        # Announced first: from now on readers wait for our socket instead of opening the index.
        mark = StartingMark(self.settings.data_dir)
        try:
            mark.set()
            self._start()
        except BaseException as err:
            self.stop()
            reason = storage_failure(err) if isinstance(err, Exception) else None
            if reason is not None and not isinstance(err, StratumError):
                raise IndexError_(f"the data directory {self.settings.data_dir} does not take writes ({reason})",
                                  hint="remount it read-write, free space or fix its permissions, then start "
                                       "again; `stratum status` and `stratum log` can still read it") from err
            raise
        finally:
            mark.clear()

    def _start(self) -> None:
        """Steps 1-3, with the starting mark set."""
        # The listener's settings first: an exposed address in clear or a bad tokens file stops the start
        # before anything is locked, opened or served.
        http, auth, self.http_tokens = listener_settings(self.settings.http_listen, self.settings.sections.get("http"),
                                       str(self.settings.config_path or ""), DenialReporter(self._http_denied))
        limits = fd_budget(http.limits)        # descriptors: the listeners' shares, the rest kept for our work
        self.lock.acquire()
        self.runtime = build(self.settings, index_wait=START_WAIT_S)
        rt = self.runtime
        if rt.index.rebuilt_reason:
            self.logger.warning("index_corrupt", message=rt.index.rebuilt_reason)
            self._guard(lambda: rebuild(rt.source, rt.pipeline))
        elif rt.index.get_state("last_seen_head") is None and rt.index.query("SELECT count(*) FROM runs")[0][0] == 0:
            # A reconciler failing to load the last good revision leaves it unknown, never the daemon down.
            self._guard(lambda: rebuild(rt.source, rt.pipeline))
        stopped = rt.index.get_state("stopped_run")
        resolved = rt.pipeline.resolve_interrupted(self.settings.on_interrupted)
        for result in resolved:
            self.logger.warning("interrupted_run_resolved", run_id=result.run_id, outcome=result.status)
        if stopped:
            rt.index.set_state("stopped_run", None)
        self.last_head = rt.index.get_state("last_seen_head")
        # Still owed a run: a commit recorded while suspended or in a deny window and never run, and the head
        # whose run a graceful stop interrupted (rolled back above: the stop was not its fault). A run a crash
        # interrupted stays rolled back, so a commit that kills the daemon cannot make it crash-loop.
        interrupted = any(r.run_id == stopped and r.revision == self.last_head for r in resolved)
        applied = rt.index.get_state("last_applied_revision")
        if self.last_head and (self.last_head != rt.index.get_state("last_attempted_revision")
                               or (interrupted and self.last_head != applied)):
            self.pending = self.last_head
        rt.pipeline.stop = self.shutdown.event
        self.api = ApiServer(self.settings.socket_path, self._handlers(),
                             max_connections=control_share(limits.fd_reserve, MAX_CONNECTIONS))
        self.api.start()
        mounts = reconciler_mounts(rt.reconcilers.values())
        hooks = WebhookEndpoint(lambda: self.controls.receivers, self._webhook_accepted, self._webhook_rejected,
                                DeliveryLog(self.settings.data_dir / "webhook-deliveries"))
        app = build_app(rt.pipeline.metrics, self._health, mounts, hooks.routes(), auth=auth)
        self.http = self._listen(app, http, limits)
        rt.pipeline.metrics.registry.register(self.http.stats)
        self.http.start()
        self.watcher = RefWatcher(rt.source.git_dir, self.settings.branch, self.wake) if not rt.source.remote else None
        if self.watcher:
            self.watcher.start()
        self._persist_settings()
        self.logger.info("started", data_dir=str(self.settings.data_dir), socket=str(self.settings.socket_path),
                         http_port=self.http.port, root=str(self.settings.local_root), pid=os.getpid())

    def _persist_settings(self) -> None:
        """Record the effective settings in the data directory, for CLI checks that must judge as we do."""
        try:
            write_effective(self.settings)
        except OSError as err:
            self.logger.warning("settings_not_recorded", message=f"{err.strerror}: {err.filename}")

    def _listen(self, app: Any, http: Any, limits: Any) -> HttpServer:
        """Bind the HTTP listener, or say which address is taken and which setting chooses another."""
        listen = self.settings.http_listen
        try:
            return HttpServer(listen, app, http, limits)
        except (OSError, ValueError, SettingsError) as raised:
            err = raised.__cause__ if isinstance(raised, SettingsError) and raised.__cause__ else raised
            why = err.strerror if isinstance(err, OSError) and err.strerror else str(err)
            where = str(self.settings.config_path) if self.settings.config_path and \
                self.settings.config_path.exists() else ""
            raise SettingsError(f"cannot listen for HTTP on {listen}: {why}", where=where,
                                hint="another process holds this address: stop it, or choose another with "
                                     "`http_listen = \"127.0.0.1:PORT\"` in stratumd.toml (or --http-listen; "
                                     "port 0 picks a free one)") from err

    # webhooks (called on the HTTP thread: only ring the loop or queue work for it) --------------------
    def _webhook_accepted(self, receiver: str, info: dict[str, Any]) -> None:
        self.logger.info("webhook", receiver=receiver, hook_event=info.get("event"), delivery=info.get("delivery"))
        self.wake.ring("webhook")

    def _webhook_rejected(self, receiver: str, reason: str, client: str) -> None:
        # Unauthenticated callers can send these at will: one event per receiver per interval, with a count,
        # so a flood neither grows the index nor floods the loop with wake-ups.
        now = time.monotonic()
        last, count = self._rejections.get(receiver, (0.0, 0))
        if last and now - last < REJECTION_EVENT_INTERVAL_S:
            self._rejections[receiver] = (last, count + 1)
            return
        self._rejections[receiver] = (now, 0)
        self.logger.warning("webhook_rejected", receiver=receiver, reason=reason, client=client, since_last=count)
        more = f"; {count} more refused since the last report" if count else ""
        future: cf.Future[Any] = cf.Future()
        self.jobs.put((lambda: self._rt.index.event("webhook_rejected", f"{reason} (from {client}){more}",
                                                    subject=receiver), future))
        self.wake.ring("api")

    def _http_denied(self, message: str, principal: str) -> None:
        """A refusal of the HTTP listener (already rate-limited): logged, and an event with the principal."""
        self.logger.warning("http_denied", message=message, principal=principal)
        future: cf.Future[Any] = cf.Future()
        self.jobs.put((lambda: self._rt.index.event("http_denied", message, subject=principal), future))
        self.wake.ring("api")

    # reload --------------------------------------------------------------------------------------------
    def reload(self) -> bool:
        """SIGHUP: re-read host settings; on any error keep the old ones and say why. True when reloaded."""
        self.notifier.reloading()
        try:
            if self._reload is None:
                raise SettingsError("this daemon was started without a settings source to reload")
            config = self.settings.config_path
            if config is not None and self._config_existed and not config.exists():
                raise SettingsError("the settings file is gone; keeping the settings it gave at start",
                                    where=str(config), hint="restore the file, then reload again")
            new, stuck = merge_reload(self.settings, self._reload())
            controls = host_controls(new)
            tokens = self.http_tokens.read() if self.http_tokens is not None else None   # revocations too
        except Exception as err:  # noqa: BLE001 a reload never stops the daemon: the old settings stay
            message = err.render() if isinstance(err, StratumError) else f"{type(err).__name__}: {err}"
            self.logger.error("reload_failed", message=message)
            self._guard(lambda: self._rt.index.event("reload_failed", f"old settings kept: {message}"))
            self.notifier.ready(self._status_line())
            return False
        changed = sorted(f.name for f in fields(new) if getattr(self.settings, f.name) != getattr(new, f.name))
        if stuck:
            self.logger.warning("restart_required", settings=stuck,
                                message="these settings take effect at the next start; the rest were applied")
        self.settings, self.controls = new, controls
        self._persist_settings()
        if self.http_tokens is not None and tokens is not None:
            self.http_tokens.replace(tokens)
        self._rt.pipeline.admission = controls.admission
        self.logger.info("settings_reloaded", changed=changed, restart_required=stuck)
        self.notifier.ready(self._status_line())
        self.wake.ring("reload")
        return True

    def _stopping(self) -> None:
        """At SIGTERM: STOPPING=1, and time for the actions in flight to finish (TimeoutStopSec is shorter)."""
        self.notifier.stopping()
        self.notifier.extend_timeout(STOP_GRACE_S)

    def serve(self, install_signals: bool = True) -> None:
        """Run until stopped."""
        if install_signals:
            # STOPPING=1 goes out at the signal, not after the action in flight: systemd then applies
            # TimeoutStopSec (extended by keepalive while that action finishes).
            self.shutdown.install(lambda: self.wake.ring("signal"), on_stop=self._stopping)
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
                if not self.storage.ready:
                    deadlines.append(self.storage.next_probe - now)
                if self.notifier.watchdog_interval:
                    deadlines.append(self.notifier.watchdog_interval)
                self._gate()
                flip = self._gate_cache[2] if self._gate_cache else None
                if flip is not None:
                    deadlines.append((flip - datetime.now(UTC)).total_seconds() + 0.05)
                finite = [x for x in deadlines if x != float("inf")]
                reasons = self.wake.wait(max(0.0, min(finite)) if finite else None)
                self.loops += 1
                if self.shutdown.stopping:
                    break
                # Work blocks this thread (a run, a fetch); the watchdog is petted meanwhile, up to a bound
                # past which a run counts as hung and systemd may restart the daemon.
                with self.notifier.keepalive(RUN_BOUND_S):
                    if self.shutdown.take_reload():
                        self.reload()
                    self._drain_jobs()
                    if rt.source.remote and (time.monotonic() >= next_fetch or "webhook" in reasons):
                        self._fetch()
                        next_fetch = time.monotonic() + self.settings.interval
                    if not self.storage.ready:
                        self._guard(self._probe_storage)
                    if self.storage.ready:
                        self._guard(lambda r=reasons: self._maybe_run(r))  # type: ignore[misc]
                    if self.storage.ready:
                        self._run_pending(reasons)
                    if self.storage.ready and time.monotonic() >= next_drift:
                        self._guard(self._drift_check)
                        next_drift = time.monotonic() + self.settings.drift_interval
                self.notifier.watchdog()
        finally:
            self.stop()

    def _guard(self, fn: Callable[[], Any]) -> None:
        try:
            fn()
        except Exception as err:
            if self._storage_failed(err):
                return
            if isinstance(err, StratumError):
                self.logger.error("error", message=err.render())
            else:
                self.logger.exception("loop_error")

    # storage readiness (see daemon/service/readiness.py) ------------------------------------------------------
    def _storage_failed(self, err: BaseException) -> bool:
        """True when `err` is the data directory refusing writes: the daemon is then not ready, not gone."""
        reason = storage_failure(err)
        if reason is None:
            return False
        if self.storage.failed(reason):
            self.logger.error("not_ready", reason=reason, data_dir=str(self.settings.data_dir),
                              message="the data directory does not take writes; applying is held until it does")
            self.notifier.status(f"not ready: {reason}")
        return True

    def _probe_storage(self) -> None:
        """Not ready: try a write; when it works, finalize what the failure left running and run the head."""
        if not self.storage.due():
            return
        was, since = self.storage.reason, self.storage.since
        if not self.storage.probe(self._rt.index):
            return
        self.logger.info("ready_again", was=was, down_s=round(time.time() - since, 1))
        self._guard(lambda: self._rt.index.event("storage_recovered", f"the data directory takes writes again "
                                                 f"(it failed: {was})"))
        for result in self._rt.pipeline.resolve_interrupted(self.settings.on_interrupted):
            self.logger.warning("interrupted_run_resolved", run_id=result.run_id, outcome=result.status)
        if self.last_head and self.last_head != self._rt.index.get_state("last_applied_revision"):
            self.pending = self.last_head
        self.notifier.status(self._status_line())
        self.wake.ring("storage")

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
        except (StratumError, OSError) as err:
            # An OSError (EMFILE, EIO) is the host's trouble, not the commit's: log it and look again shortly,
            # since no trigger may come for a commit already pushed.
            self.logger.error("source_error", message=err.render() if isinstance(err, StratumError) else str(err))
            if isinstance(err, OSError):
                retry = threading.Timer(1.0, self.wake.ring, ("retry",))
                retry.daemon = True
                retry.start()
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
        if self.pending and self.pending != head:
            rt.index.set_revision_status(self.pending, "superseded")
        self.last_head = head
        self.pending = head
        rt.index.set_state("last_seen_head", head)

    def _blocked(self) -> str:
        """Why applying is blocked now (suspended, a window), or ""."""
        index = self._rt.index
        if index.get_state("suspended") == "true":
            reason = index.get_state("suspended_reason") or ""
            return "applying is suspended" + (f" ({reason})" if reason else "") + "; `stratum resume` runs it"
        g = self._gate()
        return g.reason if g.blocked else ""

    def _run_pending(self, reasons: list[str]) -> None:
        """Run the pending commit unless applying is suspended or a window blocks it (then it stays queued)."""
        rt, head = self._rt, self.pending
        if head is None:
            return
        blocked = self._blocked()
        if blocked:
            if (head, blocked) != self._blocked_reason:
                self.logger.info("queued", revision=head[:12], reason=blocked)
                rt.index.set_revision_status(head, "queued")
                rt.index.event("queued", f"{head[:12]} queued: {blocked}", revision=head)
                self._blocked_reason = (head, blocked)
                self.notifier.status(f"{self._status_line()}; {head[:12]} queued: {blocked}")
            return
        self._blocked_reason = None
        self.pending = None
        trigger = ",".join(sorted(set(reasons) - {"api"})) or "poll"
        self._guard(lambda: rt.pipeline.run(head, trigger=trigger, incremental=True))
        self.notifier.status(self._status_line())

    def _status_line(self) -> str:
        applied = self._rt.index.get_state("last_applied_revision")
        return f"applied {applied[:12]}" if applied else "no revision applied yet"

    def stop(self) -> None:
        """Stop listeners and release everything (the run in flight already finished: one thread)."""
        self.notifier.stopping()
        # Each step on its own: a data directory that refuses writes (the socket's unlink, the index's last
        # flush) must not keep the rest from being released, nor end the process with a traceback.
        steps: list[tuple[str, Callable[[], Any] | None]] = [
            ("watcher", getattr(self, "watcher", None) and self.watcher.stop),  # type: ignore[union-attr]
            ("api", getattr(self, "api", None) and self.api.stop),
            ("http", self.http.stop if self.http else None),
            ("index", self.runtime.close if self.runtime else None),
            ("lock", self.lock.release),
        ]
        for name, step in steps:
            if step is None:
                continue
            try:
                step()
            except Exception as err:  # noqa: BLE001 reported; the other steps still run
                self.logger.error("stop_step_failed", step=name, message=f"{type(err).__name__}: {err}")
        self.logger.info("stopped")
