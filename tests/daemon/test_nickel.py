"""Nickel evaluation in the bounded worker: batches, located errors, imports confined to the commit, the
library contract, timeouts, memory limits and the blob-id cache."""

from __future__ import annotations

import os
import re
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from daemon.git.source import GitSource, Snapshot
from daemon.nickel.evaluator import Evaluator, parse_error
from tests.fixtures import WorkRepo, infra, resource

INFRA = '(import "infra.ncl").Config'
LOCATED = re.compile(r"^(?P<path>[\w./-]+):(?P<line>\d+):(?P<col>\d+): (?P<message>.+)$")


@pytest.fixture
def evaluator(tmp_path: Path) -> Iterator[Evaluator]:
    """An evaluator with a short deadline, its worker stopped afterwards."""
    ev = Evaluator(tmp_path / "cache", timeout=5.0)
    yield ev
    ev.close()


def snap_of(repo: WorkRepo, tmp: Path, files: dict[str, str | bytes | None]) -> Snapshot:
    """Commit `files` and return the snapshot of the new commit."""
    repo.commit(files)
    return GitSource(str(repo.path), "main", tmp / "data").snapshot("main")


def _worker_pid(ev: Evaluator) -> int | None:
    proc = ev._workers[0].proc
    return proc.pid if proc is not None and proc.poll() is None else None


# -- batches and values ---------------------------------------------------------------------------------
def test_many_files_are_evaluated_in_one_call(repo: WorkRepo, tmp_path: Path, evaluator: Evaluator) -> None:
    """Five valid files cost one worker evaluation and each gets its own decoded value."""
    files = {
        f"infra/f{i}.ncl": infra(resource(f"r{i}", "file", path=f"p{i}", content=str(i))) for i in range(5)
    }
    snap = snap_of(repo, tmp_path, files)
    result = evaluator.evaluate(snap, sorted(files), INFRA)
    assert result.problems == ()
    assert evaluator.stats["evaluations"] == 1
    assert sorted(result.values) == sorted(files)
    assert result.values["infra/f3.ncl"]["resources"]["r3"]["content"] == "3"
    assert result.values["infra/f3.ncl"]["resources"]["r3"]["prune"] is True      # the contract's default


def test_one_bad_file_is_pinned_by_per_file_fallback(
    repo: WorkRepo, tmp_path: Path, evaluator: Evaluator
) -> None:
    """When the batch fails, it is halved until the bad file stands alone: good ones keep values, the bad one
    is located."""
    snap = snap_of(
        repo,
        tmp_path,
        {
            "infra/a.ncl": infra(resource("a", "file", path="a", content="a")),
            "infra/bad.ncl": "{\n  resources = {\n"
            + '    b = { kind = \'file, path = "b" content = "x" },\n  },\n}\n',
            "infra/c.ncl": infra(resource("c", "directory", path="c")),
        },
    )
    result = evaluator.evaluate(snap, ["infra/a.ncl", "infra/bad.ncl", "infra/c.ncl"], INFRA)
    assert sorted(result.values) == ["infra/a.ncl", "infra/c.ncl"]
    assert evaluator.stats["evaluations"] == 1 + 4       # the batch; [a] ok; [bad, c] fails; [bad]; [c]
    [problem] = result.problems
    assert (problem.path, problem.line) == ("infra/bad.ncl", 3)


@pytest.mark.parametrize(
    "body, line, col, words",
    [
        (
            '{\n  resources = {\n    b = { kind = \'file, path = "b" content = "x" },\n  },\n}\n',
            3,
            44,
            "unexpected token",
        ),
        (infra(resource("b", "file", path="../x", content="x")), 3, 32, "contains `..`"),
        (infra(resource("b", "file", path="/etc/x", content="x")), 3, 32, "is absolute"),
        (infra(resource("b", "file", path="x", content="x", mode="999")), 3, 59, "octal"),
        (infra(resource("b", "file", path="x", content="x", colour="red")), 3, 9, "extra field `colour`"),
        (infra(resource("b", "volcano", path="x")), 3, 9, "unknown kind `volcano`"),
        (infra(resource("b", "command", run=3)), 3, 34, "contract broken"),
    ],
)
def test_errors_are_located_as_path_line_col_without_ansi(
    repo: WorkRepo, tmp_path: Path, evaluator: Evaluator, body: str, line: int, col: int, words: str
) -> None:
    """Syntax errors and contract violations render as `path:line:col: message`, never with ANSI codes."""
    snap = snap_of(repo, tmp_path, {"infra/x.ncl": body})
    [problem] = evaluator.evaluate(snap, ["infra/x.ncl"], INFRA).problems
    text = str(problem)
    assert "\x1b" not in text and "\x1b" not in problem.message
    m = LOCATED.match(text)
    assert m is not None, text
    assert (m["path"], int(m["line"]), int(m["col"])) == ("infra/x.ncl", line, col)
    assert words in m["message"]
    assert str(tmp_path) not in text


