"""Loading infra/ from a commit: Nickel defaults, rendered templates, normalised paths, located problems."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from daemon.git.source import MAX_FILES, GitSource
from daemon.nickel.evaluator import Evaluator
from reconcilers.infra.load import FILE_CACHE_MAX, FileCache, load_infra
from reconcilers.infra.model import InfraDesired
from tests.fixtures import Raw, WorkRepo, infra, resource


@pytest.fixture(scope="module")
def evaluator(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Evaluator]:
    """One Nickel worker for the module."""
    ev = Evaluator(tmp_path_factory.mktemp("nickel-cache"))
    yield ev
    ev.close()


def load(tmp: Path, evaluator: Evaluator, files: dict[str, str | bytes | None]) -> InfraDesired:
    """Commit `files` to a new repo and load its infra."""
    repo = WorkRepo(tmp / "repo")
    repo.commit(files)
    return load_infra(GitSource(str(repo.path), "main", tmp / "data").snapshot("main"), evaluator)


def test_defaults_from_the_contract_are_filled_in(tmp_path: Path, evaluator: Evaluator) -> None:
    """Provider, prune, drift, mode and labels get the contract's defaults; the spec has host fields only."""
    d = load(
        tmp_path, evaluator, {"infra/a.ncl": infra(resource("motd", "file", path="etc/motd", content="hi"))}
    )
    assert d.problems == ()
    motd = d.resources["motd"]
    assert (motd.kind, motd.provider, motd.prune, motd.drift) == ("file", "local", True, "correct")
    assert motd.fields == {"path": "etc/motd", "content": "hi", "mode": "0644"}
    assert (motd.source, motd.line) == ("infra/a.ncl", 3)
    assert dict(motd.labels) == {}


def test_every_file_under_infra_is_loaded_and_others_ignored(tmp_path: Path, evaluator: Evaluator) -> None:
    """Nested infra files are loaded with their own source; .ncl files elsewhere are not infra."""
    d = load(
        tmp_path,
        evaluator,
        {
            "infra/a.ncl": infra(resource("a", "directory", path="a")),
            "infra/sub/b.ncl": infra(
                resource("x", "directory", path="x"), resource("b", "directory", path="b")
            ),
            "other/c.ncl": infra(resource("c", "directory", path="c")),
            "infra/README.md": "not nickel\n",
        },
    )
    assert d.problems == ()
    assert {r: (d.resources[r].source, d.resources[r].line) for r in d.resources} == {
        "a": ("infra/a.ncl", 3),
        "x": ("infra/sub/b.ncl", 3),
        "b": ("infra/sub/b.ncl", 4),
    }


def test_an_empty_infra_folder_loads_nothing(tmp_path: Path, evaluator: Evaluator) -> None:
    """No infra files: no resources, no problems."""
    d = load(tmp_path, evaluator, {"README.md": "hi\n"})
    assert d.resources == {} and d.problems == ()


def test_templates_are_rendered_from_the_snapshot_with_vars(tmp_path: Path, evaluator: Evaluator) -> None:
    """A template file of the commit is rendered with Nickel values; the spec keeps content, not template."""
    d = load(
        tmp_path,
        evaluator,
        {
            "templates/app.j2": "{% for w in workers %}worker {{ w }}\n{% endfor %}port={{ port }}\n",
            "infra/a.ncl": 'let cfg = { port = 80, workers = ["a", "b"] } in\n'
            + infra(resource("app", "file", path="app.conf", template="templates/app.j2", vars=Raw("cfg"))),
        },
    )
    assert d.problems == ()
    assert d.resources["app"].fields == {
        "path": "app.conf",
        "content": "worker a\nworker b\nport=80\n",
        "mode": "0644",
    }


def test_a_template_change_changes_the_spec_hash(tmp_path: Path, evaluator: Evaluator) -> None:
    """Editing only the template moves the spec hash, so the next plan updates the file."""
    repo = WorkRepo(tmp_path / "repo")
    source = GitSource(str(repo.path), "main", tmp_path / "data")
    base = {"infra/a.ncl": infra(resource("t", "file", path="t", template="templates/t.j2"))}
    repo.commit({**base, "templates/t.j2": "one\n"})
    first = load_infra(source.snapshot("main"), evaluator).resources["t"]
    repo.commit({"templates/t.j2": "two\n"})
    second = load_infra(source.snapshot("main"), evaluator).resources["t"]
    assert first.spec_hash != second.spec_hash
    assert second.fields["content"] == "two\n"


