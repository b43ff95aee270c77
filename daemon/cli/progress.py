"""Progress of a run for a person at a terminal: the current step, then a bar over the actions.

Shown on stderr only when stderr is a TTY (pipes, CI logs and `--output json` stay clean); rich is imported
only then. The pipeline reports steps through `Pipeline.on_phase` and finished actions through `on_action`,
so nothing is planned twice to learn the number of actions.
"""

from __future__ import annotations

import sys
from types import TracebackType
from typing import Any, TextIO

STEPS = {"loading": "loading the revision", "indexing": "indexing", "planning": "planning",
         "applying": "applying"}


class RunProgress:
    """A context manager whose `phase` and `action` methods are the pipeline's progress callbacks."""

    def __init__(self, stream: TextIO | None = None) -> None:
        self._stream = stream if stream is not None else sys.stderr
        self._bar: Any = None
        self._task: Any = None

    @property
    def shown(self) -> bool:
        """Whether a progress display is on screen (stderr is a terminal)."""
        return self._bar is not None

    def __enter__(self) -> RunProgress:
        if not self._stream.isatty():
            return self
        from rich.console import Console
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

        self._bar = Progress(SpinnerColumn(), TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                             TimeElapsedColumn(), console=Console(file=self._stream), transient=True,
                             redirect_stdout=False, redirect_stderr=False)
        self._bar.start()
        self._task = self._bar.add_task("starting", total=None)
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        if self._bar is not None:
            self._bar.stop()
            self._bar = None

    def phase(self, step: str, actions: int = 0) -> None:
        """A step of the run began; `actions` is how many actions it will run (0: not counted)."""
        if self._bar is not None:
            self._bar.update(self._task, description=STEPS.get(step, step), total=actions or None, completed=0)
            self._bar.refresh()   # each step is drawn when it begins, however short

    def action(self, action: object, status: str) -> None:
        """An action finished (called from the apply threads; rich's Progress is thread-safe)."""
        if self._bar is not None:
            self._bar.advance(self._task)
