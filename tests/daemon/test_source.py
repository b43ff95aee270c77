"""Git access: snapshots read commits (never the work tree), mirrors of remotes, rewritten and deleted
branches, file checks (symlinks, size, encoding), and notes."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from daemon.errors import InputError, SourceError
from daemon.git.source import LISTING_STATS, NOTES_REF, GitSource, is_url, safe_relpath, sanitize_url
from tests.fixtures import WorkRepo, bare_repo, git


@pytest.fixture
def work(tmp_path: Path) -> WorkRepo:
    """A work repository with one commit."""
    repo = WorkRepo(tmp_path / "work")
    repo.commit({"a.txt": "committed\n", "dir/b.ncl": "{ b = 1 }\n"}, "first")
    return repo


def _source(repo: WorkRepo | Path, tmp: Path) -> GitSource:
    path = repo.path if isinstance(repo, WorkRepo) else repo
    return GitSource(str(path), "main", tmp / "data")


# -- snapshots ------------------------------------------------------------------------------------------
def test_snapshot_reads_the_commit_not_the_work_tree(work: WorkRepo, tmp_path: Path) -> None:
    """Uncommitted edits, staged edits and untracked files never show in a commit's snapshot."""
    work.write({"a.txt": "edited, not committed\n", "untracked.ncl": "{}\n"})
    git(work.path, "add", "a.txt")
    (work.path / "dir" / "b.ncl").unlink()
    snap = _source(work, tmp_path).snapshot("main")
    assert snap.read("a.txt") == b"committed\n"
    assert [e.path for e in snap.entries()] == ["a.txt", "dir/b.ncl"]
    assert snap.entry("untracked.ncl") is None
    assert snap.read("dir/b.ncl") == b"{ b = 1 }\n"


def test_entries_by_prefix_and_suffix_carry_blob_ids(work: WorkRepo, tmp_path: Path) -> None:
    """`entries` filters by folder and suffix, and each entry's blob id is git's own."""
    snap = _source(work, tmp_path).snapshot("main")
    entries = snap.entries("dir", suffixes=(".ncl",))
    assert [e.path for e in entries] == ["dir/b.ncl"]
    assert entries[0].blob_id == git(work.path, "rev-parse", "HEAD:dir/b.ncl")
    assert entries[0].size == len("{ b = 1 }\n")
    assert snap.entries("missing") == []
    assert snap.entries("", suffixes=(".md",)) == []


def test_a_commit_that_changes_one_file_lists_only_the_folders_it_changed(tmp_path: Path) -> None:
    """Listings are kept by tree id: the next commit, which edits one file of `infra/s1`, reads the trees on
    that file's path (root, infra, infra/s1) and sizes one blob; its entries are exact all the same."""
    repo = WorkRepo(tmp_path / "scale")
    repo.commit({f"infra/s{i % 4}/f{i:03d}.ncl": f"{{ n = {i} }}\n" for i in range(120)}, "many")
    source = _source(repo, tmp_path)
    first = source.snapshot("main").entries("infra", suffixes=(".ncl",))
    assert len(first) == 120
    repo.commit({"infra/s1/f001.ncl": "{ n = 1, changed = true }\n"})
    before = dict(LISTING_STATS)
    snap = source.snapshot("main")
    entries = snap.entries("infra", suffixes=(".ncl",))
    assert LISTING_STATS["trees_read"] - before["trees_read"] == 2          # infra and infra/s1
    assert LISTING_STATS["blobs_sized"] - before["blobs_sized"] == 1
    assert [e.path for e in entries] == sorted(e.path for e in first)
    changed = {e.path: e for e in entries}["infra/s1/f001.ncl"]
    assert changed.blob_id == git(repo.path, "rev-parse", "HEAD:infra/s1/f001.ncl")
    assert changed.size == len("{ n = 1, changed = true }\n")
    assert snap.entry("infra/s1/f001.ncl") == changed and snap.entry("infra/s1/nope.ncl") is None
    assert [e.path for e in snap.entries()] == sorted(e.path for e in first)   # the root: a new listing