def test_an_error_in_an_imported_file_is_located_in_that_file(
    repo: WorkRepo, tmp_path: Path, evaluator: Evaluator
) -> None:
    """A syntax error in an imported file points at the imported file and line, not the importer."""
    snap = snap_of(
        repo,
        tmp_path,
        {
            "lib/common.ncl": "{\n  mode = ,\n}\n",
            "infra/a.ncl": 'let c = import "../lib/common.ncl" in\n'
            + infra('    a = { kind = \'file, path = "a", content = "a", mode = c.mode },'),
        },
    )
    [problem] = evaluator.evaluate(snap, ["infra/a.ncl"], INFRA).problems
    assert (problem.path, problem.line, problem.col) == ("lib/common.ncl", 2, 10)


def test_parse_error_strips_the_work_directory(tmp_path: Path) -> None:
    """A raw Nickel report naming a materialized file becomes a repo-relative location."""
    work = tmp_path / "work"
    report = (
        f"error: unbound identifier `foo`\n    ┌─ {work}/infra/a.ncl:7:12\n  │\n7 │   x = foo,\n"
        "  │       ^^^ this identifier is unbound\n"
    )
    problem = parse_error(report, work, "infra/a.ncl")
    assert str(problem) == "infra/a.ncl:7:12: unbound identifier `foo`"


# -- imports confined to the commit ------------------------------------------------------------------------
def test_an_absolute_import_is_refused_before_evaluation(
    repo: WorkRepo, tmp_path: Path, evaluator: Evaluator
) -> None:
    """`import "/etc/hostname" as 'Text` is refused with its line, and the worker is never asked."""
    snap = snap_of(
        repo,
        tmp_path,
        {
            "infra/a.ncl": '# reads the host\nlet h = import "/etc/hostname" as \'Text in\n' + infra(""),
        },
    )
    result = evaluator.evaluate(snap, ["infra/a.ncl"], INFRA)
    [problem] = result.problems
    assert (problem.path, problem.line) == ("infra/a.ncl", 2)
    assert "'/etc/hostname' leaves the repository" in problem.message
    assert result.values == {}
    assert evaluator.stats["evaluations"] == 0


@pytest.mark.parametrize(
    "template",
    [
        'let h = import "{target}" as \'Text in {{ resources = {{}}, h = h }}',
        '{{ resources = {{}}, h = "%{{import "{target}" as \'Text}}" }}',
        '{{ resources = {{}}, h = m%"\n  %{{import "{target}" as \'Text}}\n"% }}',
        '{{ resources = {{}}, h = if false then import "{target}" as \'Text else "" }}',
    ],
)
def test_a_host_file_is_never_read_through_any_import_form(
    repo: WorkRepo, tmp_path: Path, evaluator: Evaluator, template: str
) -> None:
    """A FIFO outside the repo would block any reader: every import form of it is refused, none hangs."""
    fifo = tmp_path / "outside.fifo"
    os.mkfifo(fifo)
    evaluator.timeout = 3.0
    snap = snap_of(repo, tmp_path, {"a.ncl": template.format(target=fifo)})
    started = time.monotonic()
    result = evaluator.evaluate(snap, ["a.ncl"])
    assert time.monotonic() - started < evaluator.timeout
    [problem] = result.problems
    assert "leaves the repository" in problem.message and problem.path == "a.ncl"
    assert evaluator.stats["evaluations"] == 0


@pytest.mark.parametrize(
    "target", ["../outside.ncl", "../../outside.ncl", "sub/../../outside.ncl", "../cache/work/x.ncl"]
)
def test_dotdot_imports_that_leave_the_repository_are_refused(
    repo: WorkRepo, tmp_path: Path, evaluator: Evaluator, target: str
) -> None:
    """An import climbing above the repository root is refused, even when the file exists on the host."""
    (tmp_path / "outside.ncl").write_text('{ secret = "host" }\n')
    snap = snap_of(repo, tmp_path, {"a.ncl": f'{{ v = import "{target}" }}\n'})
    [problem] = evaluator.evaluate(snap, ["a.ncl"]).problems
    assert "leaves the repository" in problem.message
    assert (problem.path, problem.line) == ("a.ncl", 1)


