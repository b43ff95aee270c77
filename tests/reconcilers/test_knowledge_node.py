"""Parsing node files (reconcilers/knowledge/node.py) and the front-matter contract (contract.py)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from reconcilers.knowledge.contract import Contract, FrontMatterItem
from reconcilers.knowledge.loader import check
from reconcilers.knowledge.node import parse

UUID = "3f0c2b9e-6a61-4d8e-9f4a-1c2d3e4f5a6b"


def md(front: str, body: str = "Body.") -> str:
    return f"---\n{front.strip()}\n---\n{body}\n"


# -- parsing --------------------------------------------------------------------------------------------
def test_a_valid_node_keeps_dates_as_written_and_defaults_the_status() -> None:
    p = parse("knowledge/a.md", "b1", md(f"id: {UUID}\ntype: note\ntitle: A\ncreated: 2024-05-01\ntags: [x, y]"))
    assert p.node is not None and not p.problems
    assert p.node.created == "2024-05-01" and p.node.status == "draft" and p.node.tags == ("x", "y")


def test_missing_front_matter_is_a_problem_on_line_1_with_a_hint() -> None:
    p = parse("knowledge/a.md", "b1", "# just markdown\n")
    assert p.node is None and p.problems[0].line == 1 and "missing front matter" in p.problems[0].message
    assert "stratum kb new" in p.problems[0].hint


def test_malformed_yaml_points_at_the_file_line_of_the_error() -> None:
    p = parse("knowledge/a.md", "b1", "---\nid: x\ntitle: [unclosed\ntype: note\n---\nbody\n")
    assert p.node is None and p.problems[0].line in (3, 4, 5) and "not valid YAML" in p.problems[0].message


def test_wikilinks_give_typed_relations_with_lines_and_skip_fenced_code() -> None:
    body = "line one [[Other]]\n```\n[[not-a-link]]\n```\n[[depends_on::infra:app-config|the config]]\n"
    p = parse("knowledge/a.md", "b1", md(f"id: {UUID}\ntype: note\ntitle: A\nextends: [Base]", body))
    assert p.node is not None
    links = {(ln.rel, ln.target, ln.line, ln.origin) for ln in p.node.links}
    assert ("extends", "Base", 5, "front") in links
    assert ("relates_to", "Other", 7, "body") in links
    assert ("depends_on", "infra:app-config", 11, "body") in links
    assert not any(ln.target == "not-a-link" for ln in p.node.links)


def test_an_unknown_relation_in_a_wikilink_is_reported_at_its_line() -> None:
    p = parse("knowledge/a.md", "b1", md(f"id: {UUID}\ntype: note\ntitle: A", "ok\n[[blocks::Other]]"))
    assert [(q.line, "unknown relation 'blocks'" in q.message) for q in p.problems] == [(7, True)]


# -- the Nickel contract --------------------------------------------------------------------------------
def _items(*texts: str) -> list[FrontMatterItem]:
    out = []
    for i, text in enumerate(texts):
        p = parse(f"knowledge/n{i}.md", f"blob{i}-{hash(text)}", text)
        assert p.front is not None
        out.append(FrontMatterItem(p.path, p.blob_id, p.front, p.key_lines))
    return out


def test_contract_reports_each_bad_field_at_its_line() -> None:
    long = "x" * 10_000
    items = _items(
        md(f"id: {UUID}\ntype: decision\ntitle: D\nstatus: accepted\ncontext: {long}"),
        md("id: not-a-uuid\ntype: runbook\ntitle: R\ncolour: red"),
        md(f"id: {UUID}\ntype: note\ntitle: N\ncontext: only decisions have this"),
    )
    result = Contract().check(items)
    d, r, n = (result[i.blob_id] for i in items)
    assert [(q.line, "10000 characters long" in q.message) for q in d] == [(6, True)]
    messages = {q.line: q.message for q in r}
    assert "UUID" in messages[2] and "not one of" in messages[3] and "unknown field `colour`" in messages[5]
    assert "not a field of note nodes" in n[0].message and n[0].line == 5


def test_contract_accepts_every_type_with_its_fields() -> None:
    items = _items(
        md(f"id: {UUID}\ntype: guideline\ntitle: G\ncategory: review\npriority: 80\nlanguage: en"),
        md(f"id: {UUID}\ntype: pattern\ntitle: P\nproblem: p\nsolution: s\nforces: [a, b]"),
        md(f"id: {UUID}\ntype: execution\ntitle: E\nrun_id: r1\nrevision: abc\noutcome: succeeded\n"
           "started: 2024-05-01T10:00:00Z\nfinished: 2024-05-01T10:00:05Z\nresources: [infra:motd]"),
        md(f"id: {UUID}\ntype: decision\ntitle: D\nstatus: superseded\nx-owner: team-a"),
    )
    assert all(v == () for v in Contract().check(items).values())


def test_contract_results_are_cached_by_blob_id() -> None:
    contract = Contract()
    items = _items(md(f"id: {UUID}\ntype: note\ntitle: A"), md(f"id: {UUID}\ntype: note\ntitle: B"))
    contract.check(items)
    contract.check(items)
    assert contract.evaluations == 1


def test_one_bad_node_does_not_hide_the_others() -> None:
    good = parse("knowledge/good.md", "g", md(f"id: {UUID}\ntype: note\ntitle: Good"))
    bad = parse("knowledge/bad.md", "b", md("id: nope\ntype: note\ntitle: Bad"))
    checked = check([good, bad], Contract())
    assert [n.title for n in checked.nodes] == ["Good"]
    assert [(q.path, q.line) for q in checked.problems] == [("knowledge/bad.md", 2)]


def test_the_contract_runs_in_the_nickel_worker_with_the_same_answers(tmp_path: Path) -> None:
    """Given the host's evaluator (as the reconciler is), the front-matter contract is evaluated by the Nickel
    worker process: the same problems as in-process, at the same lines, and this process never loads
    py-nickel (it would hold the GIL for the whole evaluation, and its 16 MB library stays out of the daemon)."""
    code = f"""