def test_nickel_files_listed_are_read_without_a_second_lookup(tmp_path: Path) -> None:
    """Listing a folder reads each new blob for its size; a Nickel file's bytes are kept then (loading reads
    every one), so reading it after is no second object lookup (20,000 loose infra files: 20,000 fewer). Other
    files are not kept by the listing: nothing reads most of them."""
    repo = WorkRepo(tmp_path / "kept")
    repo.commit({**{f"infra/k{i:03d}.ncl": f"{{ k = {i} }}\n" for i in range(30)}, "docs/a.md": "# a\n"})
    snap = _source(repo, tmp_path).snapshot("main")
    entries = snap.entries("")
    before = LISTING_STATS["blobs_read"]
    texts = [snap.text(e) for e in entries if e.path.endswith(".ncl")]
    assert LISTING_STATS["blobs_read"] == before and texts[7] == "{ k = 7 }\n"
    assert snap.text(snap.entry("docs/a.md")) == "# a\n"  # type: ignore[arg-type]
    assert LISTING_STATS["blobs_read"] == before + 1


def test_scans_reuse_folders_scanned_before_and_still_stop_at_the_cap(tmp_path: Path) -> None:
    """The file count and name check of the next commit read only the folders it changed; the answers are
    those of a full scan, a bad name found before is still reported, and the cap still stops the count."""
    repo = WorkRepo(tmp_path / "scale")
    files: dict[str, str | bytes | None] = {f"infra/s{i % 4}/f{i:03d}.ncl": "{}\n" for i in range(40)}
    files["infra/s2/bad\x01name.ncl"] = "{}\n"
    repo.commit(files, "many")
    source = _source(repo, tmp_path)
    first = source.snapshot("main").scan()
    assert (first.files, first.over_cap, first.bad_names) == (41, False, ("infra/s2/bad\\x01name.ncl",))
    repo.commit({"infra/s1/new.ncl": "{}\n"})
    before = LISTING_STATS["trees_scanned"]
    second = source.snapshot("main").scan()
    assert LISTING_STATS["trees_scanned"] - before == 3                   # the root, infra and infra/s1
    assert (second.files, second.over_cap, second.bad_names) == (42, False, first.bad_names)
    capped = source.snapshot("main").scan(max_files=20)
    assert capped.over_cap and capped.files > 20


def test_snapshot_info_and_revision(work: WorkRepo, tmp_path: Path) -> None:
    """A snapshot knows its full revision, short form, author and message."""
    head = git(work.path, "rev-parse", "HEAD")
    snap = _source(work, tmp_path).snapshot("main")
    assert snap.revision == head
    assert snap.short == head[:12]
    assert snap.info.author == "Test Author"
    assert snap.info.email == "author@example.com"
    assert snap.info.message.strip() == "first"
    assert snap.info.parents == ()


def test_staged_snapshot_is_what_the_next_commit_records(work: WorkRepo, tmp_path: Path) -> None:
    """The staged snapshot holds staged content, not later unstaged edits nor untracked files."""
    work.write({"a.txt": "staged\n", "new.ncl": "{ n = 1 }\n"})
    git(work.path, "add", "a.txt", "new.ncl")
    work.write({"a.txt": "unstaged on top\n", "untracked.ncl": "{}\n"})
    snap = _source(work, tmp_path).staged_snapshot()
    assert snap.revision.startswith("staged:")
    assert snap.read("a.txt") == b"staged\n"
    assert snap.read("new.ncl") == b"{ n = 1 }\n"
    assert snap.entry("untracked.ncl") is None


def test_a_bare_repository_has_no_staged_snapshot(tmp_path: Path) -> None:
    """Asking a bare repo for its staging area is a SourceError that says to give a revision."""
    source = _source(bare_repo(tmp_path / "bare.git"), tmp_path)
    with pytest.raises(SourceError) as err:
        source.staged_snapshot()
    assert "bare" in err.value.what and "--rev" in err.value.hint