def test_dotdot_imports_inside_the_repository_are_allowed(
    repo: WorkRepo, tmp_path: Path, evaluator: Evaluator
) -> None:
    """`../lib/x.ncl` from infra/ stays in the commit and evaluates."""
    snap = snap_of(
        repo, tmp_path, {"lib/x.ncl": "{ n = 42 }\n", "infra/a.ncl": '{ v = (import "../lib/x.ncl").n }\n'}
    )
    result = evaluator.evaluate(snap, ["infra/a.ncl"])
    assert result.problems == ()
    assert result.values == {"infra/a.ncl": {"v": 42}}


def test_a_committed_symlink_cannot_be_imported(repo: WorkRepo, tmp_path: Path, evaluator: Evaluator) -> None:
    """A symlink in the commit (to a host file or a repo file) is refused as an import and as a file."""
    (tmp_path / "outside.ncl").write_text('{ secret = "host" }\n')
    repo.write({"real.ncl": "{ n = 1 }\n"})
    (repo.path / "out.ncl").symlink_to(tmp_path / "outside.ncl")
    (repo.path / "in.ncl").symlink_to("real.ncl")
    snap = snap_of(
        repo, tmp_path, {"a.ncl": '{ v = import "out.ncl" }\n', "b.ncl": '{ v = import "in.ncl" }\n'}
    )
    result = evaluator.evaluate(snap, ["a.ncl", "b.ncl", "out.ncl"])
    assert result.values == {}
    assert sorted((p.path, p.message) for p in result.problems) == [
        ("in.ncl", "symlinks cannot be imported"),
        ("out.ncl", "symlinks cannot be imported"),
        ("out.ncl", "symlinks cannot be imported"),
    ]


@pytest.mark.parametrize("in_memory", [False, True])
def test_files_outside_the_commit_are_not_importable(repo: WorkRepo, tmp_path: Path, in_memory: bool) -> None:
    """An untracked file in the work tree, and a file of an earlier commit still materialized in the cache
    (on disk; a work tree in memory is emptied after each evaluation), are refused: imports only see the
    evaluated commit."""
    evaluator = Evaluator(tmp_path / "cache", timeout=5.0, in_memory=in_memory)
    try:
        _outside_the_commit(repo, tmp_path, evaluator)
        assert evaluator._scratch.in_memory == (in_memory and evaluator.workdir.parent == Path("/dev/shm"))
    finally:
        evaluator.close()
    assert evaluator.workdir.exists() != evaluator._scratch.in_memory       # closing removes a memory one


def _outside_the_commit(repo: WorkRepo, tmp_path: Path, evaluator: Evaluator) -> None:
    snap1 = snap_of(
        repo, tmp_path, {"common.ncl": "{ n = 1 }\n", "a.ncl": '{ v = (import "common.ncl").n }\n'}
    )
    assert evaluator.evaluate(snap1, ["a.ncl"]).values == {"a.ncl": {"v": 1}}
    assert (evaluator.workdir / "common.ncl").exists() != evaluator._scratch.in_memory
    snap2 = snap_of(repo, tmp_path, {"common.ncl": None, "a.ncl": '{ v = (import "common.ncl").n, w = 2 }\n'})
    repo.write({"common.ncl": "{ n = 99 }\n"})
    [problem] = evaluator.evaluate(snap2, ["a.ncl"]).problems
    assert "'common.ncl' leaves the repository or names no file of this commit" in problem.message


def test_an_unscannable_import_is_refused_with_its_line(
    repo: WorkRepo, tmp_path: Path, evaluator: Evaluator
) -> None:
    """An import of a computed path cannot be checked, so the file is refused at that line."""
    snap = snap_of(repo, tmp_path, {"a.ncl": 'let p = "/etc/hostname" in\n{ v = import p }\n'})
    [problem] = evaluator.evaluate(snap, ["a.ncl"]).problems
    assert (problem.path, problem.line) == ("a.ncl", 2)
    assert "plain string literal" in problem.message


