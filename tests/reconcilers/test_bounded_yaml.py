"""Bounded YAML: aliases, oversize, too many nodes and deep nesting are refused at their line, before loading."""

from __future__ import annotations

import pytest
import yaml

from reconcilers import bounded_yaml
from reconcilers.knowledge.node import parse
from reconcilers.vault.errors import ManifestError
from reconcilers.vault.manifest import load_yaml

LAUGHS = "a: &a [lol, lol, lol, lol, lol, lol, lol, lol, lol]\n" + "".join(
    f"{chr(98 + i)}: &{chr(98 + i)} [" + ", ".join([f"*{chr(97 + i)}"] * 9) + "]\n" for i in range(8))


def test_plain_yaml_loads_as_before() -> None:
    """Ordinary documents load to the same value as yaml.safe_load."""
    text = "a: 1\nb: [x, {c: true}]\nd: 'text'\n"
    assert bounded_yaml.load(text) == yaml.safe_load(text)


def test_an_alias_is_refused_at_its_line() -> None:
    """The billion-laughs block is refused at its first alias, without expanding anything."""
    with pytest.raises(bounded_yaml.YamlBoundsError) as info:
        bounded_yaml.load(LAUGHS)
    assert info.value.problem_mark is not None and info.value.problem_mark.line + 1 == 2
    assert "aliases" in str(info.value.problem)


@pytest.mark.parametrize("depth", [1_500, 150_000])
def test_deep_nesting_is_a_located_error_not_a_crash(depth: int) -> None:
    """Flow and block nesting far past the cap end as YAML errors with a line, never RecursionError."""
    for text in ("a: " + "[" * depth + "]" * depth, "".join("  " * i + f"k{i}:\n" for i in range(depth // 10))):
        with pytest.raises(yaml.YAMLError) as info:
            bounded_yaml.load(text, max_bytes=1 << 30)
        mark = getattr(info.value, "problem_mark", None)
        assert mark is not None and mark.line >= 0


def test_node_count_and_size_are_capped() -> None:
    """A wide document past the node cap, and a document past the size cap, are refused."""
    with pytest.raises(bounded_yaml.YamlBoundsError, match="over 1000 nodes"):
        bounded_yaml.load("[" + ",".join(["1"] * 2000) + "]", max_nodes=1000)
    with pytest.raises(bounded_yaml.YamlBoundsError, match="over the 100 limit"):
        bounded_yaml.load("a: " + "x" * 200, max_bytes=100)


def test_knowledge_front_matter_bomb_is_a_located_problem() -> None:
    """A billion-laughs front matter is a problem at the node's file line, not an out-of-memory daemon."""
    parsed = parse("knowledge/bomb.md", "0" * 40, "---\n" + LAUGHS + "---\nbody\n")
    assert parsed.node is None
    assert [(p.path, p.line) for p in parsed.problems] == [("knowledge/bomb.md", 3)]
    assert "aliases" in parsed.problems[0].message


def test_knowledge_front_matter_nested_deep_is_a_located_problem() -> None:
    """Front matter nested 1,500 deep is a located problem (it was a RecursionError traceback)."""
    parsed = parse("knowledge/deep.md", "0" * 40, "---\nid: x\ndeep: " + "[" * 1500 + "]" * 1500 + "\n---\n")
    assert [(p.path, p.line) for p in parsed.problems] == [("knowledge/deep.md", 3)]


def test_secret_manifest_bomb_is_a_located_manifest_error() -> None:
    """A manifest with aliases is refused as malformed at file:line."""
    with pytest.raises(ManifestError) as info:
        load_yaml(LAUGHS, "secrets/app.yaml")
    assert info.value.where == "secrets/app.yaml:2"