def test_paths_are_normalised(tmp_path: Path, evaluator: Evaluator) -> None:
    """`./a//b/` becomes `a/b` for path, target and creates."""
    d = load(
        tmp_path,
        evaluator,
        {
            "infra/a.ncl": infra(
                resource("l", "symlink", path="./srv//current/", target="srv/./app"),
                resource("c", "command", run="true", creates="./srv//done"),
            )
        },
    )
    assert d.problems == ()
    assert d.resources["l"].fields == {"path": "srv/current", "target": "srv/app"}
    assert d.resources["c"].fields["creates"] == "srv/done"


def test_systemd_units_live_under_etc_systemd_system(tmp_path: Path, evaluator: Evaluator) -> None:
    """A unit's managed path is derived from its name."""
    d = load(
        tmp_path,
        evaluator,
        {"infra/a.ncl": infra(resource("u", "systemd_unit", name="app@1.service", content="[Unit]\n"))},
    )
    assert d.resources["u"].path == "etc/systemd/system/app@1.service"


def test_all_problems_are_collected_and_valid_resources_still_load(
    tmp_path: Path, evaluator: Evaluator
) -> None:
    """Several bad resources in several files are all reported, each at its own file and line."""
    d = load(
        tmp_path,
        evaluator,
        {
            "infra/a.ncl": infra(
                resource("ok", "directory", path="ok"),
                resource("dup", "directory", path="d1"),
                resource("ghost-dep", "directory", path="g", depends_on=["nobody"]),
            ),
            "infra/b.ncl": infra(resource("dup", "directory", path="d2"), resource("both", "file", path="f")),
            "infra/c.ncl": "{ resources = { x = { kind = 'file, path = 1 } } }\n",
        },
    )
    assert set(d.resources) == {"ok", "dup", "ghost-dep"}
    located = sorted((p.path, p.line, p.message.split(":")[0]) for p in d.problems)
    assert located == [
        ("infra/a.ncl", 5, "resource ghost-dep depends on unknown resource 'nobody'"),
        ("infra/b.ncl", 3, "duplicate resource id 'dup'"),
        ("infra/b.ncl", 4, "resource both"),
        ("infra/c.ncl", 1, "contract broken by the value of `path`"),
    ]
    assert all(p.reconciler == "infra" for p in d.problems)


def test_ids_quoted_in_nickel_are_located(tmp_path: Path, evaluator: Evaluator) -> None:
    """A quoted field name still gets its line."""
    d = load(tmp_path, evaluator, {"infra/a.ncl": infra('    "web.1" = { kind = \'directory, path = "w" },')})
    assert d.resources["web.1"].line == 3


def test_a_commit_changing_one_file_rebuilds_one_file_and_the_cache_holds_two_full_revisions(
        tmp_path: Path, evaluator: Evaluator) -> None:
    """The load cache gives back the very resources of unchanged files, and it is bounded above two revisions
    at the host's file cap (it was bounded at 20,000 entries: a 20,000-file repo emptied it on every commit
    and every file was rebuilt)."""
    assert FILE_CACHE_MAX >= 2 * MAX_FILES
    repo = WorkRepo(tmp_path / "repo")
    repo.commit({f"infra/f{i:02d}.ncl": infra(resource(f"r{i:02d}", "file", path=f"f{i:02d}", content="x"))
                 for i in range(30)})
    source = GitSource(str(repo.path), "main", tmp_path / "data")
    cache: FileCache = {}
    first = load_infra(source.snapshot("main"), evaluator, cache)
    repo.commit({"infra/f07.ncl": infra(resource("r07", "file", path="f07", content="y"))})
    second = load_infra(source.snapshot("main"), evaluator, cache)
    same = [rid for rid, r in second.resources.items() if r is first.resources[rid]]
    assert sorted(same) == sorted(f"r{i:02d}" for i in range(30) if i != 7)
    assert second.resources["r07"].fields["content"] == "y" and len(cache) == 31
