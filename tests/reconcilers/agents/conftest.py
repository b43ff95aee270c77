"""Fixtures of the agent-task tests: one Nickel worker per session, and loading a commit's agents/ and tasks/."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from daemon.git.source import GitSource
from daemon.nickel.evaluator import Evaluator
from reconcilers.agents.load import load_agents
from reconcilers.agents.model import AgentsDesired, AgentSettings
from tests.fixtures import WorkRepo


@pytest.fixture(scope="session")
def agents_evaluator(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Evaluator]:
    """One bounded Nickel worker for every agents test."""
    ev = Evaluator(tmp_path_factory.mktemp("agents-nickel"))
    yield ev
    ev.close()


LoadFn = Callable[[dict[str, str]], AgentsDesired]


@pytest.fixture
def load_commit(tmp_path: Path, agents_evaluator: Evaluator) -> LoadFn:
    """Commit `files` to a fresh repository and load its agent declarations."""
    count = [0]

    def load(files: dict[str, str], settings: AgentSettings | None = None) -> AgentsDesired:
        count[0] += 1
        repo = WorkRepo(tmp_path / f"repo{count[0]}")
        repo.commit(files)
        snap = GitSource(str(repo.path), "main", tmp_path / f"data{count[0]}").snapshot("main")
        return load_agents(snap, agents_evaluator, settings)

    return load
