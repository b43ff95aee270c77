"""The local provider: every path stays under the root (no `..`, no absolute paths, no symlinks out), atomic
writes with modes, links written relative, removal that never follows links, commands with a clean env."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

from daemon.errors import ApplyError, PathEscapeError
from reconcilers.infra.local import LocalProvider, content_hash
from tests.fixtures import tree_of


@pytest.fixture
def root(tmp_path: Path) -> Path:
    """The provider's root (not yet created)."""
    return tmp_path / "root"


@pytest.fixture
def outside(tmp_path: Path) -> Path:
    """A directory beside the root holding a file that must never change."""
    out = tmp_path / "outside"
    out.mkdir()
    (out / "keep.txt").write_text("untouched\n")
    return out


@pytest.fixture
def provider(root: Path) -> LocalProvider:
    """A provider on `root` (created by the provider)."""
    return LocalProvider(root)


# -- paths ---------------------------------------------------------------------------------------------------
def test_the_root_is_created_and_resolved(root: Path, provider: LocalProvider) -> None:
    """The root exists after construction and paths resolve inside it."""
    assert root.is_dir()
    assert provider.resolve("etc/motd") == root.resolve() / "etc/motd"


@pytest.mark.parametrize("rel", ["", "/etc/passwd", "../x", "a/../../x", "a/.."])
def test_absolute_and_dotdot_paths_are_refused(provider: LocalProvider, rel: str) -> None:
    """Empty, absolute and `..` paths raise PathEscapeError."""
    with pytest.raises(PathEscapeError):
        provider.resolve(rel)


def test_a_symlinked_directory_out_of_the_root_is_refused(
    root: Path, provider: LocalProvider, outside: Path
) -> None:
    """A path through a host symlink leading outside the root is refused, naming the root."""
    (root / "out").symlink_to(outside)
    with pytest.raises(PathEscapeError) as err:
        provider.resolve("out/keep.txt")
    assert "leads out of the root" in err.value.what
    with pytest.raises(PathEscapeError):
        provider.write_file("out/new.txt", "x", "0644")
    assert sorted(p.name for p in outside.iterdir()) == ["keep.txt"]


def test_escapes_finds_what_resolve_refuses_with_the_same_errors(
    root: Path, provider: LocalProvider, outside: Path
) -> None:
    """`escapes` (validation's one pass over every path) names exactly the paths `resolve_str` refuses, with
    its errors: symlinked folders out of the root at any depth, absolute and `..` paths; the rest pass."""
    (root / "out").symlink_to(outside)
    (root / "in/deep").mkdir(parents=True)
    (root / "in/deep/away").symlink_to(outside)
    (root / "alias").symlink_to("in")
    rels = ["out/keep.txt", "out/a/b.txt", "in/deep/away/x", "in/deep/ok.txt", "alias/deep/away/y", "alias/z",
            "top.txt", "/etc/passwd", "a/../../x", "d/", "in/deep/away"]
    refused: dict[str, str] = {}
    for rel in rels:
        try:
            provider.resolve_str(rel)
        except PathEscapeError as err:
            refused[rel] = err.what
    found = provider.escapes(rels + rels[:3])
    assert {rel: err.what for rel, err in found.items()} == refused
    assert set(refused) == {"out/keep.txt", "out/a/b.txt", "in/deep/away/x", "alias/deep/away/y", "/etc/passwd",
                            "a/../../x"}


def test_a_symlink_inside_the_root_may_be_traversed(root: Path, provider: LocalProvider) -> None:
    """A link from one root directory to another stays allowed."""
    (root / "real").mkdir()
    (root / "alias").symlink_to("real")
    provider.write_file("alias/f.txt", "x", "0644")
    assert (root / "real/f.txt").read_text() == "x"


def test_follow_last_refuses_a_final_link_out(root: Path, provider: LocalProvider, outside: Path) -> None:
    """With follow_last, a path that is itself a link out of the root is refused."""
    (root / "link").symlink_to(outside / "keep.txt")
    assert provider.resolve("link") == root.resolve() / "link"
    with pytest.raises(PathEscapeError, match="symlink out of the root"):
        provider.resolve("link", follow_last=True)


# -- observe -------------------------------------------------------------------------------------------------
def test_observe_reports_kind_mode_hash_and_target(root: Path, provider: LocalProvider) -> None:
    """Files, directories and links are observed with what the diff compares; missing paths do not exist."""
    (root / "d").mkdir(mode=0o750)
    os.chmod(root / "d", 0o750)
    (root / "f").write_text("hello")
    os.chmod(root / "f", 0o640)
    (root / "l").symlink_to("d")
    f = provider.observe("file", "f")
    assert (f.exists, f.kind, f.mode, f.content_hash) == (True, "file", "0640", content_hash("hello"))
    d = provider.observe("directory", "d")
    assert (d.kind, d.mode) == ("directory", "0750")
    link = provider.observe("symlink", "l")
    assert (link.kind, link.target) == ("symlink", "d")
    assert not provider.observe("file", "missing").exists
    assert not provider.observe("command", "").exists
    assert provider.observe("command", "f").content_hash == ""


