"""Deep nesting in Nickel sources, imported JSON/TOML/YAML and computed values ends as located problems, never
as a dead worker with no line or a RecursionError traceback."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from daemon.git.source import GitSource, Snapshot
from daemon.nickel.evaluator import Evaluator
from daemon.nickel.scan import MAX_NESTING, NestingError, data_nesting_error, scan_imports
from tests.fixtures import WorkRepo, infra, resource

INFRA = '(import "infra.ncl").Config'
OK = infra(resource("a", "file", path="a", content="x"))


@pytest.fixture
def evaluator(tmp_path: Path) -> Iterator[Evaluator]:
    """An evaluator with its worker stopped afterwards."""
    ev = Evaluator(tmp_path / "cache", timeout=10.0)
    yield ev
    ev.close()


def snap_of(repo: WorkRepo, tmp: Path, files: dict[str, str | bytes | None]) -> Snapshot:
    """Commit `files` and return the snapshot of the new commit."""
    repo.commit(files)
    return GitSource(str(repo.path), "main", tmp / "data").snapshot("main")


def test_the_scanner_refuses_deep_brackets_at_their_line() -> None:
    """Brackets in code nested past the cap raise NestingError at the line where the cap is passed."""
    src = "let x = 1 in\n" + "[" * 300 + "]" * 300
    with pytest.raises(NestingError) as info:
        scan_imports(src)
    assert info.value.line == 2


def test_brackets_inside_strings_and_comments_do_not_count() -> None:
    """A string or comment full of brackets is not nesting."""
    src = '# ' + "[" * 500 + '\n{ a = "' + "{" * 500 + '", b = m%"' + "(" * 500 + '"% }\n'
    assert scan_imports(src) == []


def test_json_nesting_is_capped_outside_strings() -> None:
    """JSON deeper than the cap is refused at its line; brackets in strings are text."""
    assert data_nesting_error('{"a": "' + "[" * 1000 + '"}') is None
    err = data_nesting_error('{\n"a":\n' + "[" * (MAX_NESTING + 1) + "]" * (MAX_NESTING + 1) + "}")
    assert err is not None and err.line == 3


@pytest.mark.parametrize("depth", [1_500, 150_000])
def test_deeply_nested_nickel_is_a_located_problem(
        repo: WorkRepo, tmp_path: Path, evaluator: Evaluator, depth: int) -> None:
    """1,500 and 150,000 nested brackets (a worker crash before) are a problem at the file's line."""
    snap = snap_of(repo, tmp_path, {"infra/a.ncl": "let d =\n" + "[" * depth + "]" * depth + " in\n" + OK})
    result = evaluator.evaluate(snap, ["infra/a.ncl"], INFRA)
    assert [(p.path, p.line) for p in result.problems] == [("infra/a.ncl", 2)]
    assert "nest over" in result.problems[0].message


@pytest.mark.parametrize("name,body", [
    ("d.json", "[" * 2000 + "]" * 2000),
    ("d.toml", "a = " + "[" * 2000 + "]" * 2000),
    ("d.yaml", "a: " + "[" * 2000 + "]" * 2000),
    ("d.yaml", "a: &a [x, x, x]\nb: [*a, *a, *a]\n"),
])
def test_deep_or_aliased_data_files_imported_by_nickel_are_located(
        repo: WorkRepo, tmp_path: Path, evaluator: Evaluator, name: str, body: str) -> None:
    """A data file Nickel imports is checked before evaluation: deep nesting and YAML aliases are refused."""
    snap = snap_of(repo, tmp_path, {f"infra/{name}": body,
                                    "infra/a.ncl": f'let d = import "{name}" in\n' + OK})
    result = evaluator.evaluate(snap, ["infra/a.ncl"], INFRA)
    assert [p.path for p in result.problems] == [f"infra/{name}"]
    assert result.problems[0].line >= 1


def test_a_computed_value_too_deep_for_python_is_a_problem(
        repo: WorkRepo, tmp_path: Path, evaluator: Evaluator) -> None:
    """A `let rec` that builds a 1,500-deep value (no bracket shows it) is a problem, not a RecursionError."""
    snap = snap_of(repo, tmp_path, {
        "t.j2": "x",
        "infra/a.ncl": "let rec f = fun n => if n == 0 then [] else [f (n - 1)] in\n"
                       "{ resources = { a = { kind = 'file, path = \"a\", template = \"t.j2\", vars = { v = f 1500 } "
                       "} } }\n"})
    result = evaluator.evaluate(snap, ["infra/a.ncl"], INFRA)
    assert [p.path for p in result.problems] == ["infra/a.ncl"]
    assert "nested too deeply" in result.problems[0].message


def test_a_stack_overflow_in_the_worker_names_the_file_and_the_cause(
        repo: WorkRepo, tmp_path: Path, evaluator: Evaluator) -> None:
    """A chain of 20,000 additions overflows Nickel's native stack: the problem names the file and the cause,
    the other files of the batch still evaluate, and the worker serves the next request."""
    files = {f"infra/ok{i}.ncl": infra(resource(f"r{i}", "directory", path=f"d{i}")) for i in range(9)}
    files["infra/chain.ncl"] = "let d = " + "1 + " * 20_000 + "1 in\n" + OK
    snap = snap_of(repo, tmp_path, files)
    result = evaluator.evaluate(snap, sorted(files), INFRA)
    assert [p.path for p in result.problems] == ["infra/chain.ncl"]
    assert "stack overflow" in result.problems[0].message
    assert len(result.values) == 9


def test_many_files_are_evaluated_in_bounded_chunks(repo: WorkRepo, tmp_path: Path, evaluator: Evaluator) -> None:
    """300 files go through several bounded runs (not one huge batch that could overrun the deadline), and a
    bad file among them is still pinned."""
    files = {f"infra/f{i:03d}.ncl": infra(resource(f"r{i}", "directory", path=f"d{i}")) for i in range(300)}
    files["infra/f150.ncl"] = "{ resources = { bad = { kind = 'nope } } }\n"
    snap = snap_of(repo, tmp_path, files)
    before = evaluator.stats["evaluations"]
    result = evaluator.evaluate(snap, sorted(files), INFRA)
    assert [p.path for p in result.problems] == ["infra/f150.ncl"]
    assert len(result.values) == 299
    runs = evaluator.stats["evaluations"] - before
    assert 2 <= runs < 300, runs


def test_the_evaluation_budget_bounds_a_revision_full_of_endless_files(repo: WorkRepo, tmp_path: Path) -> None:
    """Files that each run to the deadline cannot hold a revision for files x deadline: past the budget, the
    files left are reported as not evaluated."""
    loop = "let rec f = fun x => f (x + 1) in { resources = f 0 }\n"
    files = {f"infra/loop{i}.ncl": loop for i in range(12)}
    snap = snap_of(repo, tmp_path, files)
    ev = Evaluator(tmp_path / "cache-budget", timeout=1.0, workers=1, budget=2.5)
    try:
        result = ev.evaluate(snap, sorted(files), INFRA)
    finally:
        ev.close()
    assert sorted(p.path for p in result.problems) == sorted(files)
    assert any("budget ran out" in p.message for p in result.problems)
    assert any("did not finish" in p.message for p in result.problems)
