"""pytest fixtures that several test modules share; plain helpers live in tests/fixtures.py."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from daemon.nickel.evaluator import Evaluator
from tests.fixtures import Stack, WorkRepo


@pytest.fixture(scope="module")
def evaluator(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Evaluator]:
    """One Nickel worker for the module, as a daemon keeps one across revisions and repositories."""
    ev = Evaluator(tmp_path_factory.mktemp("nickel-cache"))
    yield ev
    ev.close()


@pytest.fixture
def repo(tmp_path: Path) -> WorkRepo:
    """An empty work repository (modules that need a seeded one define their own)."""
    return WorkRepo(tmp_path / "repo")


@pytest.fixture
def stack(tmp_path: Path, repo: WorkRepo, evaluator: Evaluator) -> Iterator[Stack]:
    """The real pipeline over `repo`, its host root at tmp/root, no host settings."""
    s = Stack(tmp_path, repo.path, evaluator=evaluator)
    yield s
    s.close()