# -- file checks ----------------------------------------------------------------------------------------
def test_symlink_entries_are_listed_but_refused_on_read(work: WorkRepo, tmp_path: Path) -> None:
    """A committed symlink (even to a host file) is never followed: reading it is an InputError naming it."""
    (work.path / "link.ncl").symlink_to("/etc/hostname")
    work.commit(message="link")
    snap = _source(work, tmp_path).snapshot("main")
    entry = snap.entry("link.ncl")
    assert entry is not None and entry.is_symlink
    with pytest.raises(InputError) as err:
        snap.read("link.ncl")
    assert err.value.where == "link.ncl"
    assert "symlink" in err.value.what


def test_files_over_the_size_limit_are_refused(work: WorkRepo, tmp_path: Path) -> None:
    """A file over the limit is an InputError naming the file, its size and the limit."""
    work.commit({"big.txt": "x" * 2000})
    snap = _source(work, tmp_path).snapshot("main")
    entry = snap.entry("big.txt")
    assert entry is not None
    with pytest.raises(InputError) as err:
        snap.text(entry, limit=1000)
    assert err.value.where == "big.txt"
    assert "2000 bytes" in err.value.what and "1000-byte limit" in err.value.what
    assert len(snap.text(entry, limit=2000)) == 2000


def test_non_utf8_text_is_an_error_with_file_and_line(work: WorkRepo, tmp_path: Path) -> None:
    """Latin-1 bytes on line 3 give an InputError at `file:3`."""
    work.commit({"latin.ncl": '{\n  a = 1,\n  b = "caf\xe9",\n}\n'.encode("latin-1")})
    snap = _source(work, tmp_path).snapshot("main")
    entry = snap.entry("latin.ncl")
    assert entry is not None
    with pytest.raises(InputError) as err:
        snap.text(entry)
    assert err.value.where == "latin.ncl:3"
    assert "UTF-8" in err.value.what


def test_binary_content_is_an_error_naming_the_file(work: WorkRepo, tmp_path: Path) -> None:
    """Content with NUL bytes is refused as binary where text was expected."""
    work.commit({"blob.ncl": b"{ a = 1 }\x00\x01\x02"})
    snap = _source(work, tmp_path).snapshot("main")
    entry = snap.entry("blob.ncl")
    assert entry is not None
    with pytest.raises(InputError) as err:
        snap.text(entry)
    assert err.value.where == "blob.ncl"
    assert "binary" in err.value.what


def test_reading_a_missing_file_is_an_error(work: WorkRepo, tmp_path: Path) -> None:
    """A path the commit does not hold is an InputError naming it."""
    with pytest.raises(InputError) as err:
        _source(work, tmp_path).snapshot("main").read("nope.txt")
    assert err.value.where == "nope.txt"


# -- opening and resolving ------------------------------------------------------------------------------
def test_a_missing_path_is_a_source_error(tmp_path: Path) -> None:
    """A repository path that does not exist is a SourceError naming it."""
    with pytest.raises(SourceError, match="does not exist"):
        GitSource(str(tmp_path / "nowhere"), "main", tmp_path / "data")


def test_a_directory_that_is_not_a_repository_is_a_source_error(tmp_path: Path) -> None:
    """A plain directory is a SourceError that says it is not a git repository."""
    (tmp_path / "plain").mkdir()
    with pytest.raises(SourceError, match="not a git repository"):
        GitSource(str(tmp_path / "plain"), "main", tmp_path / "data")


def test_a_corrupt_repository_is_a_source_error(tmp_path: Path) -> None:
    """A .git whose config is garbage cannot be opened: a SourceError, not a pygit2 traceback."""
    repo = WorkRepo(tmp_path / "broken")
    repo.commit({"a": "1"})
    (repo.path / ".git" / "config").write_bytes(b"[core\x00\xff garbage")
    with pytest.raises(SourceError, match="cannot open repository"):
        GitSource(str(repo.path), "main", tmp_path / "data")


