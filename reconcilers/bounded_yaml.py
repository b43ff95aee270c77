"""YAML from repo content, parsed within bounds: no aliases, capped size, node count and depth.

A 1 KB billion-laughs block in a knowledge node's front matter took the daemon to 17.7 GB, and nesting 1,500
levels deep ended in a RecursionError (150,000 levels can overflow the C stack of libyaml's composer). So
before anything is composed, the document's events are read once from libyaml's parser (iterative, no
recursion, the C speed of CSafeLoader when available) and the document is refused at the first alias, at the
first node past the count cap and at the first level past the depth cap, with the line it stands on. Only
then is it loaded with the caller's loader, whose recursion the depth cap keeps shallow.

Refusals are `YamlBoundsError`, a `yaml.MarkedYAMLError`: callers that already report `problem` and
`problem_mark` of YAML errors report these the same way, at their line.
"""

from __future__ import annotations

from typing import Any

import yaml
from yaml.error import Mark, MarkedYAMLError

MAX_BYTES = 1024 * 1024
MAX_NODES = 100_000
MAX_DEPTH = 64

_Parser: Any = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
_OPEN = (yaml.MappingStartEvent, yaml.SequenceStartEvent)
_CLOSE = (yaml.MappingEndEvent, yaml.SequenceEndEvent)
_NODE = (yaml.ScalarEvent, yaml.MappingStartEvent, yaml.SequenceStartEvent)


class YamlBoundsError(MarkedYAMLError):
    """The document is refused by a bound (alias, size, node count, depth); `problem_mark` is where."""

    def __init__(self, problem: str, mark: Any) -> None:
        super().__init__(problem=problem, problem_mark=mark)


def check(text: str, *, max_bytes: int = MAX_BYTES, max_nodes: int = MAX_NODES, max_depth: int = MAX_DEPTH) -> None:
    """Raise YamlBoundsError when `text` breaks a bound, or yaml.YAMLError when it is not YAML at all."""
    if len(text) > max_bytes:
        raise YamlBoundsError(f"YAML document is {len(text)} characters, over the {max_bytes} limit",
                              Mark("<yaml>", 0, 0, 0, None, None))  # type: ignore[arg-type]  # no snippet
    depth = nodes = 0
    for event in yaml.parse(text, Loader=_Parser):
        if isinstance(event, yaml.AliasEvent):
            raise YamlBoundsError(f"YAML aliases (*{event.anchor}) are not allowed: write the value out",
                                  event.start_mark)
        if isinstance(event, _NODE):
            nodes += 1
            if nodes > max_nodes:
                raise YamlBoundsError(f"YAML document has over {max_nodes} nodes", event.start_mark)
        if isinstance(event, _OPEN):
            depth += 1
            if depth > max_depth:
                raise YamlBoundsError(f"YAML is nested over {max_depth} levels deep", event.start_mark)
        elif isinstance(event, _CLOSE):
            depth -= 1


def load(text: str, loader: Any = None, *, max_bytes: int = MAX_BYTES, max_nodes: int = MAX_NODES,
         max_depth: int = MAX_DEPTH) -> Any:
    """`yaml.load(text, Loader=loader)` (default: CSafeLoader, else SafeLoader) once `check` passed."""
    check(text, max_bytes=max_bytes, max_nodes=max_nodes, max_depth=max_depth)
    return yaml.load(text, Loader=loader or _Parser)
