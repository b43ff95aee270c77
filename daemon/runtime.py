"""Assemble the pieces for one data directory: source, index, evaluator, reconcilers, pipeline."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from daemon import log
from daemon.admission import admission_settings
from daemon.index import Index
from daemon.nickel import Evaluator
from daemon.pipeline import Pipeline
from daemon.settings import Settings
from daemon.source import GitSource
from reconcilers.base import Reconciler, ReconcilerEnv
from reconcilers.registry import REGISTRY, factory


@dataclass
class Runtime:
    """Everything one run needs; `close()` releases the worker and the index."""

    settings: Settings
    source: GitSource
    index: Index
    evaluator: Evaluator
    reconcilers: dict[str, Reconciler]
    pipeline: Pipeline
    unavailable: dict[str, str] = field(default_factory=dict)   # reconciler -> why it is not running

    def close(self) -> None:
        """Stop workers and close the index."""
        self.pipeline.close()
        for rec in self.reconcilers.values():
            closer = getattr(rec, "close", None)
            if closer is not None:
                closer()
        self.evaluator.close()
        self.index.close()


def build_reconcilers(settings: Settings, evaluator: Evaluator, only: tuple[str, ...] | None = None,
                      ) -> tuple[dict[str, Reconciler], dict[str, str]]:
    """Instantiate the registered reconcilers; one that cannot start is reported, not fatal."""
    env = ReconcilerEnv(data_dir=settings.data_dir, settings=settings.reconciler_settings(), evaluator=evaluator)
    out: dict[str, Reconciler] = {}
    unavailable: dict[str, str] = {}
    for name in REGISTRY:
        if only is not None and name not in only:
            continue
        try:
            out[name] = factory(name)(env)
        except Exception as err:  # noqa: BLE001 a reconciler that cannot start is reported in status
            unavailable[name] = f"{type(err).__name__}: {err}"
            log.get().warning("reconciler_unavailable", reconciler=name, error=unavailable[name])
    return out, unavailable


def build(settings: Settings, *, read_only: bool = False, only: tuple[str, ...] | None = None,
          ephemeral: bool = False, prestart: bool = False) -> Runtime:
    """Open everything for `settings` (the index read-write unless `read_only`; in memory when `ephemeral`,
    for work that needs no records, such as a pull-request plan while a daemon holds the index). `prestart`
    starts the Nickel worker at once, for a command that will evaluate right away (see Evaluator.prestart)."""
    admission = admission_settings(settings, str(settings.config_path or ""))   # bad settings fail first
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    source = GitSource(settings.repo, settings.branch, settings.data_dir)
    index = Index(Path(":memory:") if ephemeral else settings.index_path, read_only=read_only)
    evaluator = Evaluator(settings.data_dir / "nickel-cache", settings.nickel_timeout, settings.nickel_memory_mb,
                          prestart=prestart)
    reconcilers, unavailable = build_reconcilers(settings, evaluator, only)
    pipeline = Pipeline(source=source, index=index, reconcilers=reconcilers, evaluator=evaluator,
                        parallelism=settings.parallelism, notes=settings.notes,
                        admission=admission)
    return Runtime(settings, source, index, evaluator, reconcilers, pipeline, unavailable)