def test_a_subdirectory_of_a_work_tree_opens_its_repository(work: WorkRepo, tmp_path: Path) -> None:
    """--repo may point inside a work tree; the repository is discovered upwards."""
    source = GitSource(str(work.path / "dir"), "main", tmp_path / "data")
    assert source.head() == git(work.path, "rev-parse", "HEAD")


def test_resolve_accepts_expressions_and_refuses_unknown_revisions(work: WorkRepo, tmp_path: Path) -> None:
    """Branch names, HEAD~n and short ids resolve to full commit ids; an unknown one is a SourceError."""
    first = git(work.path, "rev-parse", "HEAD")
    second = work.commit({"a.txt": "2\n"})
    source = _source(work, tmp_path)
    assert source.resolve("main") == second
    assert source.resolve("HEAD~1") == first
    assert source.resolve(first[:10]) == first
    with pytest.raises(SourceError, match="unknown revision 'no-such-branch'"):
        source.resolve("no-such-branch")


def test_new_commits_are_oldest_first_and_limited(work: WorkRepo, tmp_path: Path) -> None:
    """new_commits(old, new) lists what `new` adds over `old`, oldest first; `limit` keeps the newest."""
    first = git(work.path, "rev-parse", "HEAD")
    ids = [work.commit({"a.txt": f"{i}\n"}, f"c{i}") for i in range(4)]
    source = _source(work, tmp_path)
    assert [c.id for c in source.new_commits(first, ids[-1])] == ids
    assert [c.id for c in source.new_commits(None, ids[-1])] == [first, *ids]
    assert [c.id for c in source.new_commits(first, ids[-1], limit=2)] == ids[-2:]
    assert source.new_commits(ids[-1], ids[-1]) == []
    assert [c.message.strip() for c in source.new_commits(ids[1], ids[-1])] == ["c2", "c3"]


def test_deleted_local_branch_gives_no_head(work: WorkRepo, tmp_path: Path) -> None:
    """When the watched branch is deleted, head() is None (not an error); resolve of it fails clearly."""
    source = _source(work, tmp_path)
    assert source.head() is not None
    git(work.path, "checkout", "-q", "--detach")
    git(work.path, "update-ref", "-d", "refs/heads/main")
    assert source.head() is None
    with pytest.raises(SourceError):
        source.resolve("main")


# -- remotes --------------------------------------------------------------------------------------------
@pytest.fixture
def remote(tmp_path: Path) -> tuple[WorkRepo, Path]:
    """A work repo pushing to a bare `origin` that allows deleting its default branch."""
    origin = bare_repo(tmp_path / "origin.git")
    git(origin, "config", "receive.denyDeleteCurrent", "ignore")
    work = WorkRepo(tmp_path / "work", remote=origin)
    work.commit({"a.txt": "1\n"}, "one")
    work.push()
    return work, origin


def test_a_file_url_is_mirrored_and_fetched(remote: tuple[WorkRepo, Path], tmp_path: Path) -> None:
    """A URL source mirrors into the data dir; head() follows the remote only after fetch()."""
    work, origin = remote
    source = GitSource(f"file://{origin}", "main", tmp_path / "data")
    assert source.remote
    assert (tmp_path / "data" / "mirror.git" / "HEAD").exists()
    assert source.head() is None
    source.fetch()
    assert source.head() == git(work.path, "rev-parse", "HEAD")
    second = work.commit({"a.txt": "2\n"}, "two")
    work.push()
    assert source.head() != second
    source.fetch()
    assert source.head() == second
    assert source.snapshot("main").read("a.txt") == b"2\n"
    again = GitSource(f"file://{origin}", "main", tmp_path / "data")
    assert again.head() == second


