"""pytest fixtures that several test modules share; plain helpers live in tests/fixtures.py."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from daemon.nickel import Evaluator


@pytest.fixture(scope="module")
def evaluator(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Evaluator]:
    """One Nickel worker for the module, as a daemon keeps one across revisions and repositories."""
    ev = Evaluator(tmp_path_factory.mktemp("nickel-cache"))
    yield ev
    ev.close()
