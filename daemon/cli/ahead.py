"""Worker processes a CLI verb starts before it imports the engine (`stratum validate`, `stratum plan`).

A reconciler's load may need a worker process (the infra reconciler renders `templates/` in one); started on
first use, its start-up (~0.1 s of Python and Jinja) delays the load, while started here, at the verb's
beginning, it runs on another core as this process imports the pipeline and the reconcilers. Plugins declare
such workers as data (reconcilers/plugin.py `Ahead`), so nothing here names a reconciler.
"""

from __future__ import annotations

import importlib
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from reconcilers.plugin import Preload, discover, load_target
from reconcilers.workers import start_spare, stop_spares

# The kernel's own: a revision's Cedar policies (policies/) are parsed by daemon/control/policy.py with cedarpy.
KERNEL_PRELOAD = (Preload("policies", ("cedarpy",)),)


def start_ahead(repo: str) -> int:
    """Start the declared workers whose folder the work tree at `repo` holds (a URL or a bare repository has
    no work tree to look at: nothing starts); returns how many started. An optimisation only: a declaration
    that cannot be loaded is skipped, and the reconciler starts its worker itself, as without this."""
    tree = Path(repo)
    started = 0
    for plugin in discover()[0]:
        for ahead in plugin.ahead:
            if not (tree / ahead.folder).is_dir():
                continue
            try:
                argv, env = load_target(ahead.command)()
                start_spare(argv, env)
            except Exception:  # noqa: BLE001 a worker not started ahead is started when needed
                continue
            started += 1
    return started


@contextmanager
def workers_ahead(repo: str) -> Iterator[int]:
    """start_ahead(repo) for the block; the workers nobody took are stopped when it ends."""
    try:
        yield start_ahead(repo)
    finally:
        stop_spares()


def preload_modules(repo: str) -> list[str]:
    """The libraries declared (Plugin.preload, KERNEL_PRELOAD) for folders the work tree at `repo` holds, not
    imported yet, in declaration order."""
    tree = Path(repo)
    declared = [*KERNEL_PRELOAD, *(p for plugin in discover()[0] for p in plugin.preload)]
    out: list[str] = []
    for item in declared:
        if (tree / item.folder).is_dir():
            out += [m for m in item.modules if m not in sys.modules and m not in out]
    return out


def _import_all(modules: list[str]) -> None:
    for name in modules:
        try:
            importlib.import_module(name)
        except Exception:  # noqa: BLE001 the reconciler that needs it reports a missing library itself
            continue


@contextmanager
def preloading(repo: str) -> Iterator[list[str]]:
    """Import preload_modules(repo) on a thread during the block (started where the caller is about to wait
    for a worker, so the imports fill that wait rather than compete with the caller's own work); the thread is
    joined when the block ends. Third-party modules only, which import nothing of Stratum: the module locks
    two threads take cannot then deadlock."""
    modules = preload_modules(repo)
    thread = threading.Thread(target=_import_all, args=(modules,), name="preload", daemon=True) if modules \
        else None
    if thread is not None:
        thread.start()
    try:
        yield modules
    finally:
        if thread is not None:
            thread.join()