def test_observing_a_path_that_escapes_is_never_a_match(
    root: Path, provider: LocalProvider, outside: Path
) -> None:
    """A path through a link out of the root observes as `other`, so the diff never calls it applied."""
    (root / "out").symlink_to(outside)
    assert provider.observe("file", "out/keep.txt").kind == "other"


def test_a_pass_observes_the_same_with_its_cache_as_without(root: Path, provider: LocalProvider) -> None:
    """Within one observing pass (a shared cache), files in a missing folder are missing, files in present or
    linked folders are observed as each alone would be, and a folder made after the pass began is seen by the
    next pass (the cache lives for one pass)."""
    (root / "here").mkdir()
    (root / "here" / "f").write_text("x")
    (root / "via").symlink_to("here")
    (root / "afile").write_text("not a folder")
    rels = ["gone/a", "gone/b", "gone/deeper/c", "here/f", "here/none", "via/f", "via/none", "f"]
    cache: dict[str, str] = {}
    assert [provider.observe("file", rel, cache) for rel in rels] == [provider.observe("file", rel) for rel in rels]
    assert not provider.observe("file", "gone/a", cache).exists
    (root / "gone").mkdir()
    (root / "gone" / "a").write_text("now")
    assert provider.observe("file", "gone/a", {}).exists
    with pytest.raises(NotADirectoryError):           # as before the cache: lstat's own error
        provider.observe("file", "afile/x", {})


# -- writes --------------------------------------------------------------------------------------------------
def test_write_file_creates_parents_sets_mode_and_leaves_no_temp(root: Path, provider: LocalProvider) -> None:
    """A file is written with its mode, parents created, and no temp file remains."""
    provider.write_file("a/b/c.txt", "content\n", "0600")
    assert tree_of(root) == {
        "a": ("dir", "0755", ""),
        "a/b": ("dir", "0755", ""),
        "a/b/c.txt": ("file", "0600", content_hash("content\n")),
    }
    provider.write_file("a/b/c.txt", "other\n", "644")
    assert (root / "a/b/c.txt").read_text() == "other\n"
    assert tree_of(root)["a/b/c.txt"][1] == "0644"


def test_write_file_replaces_a_link_instead_of_following_it(
    root: Path, provider: LocalProvider, outside: Path
) -> None:
    """Writing over a link to a file outside the root replaces the link; the outside file stays intact."""
    (root / "motd").symlink_to(outside / "keep.txt")
    provider.write_file("motd", "managed\n", "0644")
    assert not (root / "motd").is_symlink()
    assert (root / "motd").read_text() == "managed\n"
    assert (outside / "keep.txt").read_text() == "untouched\n"


def test_write_file_over_a_directory_is_an_apply_error(root: Path, provider: LocalProvider) -> None:
    """A directory where a file should go is not clobbered: ApplyError naming the path."""
    (root / "d").mkdir()
    (root / "d/inner").write_text("x")
    with pytest.raises(ApplyError, match="d is a directory on the host"):
        provider.write_file("d", "x", "0644")
    assert (root / "d/inner").read_text() == "x"


def test_make_directory_sets_the_mode_and_replaces_a_file_or_link(
    root: Path, provider: LocalProvider, outside: Path
) -> None:
    """A directory is created with its mode; a file or a link out of the root in its place is replaced."""
    provider.make_directory("d", "0700")
    assert tree_of(root)["d"] == ("dir", "0700", "")
    (root / "f").write_text("x")
    provider.make_directory("f", "0755")
    assert (root / "f").is_dir()
    (root / "l").symlink_to(outside)
    provider.make_directory("l", "0755")
    assert (root / "l").is_dir() and not (root / "l").is_symlink()
    assert sorted(p.name for p in outside.iterdir()) == ["keep.txt"]


def test_make_symlink_writes_a_relative_link_inside_the_root(root: Path, provider: LocalProvider) -> None:
    """A link to a root-relative target is written relative to its directory and replaced atomically."""
    provider.make_directory("srv/app-1", "0755")
    provider.make_symlink("srv/current", "srv/app-1")
    assert os.readlink(root / "srv/current") == "app-1"
    provider.make_symlink("etc/app", "srv/app-1")
    assert os.readlink(root / "etc/app") == "../srv/app-1"
    provider.make_directory("srv/app-2", "0755")
    provider.make_symlink("srv/current", "srv/app-2")
    assert os.readlink(root / "srv/current") == "app-2"
    assert sorted(p.name for p in (root / "srv").iterdir()) == ["app-1", "app-2", "current"]


def test_make_symlink_to_a_target_that_escapes_is_refused(root: Path, provider: LocalProvider) -> None:
    """A link target outside the root is refused before anything is written."""
    with pytest.raises(PathEscapeError):
        provider.make_symlink("l", "../outside")
    assert tree_of(root) == {}