def test_a_root_infra_ncl_cannot_replace_the_library_contract(
    repo: WorkRepo, tmp_path: Path, evaluator: Evaluator
) -> None:
    """A repo's own infra.ncl with a permissive Config does not stand in for Stratum's contract."""
    snap = snap_of(
        repo,
        tmp_path,
        {
            "infra.ncl": "{ Config = { .. }, Resource = std.contract.Dyn }\n",
            "infra/a.ncl": infra(resource("a", "file", path="../../etc/passwd", content="pwned")),
        },
    )
    [problem] = evaluator.evaluate(snap, ["infra/a.ncl"], INFRA).problems
    assert (problem.path, problem.line) == ("infra/a.ncl", 3)
    assert "contains `..`" in problem.message


def test_library_files_are_importable_by_name(repo: WorkRepo, tmp_path: Path, evaluator: Evaluator) -> None:
    """A repo file may import Stratum's library by bare name, and its exported contracts work."""
    snap = snap_of(
        repo,
        tmp_path,
        {
            "a.ncl": 'let i = import "infra.ncl" in { m | i.Mode = "0600", d | i.Id = "web-1" }\n',
            "b.ncl": 'let i = import "infra.ncl" in { m | i.Mode = "rwx" }\n',
            "c.ncl": 'let s = import "stratum.ncl" in { p | s.RelPath = "srv/app" }\n',
        },
    )
    result = evaluator.evaluate(snap, ["a.ncl", "b.ncl", "c.ncl"])
    assert result.values == {"a.ncl": {"m": "0600", "d": "web-1"}, "c.ncl": {"p": "srv/app"}}
    [problem] = result.problems
    assert (problem.path, problem.line) == ("b.ncl", 1)
    assert "octal string" in problem.message


@pytest.mark.parametrize(
    "content, words",
    [
        (b'{ a = "caf\xe9" }\n', "UTF-8"),
        (b"{ a = 1 }\x00\x00", "binary"),
        (b'{ a = "' + b"x" * (1024 * 1024 + 10) + b'" }', "limit"),
    ],
)
def test_undecodable_or_oversized_nickel_files_are_problems(
    repo: WorkRepo, tmp_path: Path, evaluator: Evaluator, content: bytes, words: str
) -> None:
    """Non-UTF-8, binary and oversized .ncl files become problems naming the file, nothing is evaluated."""
    snap = snap_of(repo, tmp_path, {"infra/x.ncl": content})
    [problem] = evaluator.evaluate(snap, ["infra/x.ncl"], INFRA).problems
    assert problem.path == "infra/x.ncl"
    assert words in problem.message
    assert evaluator.stats["evaluations"] == 0


# -- bounded worker ----------------------------------------------------------------------------------------
def test_endless_recursion_is_killed_and_the_worker_keeps_serving(
    repo: WorkRepo, tmp_path: Path, evaluator: Evaluator
) -> None:
    """A non-terminating file times out as a problem, the worker is replaced, and the next file evaluates;
    meanwhile the calling process stays responsive (the GIL is not held by the evaluation)."""
    evaluator.timeout = 1.5
    snap = snap_of(
        repo,
        tmp_path,
        {"loop.ncl": "let rec f = fun x => f (x + 1) in\nf 0\n", "ok.ncl": "{ fine = true }\n"},
    )
    assert evaluator.evaluate(snap, ["ok.ncl"]).values == {"ok.ncl": {"fine": True}}
    first_pid = _worker_pid(evaluator)
    ticks = 0
    result: list[object] = []
    thread = threading.Thread(target=lambda: result.append(evaluator.evaluate(snap, ["loop.ncl"])))
    thread.start()
    while thread.is_alive():
        ticks += 1
        time.sleep(0.01)
    thread.join()
    assert ticks > 20
    [problem] = result[0].problems  # type: ignore[attr-defined]
    assert problem.path == "loop.ncl"
    assert "did not finish within 1.5 s" in problem.message
    assert first_pid is not None
    with pytest.raises(ProcessLookupError):
        os.kill(first_pid, 0)
    snap2 = snap_of(repo, tmp_path, {"ok.ncl": '{ fine = "again" }\n'})
    assert evaluator.evaluate(snap2, ["ok.ncl"]).values == {"ok.ncl": {"fine": "again"}}
    assert _worker_pid(evaluator) not in (None, first_pid)


