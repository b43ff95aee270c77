"""Fixtures of the forms tests: a real repository seeded from repo_template/ (the forms `stratum init` ships),
the daemon's own GitSource, Nickel evaluator and git writer over it."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from daemon.git.source import GitSource
from daemon.nickel.evaluator import Evaluator
from daemon.package_data import template_dir
from daemon.run.ports import RepoGitWriter
from reconcilers.forms.reconciler import load_forms
from reconcilers.forms.session import FormSession
from tests.fixtures import WorkRepo


@pytest.fixture(scope="module")
def evaluator(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Evaluator]:
    """One Nickel worker for the module."""
    ev = Evaluator(tmp_path_factory.mktemp("nickel-cache"))
    yield ev
    ev.close()


@dataclass
class OpsRepo:
    """The template repository, committed on main, with the daemon's source and writer over it."""

    work: WorkRepo
    source: GitSource
    writer: RepoGitWriter
    evaluator: Evaluator

    def session(self, name: str = "local-service", **kw: object) -> FormSession:
        """A session of form `name` over the head of main."""
        snap = self.source.snapshot("main")
        form = load_forms(snap).forms[name]
        return FormSession(form, snap, self.evaluator, watched="main", writer=self.writer,
                           environ={}, **kw)  # type: ignore[arg-type]


@pytest.fixture
def ops(tmp_path: Path, evaluator: Evaluator) -> OpsRepo:
    """A fresh copy of repo_template/ committed to main."""
    path = tmp_path / "ops"
    shutil.copytree(template_dir(), path)
    work = WorkRepo(path)
    work.commit(message="init")
    source = GitSource(str(path), "main", tmp_path / "data")
    return OpsRepo(work, source, RepoGitWriter(source), evaluator)
