"""Graph rules (reconcilers/knowledge/graph.py): duplicates, dangling links, supersedes, neighbourhoods."""

from __future__ import annotations

from reconcilers.knowledge.contract import Contract
from reconcilers.knowledge.graph import Graph
from reconcilers.knowledge.loader import check
from reconcilers.knowledge.node import Node, parse

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


# -- incremental updates (a new revision reuses the last one's graph and checks) -----------------------------
def nd(path: str, nid: str, extra: str = "", body: str = "") -> Node:
    parsed = node(path, nid, extra, body)
    assert parsed.node is not None, parsed.problems
    return parsed.node


def _same_graph(updated: Graph, rebuilt: Graph) -> None:
    assert updated.nodes == rebuilt.nodes and updated.duplicates == rebuilt.duplicates
    assert updated._names == rebuilt._names and updated.into == rebuilt.into
    assert {k: v for k, v in updated.out.items() if v} == {k: v for k, v in rebuilt.out.items() if v}
    assert sorted(updated.edges, key=repr) == sorted(rebuilt.edges, key=repr)


def test_an_updated_graph_equals_a_rebuilt_one_as_names_and_links_change_meaning() -> None:
    one, two, three = (nd("one", A, body="[[two]] [[Three]] [[node:" + C + "]]"), nd("two", B),
                       nd("three", C, "aliases: [deux]\n"))
    graph = Graph([one, two])
    # 1. the target of a dangling link (by id and by title) arrives
    step = graph.updated([], [three])
    _same_graph(step, Graph([one, two, three]))
    assert {e.resolved for e in step.out[A]} == {B, C}
    # 2. an earlier file claims the name `two` through an alias; the link now resolves to it
    zero = nd("a-zero", "dddddddd-0000-4000-8000-00000000000d", "aliases: [two]\n")
    step2 = step.updated([], [zero])
    _same_graph(step2, Graph([one, two, three, zero]))
    # 3. an edited node (same id, new links) and a removed node
    two_edited = nd("two", B, body="[[one]]")
    step3 = step2.updated([two, zero], [two_edited])
    _same_graph(step3, Graph([one, two_edited, three]))
    # 4. a duplicate id falls back to a rebuild, and so does its removal
    dup = nd("zz-dup", A)
    step4 = step3.updated([], [dup])
    _same_graph(step4, Graph([one, two_edited, three, dup]))
    _same_graph(step4.updated([dup], []), Graph([one, two_edited, three]))


def test_checking_against_the_previous_revision_gives_what_a_full_check_gives() -> None:
    contract = Contract()
    first = [node("one", A, body="[[two]]"), node("two", B), node("three", C)]
    previous = check(first, contract)
    # "two" disappears (the link dangles), "three" turns invalid, a new file arrives.
    second = [first[0], node("three", C, "bogus_field: 1\n"), node("four", "eeeeeeee-0000-4000-8000-00000000000e")]
    incremental = check(second, contract, previous=previous)
    full = check(second, contract)
    assert incremental.problems == full.problems and incremental.problems
    assert sorted(n.path for n in incremental.nodes) == sorted(n.path for n in full.nodes)
    _same_graph(incremental.graph, full.graph)
    # and back: fixing everything clears the problems incrementally too
    assert check(first, contract, previous=incremental).problems == ()
