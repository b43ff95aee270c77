"""Graph rules (reconcilers/knowledge/graph.py): duplicates, dangling links, supersedes, neighbourhoods."""

from __future__ import annotations

from reconcilers.knowledge.contract import Contract
from reconcilers.knowledge.loader import check
from reconcilers.knowledge.node import parse

A, B, C = ("aaaaaaaa-0000-4000-8000-00000000000a", "bbbbbbbb-0000-4000-8000-00000000000b",
           "cccccccc-0000-4000-8000-00000000000c")


def node(path: str, nid: str, extra: str = "", body: str = "", ntype: str = "decision", status: str = "accepted"):
    text = f"---\nid: {nid}\ntype: {ntype}\ntitle: {path}\nstatus: {status}\n{extra}---\n{body}\n"
    return parse(f"knowledge/{path}.md", f"blob-{path}-{hash(text)}", text)


def test_duplicate_ids_are_reported_on_both_files_and_the_first_is_kept() -> None:
    checked = check([node("one", A), node("two", A)], Contract())
    assert [n.path for n in checked.nodes] == ["knowledge/one.md"]
    assert [(q.path, q.line, q.message.split("(")[1]) for q in checked.problems] == [
        ("knowledge/one.md", 2, "also in knowledge/two.md)"), ("knowledge/two.md", 2, "also in knowledge/one.md)")]


def test_links_to_nowhere_are_errors_but_external_ids_are_not() -> None:
    checked = check([node("one", A, body="see [[Missing Page]] and [[infra:web-1]] and [[vault:db/creds]]")],
                    Contract())
    assert [(q.line, "link to nowhere" in q.message) for q in checked.problems] == [(7, True)]


def test_dangling_links_are_allowed_when_configured() -> None:
    assert check([node("one", A, body="[[Missing]]")], Contract(), allow_dangling=True).problems == ()


def test_a_supersedes_cycle_is_an_error() -> None:
    checked = check([node("one", A, f"supersedes: [{B}]\n", status="superseded"),
                     node("two", B, f"supersedes: [{A}]\n", status="superseded")], Contract())
    assert any("supersedes cycle" in q.message for q in checked.problems)


def test_an_accepted_decision_superseded_by_a_draft_is_an_error() -> None:
    checked = check([node("old", A), node("new", B, f"supersedes: [{A}]\n", status="proposed")], Contract())
    [problem] = checked.problems
    assert problem.path == "knowledge/new.md" and problem.line == 6 and "accepted decision" in problem.message


def test_links_resolve_by_title_and_stem_and_the_neighbourhood_goes_both_ways() -> None:
    checked = check([node("one", A, body="[[two]]"), node("two", B, body="[[depends_on::three]]"),
                     node("three", C)], Contract())
    assert checked.problems == ()
    ids, edges = checked.graph.neighbourhood(B, 1)
    assert set(ids) == {A, B, C} and {(e.source, e.rel, e.resolved) for e in edges} == {
        (A, "relates_to", B), (B, "depends_on", C)}
    assert "digraph" in checked.graph.dot(ids, edges)
