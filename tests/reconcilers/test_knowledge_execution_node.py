"""The execution node of a run is built from the front matter Stratum just wrote, not read back through YAML:
PyYAML spent ~0.5 s of a 200-action `stratum apply` parsing it. The node must be exactly what parsing the
written markdown gives (what a commit of that file to the executions branch would index)."""

from __future__ import annotations

import pytest

from reconcilers import bounded_yaml
from reconcilers.base import RunRecord
from reconcilers.knowledge.execution import execution_markdown, execution_node
from reconcilers.knowledge.graph import Graph
from reconcilers.knowledge.node import parse

ACTIONS = tuple((f"infra:file-{i:04d}", "create", "succeeded") for i in range(300))
RECORD = RunRecord("run-0123456789abcdef", "ab" * 20, "failed", 1_700_000_000.0, 1_700_000_004.25, ACTIONS,
                   tuple(a for a, _, _ in ACTIONS), "a message: with 'quotes', [[brackets]] and #hash\n2nd line")


def test_the_execution_node_equals_the_parsed_markdown() -> None:
    node = execution_node(RECORD, Graph([]), "runs/log")
    path, text = execution_markdown(RECORD, Graph([]), node.path)
    parsed = parse(path, f"exec:{RECORD.run_id}", text)
    assert parsed.node == node
    assert path.startswith("runs/log/") and len(node.links) == 301    # 300 resources, [[brackets]] in the message


def test_the_execution_node_needs_no_yaml_reader(monkeypatch: pytest.MonkeyPatch) -> None:
    """Building the node never calls the YAML loader (it did: a round trip through text)."""
    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("the execution node was read back through YAML")

    monkeypatch.setattr(bounded_yaml, "load", refuse)
    assert execution_node(RECORD, Graph([])).type == "execution"


def test_render_writes_what_the_pure_python_dumper_writes() -> None:
    """render uses libyaml's emitter when present: the text is the same as PyYAML's own (kb new, commits)."""
    import yaml

    from reconcilers.knowledge.execution import render

    front = {"id": "x", "title": "Ünïcode — \"quoted\" 'single' : colon # hash", "tags": ["a", "b c", "123", "yes"],
             "long": "word " * 60, "created": "2026-01-02T03:04:05Z", "n": 5, "empty": [], "nested": {"k": "v"}}
    expected = yaml.safe_dump(front, sort_keys=False, allow_unicode=True, width=110).strip()
    assert render(front, "body") == f"---\n{expected}\n---\n\nbody\n"