import json, sys
from pathlib import Path
from daemon.nickel.evaluator import Evaluator
from reconcilers.knowledge.contract import Contract
from reconcilers.knowledge.loader import check
from reconcilers.knowledge.node import parse
good = parse("knowledge/good.md", "g", "---\\nid: {UUID}\\ntype: note\\ntitle: Good\\n---\\nbody\\n")
bad = parse("knowledge/bad.md", "b", "---\\nid: nope\\ntype: note\\ntitle: Bad\\n---\\nbody\\n")
evaluator = Evaluator(Path({str(tmp_path)!r}) / "cache")
try:
    contract = Contract(runner=evaluator.run_source)
    checked = check([good, bad], contract)
    out = [[n.title for n in checked.nodes], [(q.path, q.line, q.message) for q in checked.problems],
           evaluator.stats["evaluations"], "nickel" in sys.modules]
finally:
    evaluator.close()
print(json.dumps(out))
"""
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    titles, problems, evaluations, loaded = json.loads(proc.stdout.strip().splitlines()[-1])
    in_process = check([parse("knowledge/good.md", "g", md(f"id: {UUID}\ntype: note\ntitle: Good")),
                        parse("knowledge/bad.md", "b", md("id: nope\ntype: note\ntitle: Bad"))], Contract())
    assert titles == ["Good"]
    assert [tuple(p) for p in problems] == [(q.path, q.line, q.message) for q in in_process.problems]
    assert evaluations == 1 and loaded is False


def test_a_contract_failure_in_the_worker_is_a_knowledge_error() -> None:
    """A runner's error (a broken knowledge.ncl, a deadline) is reported as the contract's own failure."""
    from reconcilers.knowledge.errors import KnowledgeError

    contract = Contract(runner=lambda src, paths: {"error": "error: \x1b[31mboom\x1b[0m"})
    with pytest.raises(KnowledgeError, match="the knowledge contract failed to evaluate: error: boom"):
        contract.check(_items(md(f"id: {UUID}\ntype: note\ntitle: A")))
