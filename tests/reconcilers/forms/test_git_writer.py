"""GitWriter.commit_files (added for forms): several files in one commit by the daemon, on a new branch from a
base or on top of an existing one, never on the watched branch."""

from __future__ import annotations

import pygit2
import pytest

from reconcilers.errors import SourceError
from tests.fixtures import git
from tests.reconcilers.forms.conftest import OpsRepo


def test_several_files_land_in_one_commit_on_a_new_branch(ops: OpsRepo) -> None:
    """Files in new and existing folders; the base's other files stay; one commit with the base as parent."""
    main = git(ops.work.path, "rev-parse", "main")
    files = {"infra/new/a.ncl": "{ resources = {} }\n", "knowledge/decisions/x.md": "x\n", "top.txt": "t\n"}
    commit = ops.writer.commit_files("forms/t/1", files, "three files", base=main)
    repo = pygit2.Repository(str(ops.work.path))
    c = repo.get(commit)
    assert [str(p) for p in c.parent_ids] == [main] and c.author.name == "stratumd"
    for path, text in files.items():
        assert c.tree[path].data.decode() == text
    assert c.tree["infra/app.ncl"].id == repo.revparse_single("main").tree["infra/app.ncl"].id
    again = ops.writer.commit_files("forms/t/1", {"top.txt": "u\n"}, "on top")
    assert [str(p) for p in repo.get(again).parent_ids] == [commit]
    assert git(ops.work.path, "rev-parse", "main") == main


def test_the_watched_branch_is_refused(ops: OpsRepo) -> None:
    """What the daemon applies comes from people: commit_files to main raises, nothing moves."""
    main = git(ops.work.path, "rev-parse", "main")
    with pytest.raises(SourceError, match="does not commit to the branch it watches"):
        ops.writer.commit_files("main", {"x": "y"}, "no")
    assert git(ops.work.path, "rev-parse", "main") == main
