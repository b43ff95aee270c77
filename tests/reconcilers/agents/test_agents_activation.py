"""When the agents service starts: never for a revision that declares nothing (every daemon would otherwise run
a queue, a scheduler thread and a DuckDB file for no task), and a start that fails is reported, not raised."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from reconcilers.agents.model import AgentsDesired
from reconcilers.agents.reconciler import AgentsReconciler
from reconcilers.base import ReconcilerEnv


class Events:
    def __init__(self) -> None:
        self.seen: list[tuple[str, str]] = []

    def __call__(self, kind: str, message: str, *, subject: str = "", revision: str = "") -> None:
        self.seen.append((kind, message))


def test_a_revision_declaring_nothing_starts_no_service(tmp_path: Path) -> None:
    rec = AgentsReconciler(ReconcilerEnv(data_dir=tmp_path / "data"))
    try:
        rec._activate(AgentsDesired(revision="r1"))
        assert rec.service is None and rec.active is not None
        assert not (tmp_path / "data" / "agents").exists()
    finally:
        rec.close()


def test_a_service_that_cannot_start_is_an_event_not_an_exception(tmp_path: Path) -> None:
    """The data directory is a file (as on a full or broken disk, the service's files cannot be made): the run's
    hook gets no exception and the failure is an event naming the cause."""
    blocked = tmp_path / "data"
    blocked.write_text("not a directory")
    events = Events()
    rec = AgentsReconciler(ReconcilerEnv(data_dir=blocked, events=events))
    declared: Any = {"nightly": object()}            # any declared task makes the service wanted
    try:
        rec._activate(AgentsDesired(revision="r2", tasks=declared))
        assert rec.service is None
        assert [k for k, _ in events.seen] == ["agents.start_failed"]
        assert "cannot start" in events.seen[0][1]
    finally:
        rec.close()