def test_force_push_replaces_the_mirrored_history(remote: tuple[WorkRepo, Path], tmp_path: Path) -> None:
    """After a force push, fetch follows the rewritten branch; the old head is no ancestor of the new one."""
    work, origin = remote
    base = git(work.path, "rev-parse", "HEAD")
    old = work.commit({"a.txt": "old\n"}, "old")
    work.push()
    source = GitSource(f"file://{origin}", "main", tmp_path / "data")
    source.fetch()
    assert source.head() == old
    git(work.path, "reset", "-q", "--hard", base)
    new = work.commit({"a.txt": "rewritten\n"}, "rewritten")
    work.push("--force")
    source.fetch()
    assert source.head() == new
    assert not source.is_ancestor(old, new)
    assert source.is_ancestor(base, new)
    assert [c.id for c in source.new_commits(old, new)] == [new]
    assert source.snapshot("main").read("a.txt") == b"rewritten\n"


def test_a_branch_deleted_on_the_remote_gives_no_head_after_fetch(
    remote: tuple[WorkRepo, Path], tmp_path: Path
) -> None:
    """Fetch prunes a deleted branch: head() becomes None and the mirror keeps working."""
    work, origin = remote
    source = GitSource(f"file://{origin}", "main", tmp_path / "data")
    source.fetch()
    assert source.head() is not None
    git(work.path, "push", "-q", "origin", ":main")
    source.fetch()
    assert source.head() is None
    work.push()
    source.fetch()
    assert source.head() == git(work.path, "rev-parse", "HEAD")


def test_an_unreachable_remote_is_a_source_error_without_credentials(tmp_path: Path) -> None:
    """A failed fetch is a SourceError whose message carries no user:password from the URL."""
    source = GitSource("file://user:hunter2@localhost/nonexistent/repo.git", "main", tmp_path / "data")
    with pytest.raises(SourceError) as err:
        source.fetch()
    assert "hunter2" not in err.value.render()
    assert "fetch" in err.value.what


# -- notes ----------------------------------------------------------------------------------------------
def test_notes_are_written_under_refs_notes_stratum_and_replaced(work: WorkRepo, tmp_path: Path) -> None:
    """add_note writes a note git itself reads under refs/notes/stratum; a second note replaces the first."""
    source = _source(work, tmp_path)
    head = git(work.path, "rev-parse", "HEAD")
    assert source.note(head) is None
    source.add_note("main", "stratum: succeeded\n")
    assert source.note(head) == "stratum: succeeded\n"
    assert git(work.path, "notes", "--ref", NOTES_REF, "show", head) == "stratum: succeeded"
    source.add_note(head, "stratum: rolled_back\n")
    assert git(work.path, "notes", "--ref", NOTES_REF, "show", head) == "stratum: rolled_back"
    assert git(work.path, "notes", "show", head, check=False) == ""


# -- helpers --------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "location, expected",
    [
        ("file:///srv/ops.git", True),
        ("https://example.com/ops.git", True),
        ("git@github.com:org/ops.git", True),
        ("ssh://git@host/ops", True),
        ("/srv/ops", False),
        ("relative/ops", False),
        ("ops", False),
    ],
)
def test_is_url(location: str, expected: bool) -> None:
    """URLs (scheme or scp-like) are remotes; anything else is a local path."""
    assert is_url(location) is expected


def test_sanitize_url_strips_credentials() -> None:
    """user:password@ disappears from logged URLs."""
    assert sanitize_url("https://bob:s3cret@example.com/ops.git") == "https://example.com/ops.git"


@pytest.mark.parametrize("path, clean", [("a/b", "a/b"), ("./a//b/", "a/b"), ("a/./b", "a/b")])
def test_safe_relpath_normalises(path: str, clean: str) -> None:
    """Redundant separators and `.` components are removed."""
    assert safe_relpath(path) == clean


@pytest.mark.parametrize("path", ["", "/etc/passwd", "a/../../b", "..", "a\\b", "a\x00b", "./."])
def test_safe_relpath_refuses_escapes(path: str) -> None:
    """Absolute paths, `..`, backslashes, NUL and empty paths are refused."""
    with pytest.raises(ValueError):
        safe_relpath(path)


