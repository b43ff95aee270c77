"""Worker processes a CLI verb starts before it imports the engine (`stratum validate`, `stratum plan`).

A reconciler's load may need a worker process (the infra reconciler renders `templates/` in one); started on
first use, its start-up (~0.1 s of Python and Jinja) delays the load, while started here, at the verb's
beginning, it runs on another core as this process imports the pipeline and the reconcilers. Plugins declare
such workers as data (reconcilers/plugin.py `Ahead`), so nothing here names a reconciler.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from reconcilers.plugin import discover, load_target
from reconcilers.workers import start_spare, stop_spares


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