# -- remove --------------------------------------------------------------------------------------------------
def test_remove_deletes_files_links_and_empty_directories(root: Path, provider: LocalProvider) -> None:
    """Files, links and empty directories are removed; an absent path is reported, not an error."""
    provider.write_file("f", "x", "0644")
    provider.make_directory("d", "0755")
    provider.make_symlink("l", "d")
    assert provider.remove("symlink", "l") == ""
    assert provider.remove("file", "f") == ""
    assert provider.remove("directory", "d") == ""
    assert tree_of(root) == {}
    assert provider.remove("file", "f") == "already absent"


def test_removing_a_non_empty_directory_keeps_it(root: Path, provider: LocalProvider) -> None:
    """A managed directory that still holds files someone else put there is kept, with a note."""
    provider.make_directory("d", "0755")
    (root / "d/foreign.txt").write_text("not ours")
    assert provider.remove("directory", "d") == "kept: directory not empty"
    assert (root / "d/foreign.txt").read_text() == "not ours"


def test_removing_a_link_to_an_outside_directory_never_touches_its_target(
    root: Path, provider: LocalProvider, outside: Path
) -> None:
    """Removing a managed path that is now a link to a directory outside removes the link only."""
    (root / "d").symlink_to(outside)
    assert provider.remove("directory", "d") == ""
    assert not (root / "d").exists() and not (root / "d").is_symlink()
    assert (outside / "keep.txt").read_text() == "untouched\n"


# -- commands ------------------------------------------------------------------------------------------------
def test_commands_run_in_the_root_with_a_clean_environment(
    root: Path, provider: LocalProvider, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A command runs with the root as cwd and HOME, STRATUM_ROOT and its own env, nothing else inherited."""
    monkeypatch.setenv("LEAKY_SECRET", "s3cret")
    code, output = provider.run_command(
        'pwd; echo "$HOME $STRATUM_ROOT $GREETING [$LEAKY_SECRET]"', 10, {"GREETING": "hi"}
    )
    assert code == 0
    real = str(root.resolve())
    assert output == f"{real}\n{real} {real} hi []\n"


def test_a_failing_command_returns_its_code_and_output_tail(provider: LocalProvider) -> None:
    """The exit code and the combined output (stderr too), trimmed to the tail, are returned."""
    code, output = provider.run_command("seq 1 2000; echo oops >&2; exit 7", 10, {})
    assert code == 7
    assert output.endswith("2000\noops\n")
    assert len(output) <= 2000


def test_a_command_over_its_timeout_is_an_apply_error(provider: LocalProvider) -> None:
    """A command past its timeout is killed and reported as an ApplyError naming the timeout."""
    with pytest.raises(ApplyError, match=r"timed out after 0\.3 s"):
        provider.run_command("sleep 30", 0.3, {})


def test_folders_resolve_exactly_as_realpath_does_with_or_without_a_cache(root: Path, outside: Path,
                                                                          provider: LocalProvider) -> None:
    """Resolving folders one component at a time (an lstat each, prefixes shared through the cache) gives
    realpath's answer for plain folders, links inside and out of the root, chains of links, relative and
    absolute targets, `.` components and missing parts; and paths through a link out are still refused."""
    (root / "a/b").mkdir(parents=True)
    (root / "real").mkdir()
    (root / "in").symlink_to("real")                         # relative, inside
    (root / "a/up").symlink_to("../real")                    # relative with .., inside
    (root / "chain").symlink_to(root / "a/up")               # absolute, to another link
    (root / "out").symlink_to(outside)                       # absolute, outside
    (root / "a/sneaky").symlink_to("../../" + outside.name)  # relative, outside
    folders = ["", "a", "a/b", "a/b/missing/deeper", "in", "in/x", "a/up", "a/up/y", "chain", "chain/z", "out",
               "out/w", "a/sneaky", "a/./b", "missing", "a/b/../b"]
    cache: dict[str, str] = {}
    for folder in folders + folders:                         # twice: the second pass answers from the cache
        expected = os.path.realpath(os.path.join(str(provider.root), folder))
        assert provider._real_folder(folder, None) == expected, folder
        assert provider._real_folder(folder, cache) == expected, folder
    for rel in ("out/f", "a/sneaky/f", "chain/../../f"):
        with pytest.raises(PathEscapeError):
            provider.resolve_str(rel, cache=cache)
    assert provider.resolve_str("chain/f", cache=cache) == str(provider.root / "real/f")


def test_no_benchmark_script_shadows_a_standard_module() -> None:
    """`python bench/x.py` puts bench/ first on sys.path: a bench/secrets.py shadowed the standard library's
    `secrets` there, and every benchmark apply rolled back (infra writes named temporary files with it)."""
    bench = Path(__file__).resolve().parents[2] / "bench"
    assert sorted(p.stem for p in bench.glob("*.py") if p.stem in sys.stdlib_module_names) == []