def _commit_raw_name(work: WorkRepo, raw: bytes, content: bytes = b"x\n") -> str:
    """Commit a file whose name is the raw bytes `raw` (not necessarily UTF-8)."""
    target = os.path.join(os.fsencode(work.path), raw)
    os.makedirs(os.path.dirname(target), exist_ok=True)
    with open(target, "wb") as fh:
        fh.write(content)
    return work.commit()


def test_scan_counts_files_and_escapes_bad_names(work: WorkRepo, tmp_path: Path) -> None:
    """scan() counts every file and lists names that are not UTF-8 or hold control characters, escaped."""
    work.write({"ok/ünïcode.txt": "fine\n"})
    _commit_raw_name(work, b"bad\xff\xfe.txt")
    _commit_raw_name(work, b"line\nbreak.txt")
    snap = GitSource(str(work.path), "main", tmp_path / "data").snapshot("main")
    found = snap.scan()
    assert sorted(found.bad_names) == ["bad\\xff\\xfe.txt", "line\\x0abreak.txt"]
    assert found.files == len(snap.entries()) and not found.over_cap
    assert all(e.path.encode("utf-8") for e in snap.entries())     # no surrogate ever leaves the snapshot


def test_scan_stops_past_the_cap(work: WorkRepo, tmp_path: Path) -> None:
    """Counting stops one file past the cap: a huge tree costs no more than the cap to check."""
    work.commit({f"f{i}.txt": str(i) for i in range(30)})
    found = GitSource(str(work.path), "main", tmp_path / "data").snapshot("main").scan(max_files=10)
    assert (found.files, found.over_cap) == (11, True)


def test_a_non_utf8_name_rejects_the_run_with_the_path_escaped(tmp_path: Path) -> None:
    """A non-UTF-8 file name rejects the revision at validate (it failed in DuckDB with a surrogate error);
    the last good revision stays, and the changed-file index holds the escaped path."""
    from tests.fixtures import Stack, infra, resource
    work = WorkRepo(tmp_path / "repo")
    work.commit({"infra/a.ncl": infra(resource("a", "file", path="a", content="x"))})
    stack = Stack(tmp_path, work.path)
    try:
        good = stack.run()
        assert good.status == "succeeded"
        _commit_raw_name(work, b"notes/\xff.txt")
        bad = stack.run()
        assert bad.status == "rejected"
        assert [p.path for p in bad.problems if p.reconciler == "source"] == ["notes/\\xff.txt"]
        assert stack.state("last_good_revision") == good.revision
    finally:
        stack.close()


def test_the_file_cap_rejects_a_revision_and_a_repo_may_only_lower_it(tmp_path: Path) -> None:
    """Over the host cap the revision is refused before loading; stratum.ncl's max_files lowers the cap but
    never raises it above the host's."""
    from tests.fixtures import Stack, infra, resource
    work = WorkRepo(tmp_path / "repo")
    work.commit({"infra/a.ncl": infra(resource("a", "file", path="a", content="x")),
                 **{f"notes/{i}.txt": str(i) for i in range(20)}})
    stack = Stack(tmp_path, work.path)
    try:
        stack.pipeline.max_files = 10
        over = stack.run()
        assert over.status == "rejected" and "over 10 files" in over.problems[0].message
        stack.pipeline.max_files = 100
        assert stack.run().status == "succeeded"
        work.commit({"stratum.ncl": "{ max_files = 5 }\n"})
        lowered = stack.run()
        assert lowered.status == "rejected"
        assert [(p.path, "over the cap of 5" in p.message) for p in lowered.problems] == [("stratum.ncl", True)]
        work.commit({"stratum.ncl": "{ max_files = 1000 }\n"})
        stack.pipeline.max_files = 15
        bounded = stack.run()
        assert bounded.status == "rejected" and "over 15 files" in bounded.problems[0].message
    finally:
        stack.close()
