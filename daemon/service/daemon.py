"""stratumd: the daemon's main loop.

1. Take the apply lock, open the index (rebuilding it from git when it was corrupt or missing).
2. Resolve runs a killed daemon left `running` (roll back by default, resume by setting).
3. Start the triggers (ref watcher, control socket, remote fetch timer) and the HTTP listener.
4. Loop: wake on a trigger or a timer; record new commits; run the newest unless applying is suspended or a
   deny window is active (then it waits, queued, and runs when that ends); check drift when due; serve
   queued control requests. All pipeline work happens on this one thread: the index has a single writer.
5. SIGHUP re-reads host settings (keeping the old ones when the new ones are broken). SIGTERM/SIGINT: the
   actions in flight finish and are checkpointed, nothing new starts, and the daemon stops.

The pieces the loop composes live beside it: recovery.py (step 2), commits.py (what is owed a run), gate.py
(suspension and windows), drift.py, handlers.py (the control socket's operations), refusals.py (rate-limited
refusal events from the HTTP thread), reload.py (SIGHUP).
"""

from __future__ import annotations

import collections
import concurrent.futures as cf
import functools
import os
import queue
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from daemon import log
from daemon.control.host_controls import host_controls, refuse_manual
from daemon.errors import IndexError_, SettingsError, SourceError, StratumError
from daemon.git.deliveries import DeliveryLog
from daemon.git.source import sanitize_url
from daemon.git.watch import RefWatcher, Wakeup
from daemon.git.webhook import WebhookEndpoint
from daemon.http.auth import DenialReporter, TokenStore
from daemon.http.config import is_loopback, listen_host
from daemon.http.descriptors import control_share
from daemon.http.limits import fd_budget
from daemon.http.server import HttpServer, build_app, listener_settings, own_listener_mounts, reconciler_mounts
from daemon.index.read_models import set_suspended, status
from daemon.index.store import Index
from daemon.run.runtime import Runtime, build
from daemon.service.commits import Commits
from daemon.service.control_socket import MAX_CONNECTIONS, ApiServer
from daemon.service.drift import DriftCheck
from daemon.service.gate import ApplyGate
from daemon.service.handlers import control_handlers
from daemon.service.idle import IdleRelease, tune_malloc
from daemon.service.lifecycle import Notifier, Shutdown
from daemon.service.lock import ApplyLock, StartingMark
from daemon.service.readiness import Storage, storage_failure
from daemon.service.recovery import recover
from daemon.service.refusals import Refusals
from daemon.service.reload import read_again
from daemon.settings import Settings, write_effective

STOP_GRACE_S = 600.0   # how long systemd waits at SIGTERM for the actions in flight (commands time out at 300 s)
RUN_BOUND_S = 3600.0   # the longest a loop iteration (one run) may hold the main thread before the watchdog trips
START_WAIT_S = 30.0    # how long start-up waits out readers of the index (a CLI read, a backup script)


RERUN = "rerun:"        # a wake reason asking for a run of what is in force (Scheduler.rerun)
INDEX_OPENED = "index-opened"   # a wake reason: a use opened the released index again (re-arm the idle release)
TIMEOUT = "timeout"             # what `wakes` counts for a wake by a deadline (fetch, drift, idle release)
TRIGGERS = frozenset({"ref", "hook", "webhook"})   # wake reasons that announce a new commit