def test_memory_limit_stops_a_runaway_evaluation(repo: WorkRepo, tmp_path: Path) -> None:
    """An evaluation over the worker's memory limit is a problem, and a new worker serves the next file."""
    ev = Evaluator(tmp_path / "cache", timeout=30.0, memory_mb=400)
    try:
        snap = snap_of(
            repo,
            tmp_path,
            {
                "big.ncl": "std.array.length (std.array.generate (fun i => [i, i, i, i]) 50000000)\n",
                "ok.ncl": "{ n = 1 }\n",
            },
        )
        [problem] = ev.evaluate(snap, ["big.ncl"]).problems
        assert problem.path == "big.ncl"
        assert "out of memory" in problem.message
        assert ev.evaluate(snap, ["ok.ncl"]).values == {"ok.ncl": {"n": 1}}
    finally:
        ev.close()


# -- cache ------------------------------------------------------------------------------------------------
def test_unchanged_blobs_are_served_from_the_cache(
    repo: WorkRepo, tmp_path: Path, evaluator: Evaluator
) -> None:
    """Re-evaluating the same blobs (even in a new commit touching other files) costs no evaluation."""
    snap1 = snap_of(repo, tmp_path, {"a.ncl": "{ n = 1 }\n", "b.ncl": "{ n = 2 }\n"})
    assert evaluator.evaluate(snap1, ["a.ncl", "b.ncl"]).values == {"a.ncl": {"n": 1}, "b.ncl": {"n": 2}}
    assert evaluator.stats == {"evaluations": 1, "cache_hits": 0}
    snap2 = snap_of(repo, tmp_path, {"b.ncl": "{ n = 3 }\n", "README.md": "unrelated\n"})
    assert evaluator.evaluate(snap2, ["a.ncl", "b.ncl"]).values == {"a.ncl": {"n": 1}, "b.ncl": {"n": 3}}
    assert evaluator.stats == {"evaluations": 2, "cache_hits": 1}
    assert evaluator.evaluate(snap2, ["a.ncl", "b.ncl"]).problems == ()
    assert evaluator.stats == {"evaluations": 2, "cache_hits": 3}


def test_a_changed_import_invalidates_the_importer(
    repo: WorkRepo, tmp_path: Path, evaluator: Evaluator
) -> None:
    """The cache key covers every imported blob: changing an imported file re-evaluates the importer."""
    snap1 = snap_of(repo, tmp_path, {"lib.ncl": "{ n = 1 }\n", "a.ncl": '{ v = (import "lib.ncl").n }\n'})
    assert evaluator.evaluate(snap1, ["a.ncl"]).values == {"a.ncl": {"v": 1}}
    snap2 = snap_of(repo, tmp_path, {"lib.ncl": "{ n = 2 }\n"})
    assert evaluator.evaluate(snap2, ["a.ncl"]).values == {"a.ncl": {"v": 2}}
    assert evaluator.stats == {"evaluations": 2, "cache_hits": 0}


def test_the_contract_is_part_of_the_cache_key(repo: WorkRepo, tmp_path: Path, evaluator: Evaluator) -> None:
    """The same file evaluated with and without a contract is two cache entries with different values."""
    snap = snap_of(repo, tmp_path, {"infra/a.ncl": infra(resource("a", "directory", path="d"))})
    plain = evaluator.evaluate(snap, ["infra/a.ncl"]).values["infra/a.ncl"]
    checked = evaluator.evaluate(snap, ["infra/a.ncl"], INFRA).values["infra/a.ncl"]
    assert "mode" not in plain["resources"]["a"]
    assert checked["resources"]["a"]["mode"] == "0755"
    assert evaluator.stats == {"evaluations": 2, "cache_hits": 0}


def test_an_idle_worker_exits_and_the_next_evaluation_starts_a_new_one(
    repo: WorkRepo, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A worker with nothing to do exits on its own (returning its memory); the next evaluation still works."""
    import daemon.nickel.evaluator as nickel_module

    monkeypatch.setattr(nickel_module, "WORKER_IDLE_S", 0.3)
    ev = Evaluator(tmp_path / "cache", timeout=5.0)
    try:
        snap = snap_of(repo, tmp_path, {"infra/a.ncl": infra(resource("a", "file", path="a", content="1"))})
        assert ev.evaluate(snap, ["infra/a.ncl"], INFRA).problems == ()
        proc = ev._workers[0].proc
        assert proc is not None
        assert proc.wait(timeout=10) == 0, "the idle worker exits cleanly"
        snap = snap_of(repo, tmp_path, {"infra/a.ncl": infra(resource("a", "file", path="a", content="2"))})
        result = ev.evaluate(snap, ["infra/a.ncl"], INFRA)
        assert result.problems == ()
        assert result.values["infra/a.ncl"]["resources"]["a"]["content"] == "2"
    finally:
        ev.close()
