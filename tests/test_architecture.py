"""Dependencies run one way (DESIGN.md): no import cycles, reconcilers import only the contract, and the kernel
finds reconcilers instead of importing them. `python -m tests.importgraph` prints the whole picture.

The imports that break the rule today are listed below; the list may only shrink. A new cycle or a new import
against the direction fails here, and so does a listed one that is gone (delete it from the list).
"""

from __future__ import annotations

from pathlib import Path

from tests import importgraph

# Known debts (issue 10): each to be removed by moving what it needs into the contract or behind a port.
KNOWN_CYCLES: set[tuple[str, ...]] = {
    ("daemon.control.admission", "daemon.run.pipeline"),
    ("reconcilers.knowledge.mcp_server", "reconcilers.knowledge.reconciler"),
}
KNOWN_UP: set[tuple[str, str]] = {
    ("reconcilers.base", "daemon.git.source"),
    ("reconcilers.infra.load", "daemon.errors"),
    ("reconcilers.infra.load", "daemon.nickel.evaluator"),
    ("reconcilers.infra.load", "daemon.git.source"),
    ("reconcilers.infra.local", "daemon.errors"),
    ("reconcilers.infra.reconciler", "daemon.errors"),
    ("reconcilers.infra.reconciler", "daemon.nickel.evaluator"),
    ("reconcilers.infra.reconciler", "daemon.control.policy"),
    ("reconcilers.infra.reconciler", "daemon.git.source"),
    ("reconcilers.infra.templates", "daemon.errors"),
    ("reconcilers.knowledge.contract", "daemon.package_data"),
    ("reconcilers.knowledge.embed", "daemon.git.source"),
    ("reconcilers.knowledge.errors", "daemon.errors"),
    ("reconcilers.knowledge.guidelines", "daemon.errors"),
    ("reconcilers.knowledge.guidelines", "daemon.git.source"),
    ("reconcilers.knowledge.indexer", "daemon.index.store"),
    ("reconcilers.knowledge.loader", "daemon.errors"),
    ("reconcilers.knowledge.loader", "daemon.git.source"),
    ("reconcilers.knowledge.mcp_server", "daemon.errors"),
    ("reconcilers.knowledge.reconciler", "daemon.errors"),
    ("reconcilers.knowledge.reconciler", "daemon.index.store"),
    ("reconcilers.knowledge.reconciler", "daemon.control.policy"),
    ("reconcilers.knowledge.reconciler", "daemon.git.source"),
    ("reconcilers.knowledge.service", "daemon.service.control_client"),
    ("reconcilers.knowledge.service", "daemon.errors"),
    ("reconcilers.knowledge.service", "daemon.index.store"),
    ("reconcilers.knowledge.service", "daemon.settings"),
    ("reconcilers.knowledge.service", "daemon.git.source"),
    ("reconcilers.knowledge.settings", "daemon.nickel.evaluator"),
    ("reconcilers.knowledge.store", "daemon.index.store"),
    ("reconcilers.vault.errors", "daemon.errors"),
    ("reconcilers.vault.reconciler", "daemon.errors"),
    ("reconcilers.vault.reconciler", "daemon.nickel.evaluator"),
    ("reconcilers.vault.reconciler", "daemon.control.policy"),
    ("reconcilers.vault.reconciler", "daemon.git.source"),
    ("reconcilers.vault.rules", "daemon.errors"),
    ("reconcilers.vault.rules", "daemon.nickel.evaluator"),
    ("reconcilers.vault.rules", "daemon.git.source"),
}
# The kernel's CLI still holds the knowledge and secret verb groups, and the registry is a literal.
KNOWN_DOWN_PREFIXES = ("daemon.cli.kb", "daemon.cli.secret", "daemon.cli.status", "daemon.run.runtime")
# What the kernel may import of reconcilers/: the contract and the bounded parsers both sides share.
CONTRACT = ("reconcilers.base", "reconcilers.bounded_yaml")

EDGES = importgraph.graph()


def test_no_new_import_cycle() -> None:
    """Every cycle among daemon/ and reconcilers/ (type-only imports included) is a known debt."""
    found = {tuple(c) for c in importgraph.cycles(EDGES)}
    assert found - KNOWN_CYCLES == set(), "new import cycle: break it (see `python -m tests.importgraph`)"
    assert KNOWN_CYCLES - found == set(), "a known cycle is gone: delete it from KNOWN_CYCLES"


def test_reconcilers_import_no_new_daemon_internals() -> None:
    """A reconciler imports the contract, not the kernel; the listed imports are debts that only shrink."""
    found = set(importgraph.reconciler_to_daemon(EDGES))
    assert found - KNOWN_UP == set(), "a reconciler imports daemon internals: use the contract or a port"
    assert KNOWN_UP - found == set(), "a known reconciler->daemon import is gone: delete it from KNOWN_UP"


def test_kernel_imports_no_specific_reconciler() -> None:
    """Outside the listed modules the kernel imports only the contract (CONTRACT)."""
    found = importgraph.kernel_to_reconciler(EDGES)
    assert [(a, b) for a, b in found if not a.startswith(KNOWN_DOWN_PREFIXES) and b not in CONTRACT] == []


def test_graph_sees_type_only_and_relative_imports(tmp_path: Path) -> None:
    """The scanner counts imports under TYPE_CHECKING and relative ones, so a cycle cannot hide there."""
    (tmp_path / "daemon").mkdir()
    (tmp_path / "reconcilers").mkdir()
    (tmp_path / "daemon" / "__init__.py").write_text("")
    (tmp_path / "reconcilers" / "__init__.py").write_text("")
    (tmp_path / "daemon" / "a.py").write_text("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n"
                                              "    from daemon.b import X\n")
    (tmp_path / "daemon" / "b.py").write_text("from . import a\n")
    edges = importgraph.graph(tmp_path)
    assert importgraph.cycles(edges) == [["daemon.a", "daemon.b"]]