class Daemon:
    """One daemon for one repository branch and one data directory."""

    def __init__(self, settings: Settings, notifier: Notifier | None = None,
                 reload: Callable[[], Settings] | None = None) -> None:
        tune_malloc()                          # before any thread starts (daemon/service/idle.py)
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
        self.own_http: list[HttpServer] = []
        self.http_tokens: TokenStore | None = None
        self.loops = 0                        # main-loop iterations: an idle daemon must not spin
        self.wakes: collections.Counter[str] = collections.Counter()   # iterations by what woke them
        self.idle = IdleRelease()             # what an idle daemon gives back (daemon/service/idle.py)
        self.commits = Commits(settings.branch, self.logger)
        self.gate = ApplyGate()
        self.drift = DriftCheck(self.logger)
        self.refusals = Refusals(self.logger, self._post)
        self.storage = Storage(settings.data_dir)

    # work for the loop thread (the index has a single writer) -----------------------------------------
    def submit(self, fn: Callable[[], Any], timeout: float = 3600) -> Any:
        """Run `fn` on the loop thread and wait for its result (control socket threads)."""
        future: cf.Future[Any] = cf.Future()
        self.jobs.put((fn, future))
        self.wake.ring("api")
        return future.result(timeout=timeout)

    def _post(self, fn: Callable[[Index], Any]) -> None:
        """Run `fn(index)` on the loop thread without waiting (the HTTP thread's refusal events)."""
        future: cf.Future[Any] = cf.Future()
        self.jobs.put((lambda: fn(self.rt.index), future))
        self.wake.ring("api")

    # suspend, resume, windows ----------------------------------------------------------------------
    def set_suspended(self, on: bool, reason: str, by: str) -> dict[str, Any]:
        """Suspend (commits are recorded, nothing is applied) or resume applying; main thread only."""
        out = set_suspended(self.rt.index, on, reason, by, time.time())
        if out["changed"]:
            self.logger.info("suspended" if on else "resumed", by=by, reason=reason)
        if not on:
            self.wake.ring("resume")
        return {**out, "pending": self.commits.pending}

    def refuse_manual(self) -> None:
        """Refuse a manual apply in a window that denies it (raises)."""
        refuse_manual(self.rt.index, self.controls.windows)

    def gate_dict(self) -> dict[str, Any]:
        """The sync windows' verdict now, for `stratum windows` and status."""
        return self.gate.windows(self.controls).as_dict()

    @property
    def rt(self) -> Runtime:
        """The runtime (after start)."""
        assert self.runtime is not None
        return self.runtime

    def status(self) -> dict[str, Any]:
        """Status with Ready conditions, plus daemon facts."""
        extra = {"repository": sanitize_url(str(self.settings.repo)), "branch": self.settings.branch,
                 "daemon": {"pid": os.getpid(), "http_port": self.http.port if self.http else None,
                            "head": self.commits.last_head, "loops": self.loops, "pending": self.commits.pending,
                            "wakes": dict(self.wakes), "idle_releases": self.idle.released,
                            "window": self.gate_dict(), **self.storage.as_dict()}}
        out = status(self.rt.index, self.rt.reconcilers, self.rt.unavailable, extra)
        if not self.storage.ready:
            # Nothing applies until the data directory takes writes again: every reconciler is not ready.
            for rec in out["reconcilers"].values():
                rec["conditions"] = [{"type": "Ready", "status": "False", "reason": "StorageUnavailable",
                                      "message": f"the data directory refuses writes: {self.storage.reason}"}]
        return out

    def _health(self) -> dict[str, Any]:
        try:
            applied = self.rt.index.get_state("last_applied_revision")
        except Exception as err:  # noqa: BLE001 health must answer even when the index cannot be read
            applied = None
            self._storage_failed(err)
        return {"ok": self.storage.ready, **self.storage.as_dict(), "last_applied_revision": applied}

    # drift -------------------------------------------------------------------------------------------
    def drift_report(self) -> list[dict[str, Any]]:
        """Drift of the last applied revision, as problem dicts."""
        return self.drift.report(self.rt)

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
                                       str(self.settings.config_path or ""), DenialReporter(self.refusals.http_denied))
        limits = fd_budget(http.limits)        # descriptors: the listeners' shares, the rest kept for our work
        self.lock.acquire()
        self.runtime = build(self.settings, index_wait=START_WAIT_S)
        rt = self.runtime
        rt.index.on_open = lambda: self.wake.ring(INDEX_OPENED)   # released, then used: release it again later
        if rt.ports is not None:
            rt.ports.scheduler.wake_fn = self.wake.ring     # a reconciler's timer can wake the loop
            rt.ports.scheduler.rerun_fn = lambda why: self.wake.ring(RERUN + why)   # ... or ask for a run
        recover(rt, self.settings.on_interrupted, self.commits, self.logger, self._guard)
        rt.pipeline.stop = self.shutdown.event
        self.api = ApiServer(self.settings.socket_path, control_handlers(self),
                             max_connections=control_share(limits.fd_reserve, MAX_CONNECTIONS))
        self.api.start()
        mounts = reconciler_mounts(rt.reconcilers.values())
        hooks = WebhookEndpoint(lambda: self.controls.receivers, self._webhook_accepted,
                                self.refusals.webhook_rejected,
                                DeliveryLog(self.settings.data_dir / "webhook-deliveries"))
        app = build_app(rt.pipeline.metrics, self._health, mounts, hooks.routes(), auth=auth)
        self.http = self._listen(app, http, limits)
        rt.pipeline.metrics.registry.register(self.http.stats)
        self.http.start()
        self.own_http = self._own_listeners(rt, http, limits)
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

    def _own_listeners(self, rt: Any, http: Any, limits: Any) -> list[HttpServer]:
        """Listeners of interfaces that authenticate by themselves (the vault API on 127.0.0.1:8200): one that
        cannot bind is reported, not fatal: the daemon's work does not depend on it."""
        out: list[HttpServer] = []
        for prefix, listen, app in own_listener_mounts(rt.reconcilers.values()):
            try:
                if not http.tls and not is_loopback(listen_host(listen)):
                    # These interfaces carry their own tokens (and the vault its unseal keys): never in clear.
                    raise SettingsError(f"refusing to serve {prefix} on {listen} in clear: it is not a loopback "
                                        "address", where=listen, hint="set [http] tls_cert and tls_key, or listen "
                                                                      "on 127.0.0.1")
                server = HttpServer(listen, app, http, limits)
            except SettingsError as err:
                self.logger.warning("interface_not_listening", interface=prefix, listen=listen, message=err.render())
                continue
            server.start()
            self.logger.info("interface_listening", interface=prefix, listen=listen, port=server.port)
            out.append(server)
        return out

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

    # reload --------------------------------------------------------------------------------------------
    def reload(self) -> bool:
        """SIGHUP: re-read host settings; on any error keep the old ones and say why. True when reloaded."""
        self.notifier.reloading()
        try:
            got = read_again(self.settings, self._reload, self._config_existed, self.http_tokens)
        except Exception as err:  # noqa: BLE001 a reload never stops the daemon: the old settings stay
            message = err.render() if isinstance(err, StratumError) else f"{type(err).__name__}: {err}"
            self.logger.error("reload_failed", message=message)
            self._guard(lambda: self.rt.index.event("reload_failed", f"old settings kept: {message}"))
            self.notifier.ready(self._status_line())
            return False
        if got.restart_required:
            self.logger.warning("restart_required", settings=got.restart_required,
                                message="these settings take effect at the next start; the rest were applied")
        new, controls, tokens = got.settings, got.controls, got.tokens
        self.settings, self.controls = new, controls
        self._persist_settings()
        if self.http_tokens is not None and tokens is not None:
            self.http_tokens.replace(tokens)
        self.rt.pipeline.admission = controls.admission
        self.logger.info("settings_reloaded", changed=got.changed, restart_required=got.restart_required)
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
        rt = self.rt
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
                idle_in = self.idle.timeout()
                if idle_in is not None:
                    deadlines.append(idle_in)
                flip = self.gate.next_flip(self.controls)
                if flip is not None:
                    deadlines.append((flip - datetime.now(UTC)).total_seconds() + 0.05)
                finite = [x for x in deadlines if x != float("inf")]
                reasons = self.wake.wait(max(0.0, min(finite)) if finite else None)
                self.loops += 1
                self.wakes.update(reasons or [TIMEOUT])
                if self.shutdown.stopping:
                    break
                if self.idle.released and TRIGGERS.intersection(reasons):
                    # A push after an idle release: the Nickel worker's start overlaps with opening the index
                    # and reading the commit, instead of waiting for the first evaluation.
                    rt.evaluator.prestart()
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
                        self._guard(lambda: self.commits.look(self.rt, self._retry_soon))
                    if self.storage.ready:
                        self._run_pending(reasons)
                    if self.storage.ready and time.monotonic() >= next_drift:
                        self._guard(lambda: self.drift.check(self.rt, self._blocked))
                        next_drift = time.monotonic() + self.settings.drift_interval
                    self._guard(functools.partial(self._idle_step, reasons))
                self.notifier.watchdog()
        finally:
            self.stop()

    def _idle_step(self, reasons: list[str]) -> None:
        """After an iteration: release what only a run needs once quiet (daemon/service/idle.py), else (re)arm
        that release. A wake by a deadline alone did no work; any rung reason may have."""
        rt = self.rt
        self.idle.delay = self.settings.idle_release        # a reload takes effect at the next wake
        if not reasons and self.idle.due():
            self.idle.release(rt.index, rt.evaluator)
        else:
            self.idle.after_wake(rt.index, rt.evaluator, worked=bool(reasons))

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
        if not self.storage.probe(self.rt.index):
            return
        self.logger.info("ready_again", was=was, down_s=round(time.time() - since, 1))
        self._guard(lambda: self.rt.index.event("storage_recovered", f"the data directory takes writes again "
                                                 f"(it failed: {was})"))
        for result in self.rt.pipeline.resolve_interrupted(self.settings.on_interrupted):
            self.logger.warning("interrupted_run_resolved", run_id=result.run_id, outcome=result.status)
        if self.commits.last_head and self.commits.last_head != self.rt.index.get_state("last_applied_revision"):
            self.commits.pending = self.commits.last_head
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
            self.rt.source.fetch()
        except SourceError as err:
            self.logger.warning("fetch_failed", message=err.what)
            self.rt.index.event("fetch_failed", err.what)

    def _retry_soon(self) -> None:
        retry = threading.Timer(1.0, self.wake.ring, ("retry",))
        retry.daemon = True
        retry.start()

    def _blocked(self) -> str:
        """Why applying is blocked now (suspended, a window), or ""."""
        return self.gate.blocked(self.rt.index, self.controls)

    def _run_pending(self, reasons: list[str]) -> None:
        """Run the pending commit unless applying is suspended or a window blocks it (then it stays queued)."""
        head, queued = self.commits.take(self.rt, self._blocked())
        if queued:
            self.notifier.status(f"{self._status_line()}; {queued}")
        if head is None:
            head = self._rerun_target(reasons)
            if head is None:
                return
        trigger = ",".join(sorted(set(reasons) - {"api"})) or "poll"
        self._guard(lambda: self.rt.pipeline.run(head, trigger=trigger, incremental=True))
        self.notifier.status(self._status_line())

    def _rerun_target(self, reasons: list[str]) -> str | None:
        """What a reconciler's rerun request runs (Scheduler.rerun: a certificate due, the vault unsealed): the
        branch head when its last run neither succeeded nor was rejected (it waited and rolled back), else the
        last applied revision. None without a request, or while applying is blocked (asked again later)."""
        if not any(r.startswith(RERUN) for r in reasons) or self._blocked():
            return None
        applied = self.rt.index.get_state("last_applied_revision")
        head = self.commits.last_head
        if head and head != applied:
            rows = self.rt.index.query("SELECT status FROM revisions WHERE id = ?", [head])
            if not rows or rows[0][0] not in ("rejected", "superseded"):
                return head
        return applied

    def _status_line(self) -> str:
        applied = self.rt.index.get_state("last_applied_revision")
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
            *(("http", server.stop) for server in self.own_http),
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
