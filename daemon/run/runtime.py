"""Assemble the pieces for one data directory: source, index, evaluator, reconcilers, pipeline."""

from __future__ import annotations

import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING

from daemon import __version__, log
from daemon.control.admission import admission_settings
from daemon.errors import LockError
from daemon.git.source import GitSource
from daemon.nickel.evaluator import Evaluator
from daemon.run.pipeline import Pipeline
from daemon.run.ports import RepoGitWriter, SecretsBroker, TimerScheduler, bound_events
from daemon.run.pr_plan import kernel_planner
from daemon.run.retry import RetryPolicy
from daemon.run.workspace import workspace
from daemon.settings import Settings, check_owner
from reconcilers.base import AnyReconciler, ReconcilerEnv
from reconcilers.registry import BROKEN_PLUGINS, REGISTRY, factory

if TYPE_CHECKING:
    from daemon.index.store import Index


@dataclass
class Runtime:
    """Everything one run needs; `close()` releases the worker and the index."""

    settings: Settings
    source: GitSource
    index: Index
    evaluator: Evaluator
    reconcilers: dict[str, AnyReconciler]
    pipeline: Pipeline
    unavailable: dict[str, str] = field(default_factory=dict)   # reconciler -> why it is not running
    ports: Ports | None = None

    def close(self) -> None:
        """Stop workers and close the index."""
        self.pipeline.close()
        if self.ports is not None:
            self.ports.close()
        for rec in self.reconcilers.values():
            rec.close()
        self.evaluator.close()
        self.index.close()


@dataclass
class Ports:
    """The ports of one daemon that outlive a reconciler (reconcilers/ports.py; daemon/run/ports.py)."""

    secrets: SecretsBroker
    scheduler: TimerScheduler = field(default_factory=TimerScheduler)
    git_writer: RepoGitWriter | None = None

    def close(self) -> None:
        """Cancel the timers."""
        self.scheduler.close()


def build_reconcilers(settings: Settings, evaluator: Evaluator, only: tuple[str, ...] | None = None,
                      index: Index | None = None, source: GitSource | None = None, ports: Ports | None = None,
                      *, one_shot: bool = False) -> tuple[dict[str, AnyReconciler], dict[str, str]]:
    """Instantiate the registered reconcilers, each with its ports; one that cannot start is reported, not
    fatal. The secrets port answers once the reconciler providing secrets (the vault) is built. `one_shot`: the
    process ends after one run (a CLI apply), so work meant for the background is left for the daemon."""
    ports = ports or Ports(SecretsBroker(index), git_writer=RepoGitWriter(source) if source is not None else None)
    sections = settings.reconciler_settings()
    if one_shot:
        sections.setdefault("knowledge", {})["defer_embedding"] = True
        sections.setdefault("agents", {})["one_shot"] = True      # no agent service in a process about to end
    shared = workspace(source, index, settings.data_dir, sections) if source is not None and index is not None \
        else None
    base = ReconcilerEnv(data_dir=settings.data_dir, settings=sections, evaluator=evaluator,
                         index=index, revisions=source, scheduler=ports.scheduler, git_writer=ports.git_writer,
                         version=__version__, workspace=shared, plans=kernel_planner(settings))
    out: dict[str, AnyReconciler] = {}
    unavailable = {n: why for n, why in BROKEN_PLUGINS.items() if only is None or n in only}
    for name in REGISTRY:
        if only is not None and name not in only:
            continue
        env = replace(base, secrets=ports.secrets.for_(name),
                      events=bound_events(index, name) if index is not None else None)
        try:
            out[name] = factory(name)(env)
        except Exception as err:  # noqa: BLE001 a reconciler that cannot start is reported in status
            unavailable[name] = f"{type(err).__name__}: {err}"
            log.get().warning("reconciler_unavailable", reconciler=name, error=unavailable[name])
    ports.secrets.provider = next((p for p in (r.secrets() for r in out.values()) if p is not None), None)
    return out, unavailable


def open_index(path: Path, *, read_only: bool = False, wait: float = 0.0) -> Index:
    """Open the index; while another process holds the file (a backup script, a reader that predates the
    apply lock), retry for up to `wait` seconds, saying once who holds it."""
    from daemon.index.store import Index

    deadline = time.monotonic() + wait
    told = False
    while True:
        try:
            return Index(path, read_only=read_only)
        except LockError as err:
            if time.monotonic() >= deadline:
                raise LockError(f"{err.what}; waited {wait:.0f} s for it", hint=err.hint) from err
            if not told:
                log.get().warning("index_busy", message=err.what, wait_s=wait)
                told = True
            time.sleep(0.1)


def build(settings: Settings, *, read_only: bool = False, only: tuple[str, ...] | None = None,
          ephemeral: bool = False, index_wait: float = 0.0, prestart: bool = False,
          one_shot: bool = False, background_index: bool = False) -> Runtime:
    """Open everything for `settings` (the index read-write unless `read_only`; in memory when `ephemeral`,
    for work that needs no records, such as a pull-request plan while a daemon holds the index). `prestart`
    starts the Nickel worker at once, for a command that will evaluate right away (see Evaluator.prestart).
    `one_shot`: a process that ends after its run; the knowledge nodes it indexes are embedded later, by the
    next process that runs the model anyway (the daemon, `stratum kb search`), so the apply never waits for it.
    `background_index`: the index opens on a thread while the revision loads (daemon/index/opening.py), for a
    command that needs it only after loading (`stratum plan`)."""
    admission = admission_settings(settings, str(settings.config_path or ""))   # bad settings fail first
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    if not ephemeral and not read_only:
        check_owner(settings.data_dir, settings.repo, claim=True)   # the first writer records whose it is
    source = GitSource(settings.repo, settings.branch, settings.data_dir)
    index_path = Path(":memory:") if ephemeral else settings.index_path
    if background_index:
        from daemon.index.opening import open_in_background

        index = open_in_background(lambda: open_index(index_path, read_only=read_only, wait=index_wait))
    else:
        index = open_index(index_path, read_only=read_only, wait=index_wait)
    evaluator = Evaluator(settings.data_dir / "nickel-cache", settings.nickel_timeout, settings.nickel_memory_mb,
                          prestart=prestart)
    ports = Ports(SecretsBroker(index), git_writer=RepoGitWriter(source))
    reconcilers, unavailable = build_reconcilers(settings, evaluator, only, index, source, ports, one_shot=one_shot)
    pipeline = Pipeline(source=source, index=index, reconcilers=reconcilers, evaluator=evaluator,
                        parallelism=settings.parallelism, notes=settings.notes,
                        admission=admission, max_files=settings.max_files, keep_metrics=not one_shot,
                        # a process that ends after its run has no next run to keep a full collection out of
                        settle_memory=not one_shot, retry=RetryPolicy(max_wait=settings.max_wait))
    return Runtime(settings, source, index, evaluator, reconcilers, pipeline, unavailable, ports)
