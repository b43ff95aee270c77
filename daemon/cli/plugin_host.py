"""The kernel's VerbHost (reconcilers/ports.py): what a plugin's CLI verb gets as click's `ctx.obj`.

A reconciler's verbs live in its own package and import only the contract, so they cannot build the daemon's
ports themselves; this opens them for the repository the verb's common options name: the same GitSource,
bounded Nickel evaluator and git writer a daemon hands its reconcilers. Nothing is imported until a verb
opens it (`stratum --help` stays light).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from reconcilers.base import ReconcilerEnv
from reconcilers.ports import Workspace


class PluginHost:
    """Opens a reconciler's environment for a CLI verb (the VerbHost port)."""

    def plan_markdown(self, options: Mapping[str, Any], base: str, head: str) -> str:
        """`stratum plan --base BASE --head HEAD --format markdown` for the repository of `options`: the plan
        a reviewer reads (every reconciler, change control, the principal), in memory (no index written)."""
        from daemon.cli.common import settings_from
        from daemon.run.report import plan_markdown, plan_to_dict
        from daemon.run.runtime import build

        settings = settings_from(options.get("repo"), _path(options, "data_dir"), _path(options, "config"),
                                 options.get("branch"), _path(options, "root"))
        rt = build(settings, ephemeral=True, prestart=True)
        try:
            data = plan_to_dict(rt.pipeline.plan_between(base, head))
        finally:
            rt.close()
        return "\n\n---\n\n".join(plan_markdown(data))

    def locate(self, options: Mapping[str, Any]) -> tuple[Path, Mapping[str, Any]]:
        """The data directory and host settings of the repository of `options` (settings_from, nothing opened)."""
        from daemon.cli.common import settings_from

        settings = settings_from(options.get("repo"), _path(options, "data_dir"), _path(options, "config"),
                                 options.get("branch"), _path(options, "root"))
        return settings.data_dir, settings.reconciler_settings()

    @contextmanager
    def open(self, reconciler: str, options: Mapping[str, Any]) -> Iterator[ReconcilerEnv]:
        """The ports of `reconciler` over the repository of `options`; the evaluator stops at the end."""
        from daemon.cli.common import settings_from
        from daemon.git.source import GitSource
        from daemon.nickel.evaluator import Evaluator
        from daemon.run.ports import RepoGitWriter, TimerScheduler

        settings = settings_from(options.get("repo"), _path(options, "data_dir"), _path(options, "config"),
                                 options.get("branch"), _path(options, "root"))
        source = GitSource(settings.repo, settings.branch, settings.data_dir)
        evaluator = Evaluator(settings.data_dir / "nickel-cache")
        scheduler = TimerScheduler()
        try:
            yield ReconcilerEnv(data_dir=settings.data_dir, settings=settings.reconciler_settings(),
                                evaluator=evaluator, revisions=source, scheduler=scheduler,
                                git_writer=RepoGitWriter(source))
        finally:
            scheduler.close()
            evaluator.close()


    @contextmanager
    def workspace(self, options: Mapping[str, Any]) -> Iterator[Workspace]:
        """The repository and index of `options` (daemon/run/workspace.py); the index closes at the end."""
        from daemon.cli.common import settings_from
        from daemon.run.workspace import open_workspace

        settings = settings_from(options.get("repo"), _path(options, "data_dir"), _path(options, "config"),
                                 options.get("branch"), _path(options, "root"))
        # The branch named, else the one checked out (a person's CLI follows their work tree; the daemon's
        # watched branch is a host setting of the daemon, not of this verb).
        ws = open_workspace(settings.repo, settings.data_dir, branch=options.get("branch") or None,
                            host=settings.reconciler_settings())
        try:
            yield ws
        finally:
            from daemon.index.store import Index

            if isinstance(ws.index, Index):        # open_workspace opened it: this block owns it
                ws.index.close()


def _path(options: Mapping[str, Any], key: str) -> Path | None:
    value = options.get(key)
    return Path(value) if value else None
