"""Guideline inheritance: organisation guidelines from shared bases, overridden by the project's own.

Each base is a directory of markdown nodes or a git repository (a local path or a URL, mirrored under the data
directory) read at a ref. A project guideline overrides inherited ones with the same `id` or the same
`category`; among bases, the higher base priority wins the same conflicts. The effective set is sorted by the
guidelines' own `priority` (highest first) and says where each one came from and what it overrides.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pygit2

from reconcilers.errors import SourceError
from reconcilers.knowledge.errors import KnowledgeError
from reconcilers.knowledge.loader import Loader
from reconcilers.knowledge.node import Node
from reconcilers.knowledge.settings import GuidelineBase
from reconcilers.locations import is_url, sanitize_url
from reconcilers.ports import Source

OpenSource = Callable[[str, str, Path], Source]   # (location, branch, state dir): the kernel opens repos


@dataclass(frozen=True, slots=True)
class Guideline:
    """One effective guideline and its provenance."""

    node: Node
    source: str                               # "project" or "<base source>@<ref>"
    base_priority: int
    overrides: tuple[str, ...] = ()           # "<source>: <title>" of what it replaced

    @property
    def category(self) -> str:
        """The guideline's category ("" when unset)."""
        return str(self.node.field("category") or "")

    @property
    def priority(self) -> float:
        """The guideline's own priority (0-100, default 50)."""
        value = self.node.field("priority", 50)
        return float(value) if isinstance(value, int | float) else 50.0

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        return {"id": self.node.id, "title": self.node.title, "category": self.category,
                "language": self.node.field("language") or "", "priority": self.priority, "source": self.source,
                "path": self.node.path, "overrides": list(self.overrides), "body": self.node.body.strip()}


def load_base(base: GuidelineBase, data_dir: Path, loader: Loader, open_source: OpenSource) -> list[Node]:
    """The valid guideline nodes of one base (KnowledgeError when the base cannot be read)."""
    where = sanitize_url(base.source)
    local = Path(base.source).expanduser()
    if not is_url(base.source) and local.is_dir() and not (local / ".git").exists() \
            and pygit2.discover_repository(str(local)) is None:
        parsed = loader.load_dir(local, root=".")
    else:
        mirror = data_dir / "guideline-bases" / hashlib.sha256(base.source.encode()).hexdigest()[:16]
        try:
            source = open_source(base.source, base.ref, mirror)
            source.fetch()
            snap = source.snapshot(base.ref)
        except SourceError as err:
            raise KnowledgeError(f"guideline base {where}@{base.ref} cannot be read: {err.what}",
                                 where="stratum.ncl (knowledge.guidelines.bases)",
                                 hint="check the path/URL and ref; the project's own guidelines still apply") from err
        parsed = loader.load_snapshot(snap, root=base.path.strip("/"))
    return [p.node for p in parsed if p.node is not None and p.node.type == "guideline" and not p.problems]


def effective(project: Sequence[Node], bases: Sequence[GuidelineBase], data_dir: Path, open_source: OpenSource,
              loader: Loader | None = None) -> tuple[list[Guideline], list[str]]:
    """(effective guidelines, warnings about unreadable bases)."""
    loader = loader or Loader()
    warnings: list[str] = []
    chosen: dict[str, Guideline] = {}        # id -> guideline
    by_category: dict[str, str] = {}         # category -> id of its owner
    # Project first (it always wins), then bases from the highest priority down: first claim wins.
    layers: list[tuple[str, int, list[Node]]] = [("project", 1_000_000, [n for n in project if n.type == "guideline"])]
    for base in sorted(bases, key=lambda b: -b.priority):
        try:
            layers.append((f"{sanitize_url(base.source)}@{base.ref}", base.priority,
                           load_base(base, data_dir, loader, open_source)))
        except KnowledgeError as err:
            warnings.append(err.render())
    for source, prio, nodes in layers:
        claimed: dict[str, str] = {}
        for node in sorted(nodes, key=lambda n: n.path):
            g = Guideline(node, source, prio)
            # A category overrides across layers only: one layer may hold several guidelines per category.
            owner_id = node.id if node.id in chosen else by_category.get(g.category) if g.category else None
            if owner_id is not None:
                owner = chosen[owner_id]
                chosen[owner_id] = Guideline(owner.node, owner.source, owner.base_priority,
                                             (*owner.overrides, f"{source}: {node.title}"))
                continue
            chosen[node.id] = g
            if g.category:
                claimed.setdefault(g.category, node.id)
        for category, claimant in claimed.items():
            by_category.setdefault(category, claimant)
    ordered = sorted(chosen.values(), key=lambda g: (-g.priority, g.category, g.node.title))
    return ordered, warnings
