"""Dependencies run one way (DESIGN.md): no import cycles, reconcilers import only the contract, and the kernel
finds reconcilers instead of importing them. `python -m tests.importgraph` prints the whole picture.

The imports that break the rule today are listed below; the list may only shrink. A new cycle or a new import
against the direction fails here, and so does a listed one that is gone (delete it from the list).
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

from reconcilers.base import Reconciler
from tests import importgraph

# Known debts (issue 10): each to be removed by moving what it needs into the contract or behind a port.
KNOWN_CYCLES: set[tuple[str, ...]] = set()
KNOWN_UP: set[tuple[str, str]] = set()
# (none left: the secret verbs moved into the vault plugin, reconcilers/vault/secret_cli.py)
KNOWN_DOWN_PREFIXES: tuple[str, ...] = ()
# What the kernel may import of reconcilers/: the contract, the plugin registry (entry points), and the bounded
# parsers both sides share.
CONTRACT = ("reconcilers.base", "reconcilers.bounded_yaml", "reconcilers.errors", "reconcilers.gittree",
            "reconcilers.locations",
            "reconcilers.plugin", "reconcilers.ports", "reconcilers.records", "reconcilers.registry",
            "reconcilers.verbs", "reconcilers.workers")

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


# Hook names of the contract, and the names reconcilers were probed for before the contract declared them.
HOOKS = {n for n in dir(Reconciler) if not n.startswith("_")} | {"asgi_app", "asgi_prefix", "judge"}
RECONCILER_EXPR = re.compile(r"\brecs?\b|reconciler|\binfra\b|\bvault\b|\bknowledge\b", re.IGNORECASE)


def probes(root: Path = importgraph.ROOT) -> list[str]:
    """`file:line: call` for every getattr/hasattr in daemon/ on a reconciler object or for a hook name, and
    every `except TypeError` around a hook call (the old call-catch-retry of drift)."""
    out: list[str] = []
    for path in sorted((root / "daemon").rglob("*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
        where = path.relative_to(root)
        for node in ast.walk(tree):
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) \
                    and node.func.id in ("getattr", "hasattr") and len(node.args) >= 2:
                target, attr = node.args[0], node.args[1]
                named = attr.value if isinstance(attr, ast.Constant) and isinstance(attr.value, str) else ""
                if RECONCILER_EXPR.search(ast.unparse(target)) or named in HOOKS:
                    out.append(f"{where}:{node.lineno}: {ast.unparse(node)}")
            if isinstance(node, ast.Try):
                catches = {ast.unparse(h.type) for h in node.handlers if h.type is not None}
                called = {c.func.attr for c in ast.walk(ast.Module(node.body, [])) if isinstance(c, ast.Call)
                          and isinstance(c.func, ast.Attribute)}
                if "TypeError" in catches and called & HOOKS:
                    out.append(f"{where}:{node.lineno}: except TypeError around {sorted(called & HOOKS)}")
    return sorted(out, key=lambda p: (p.split(":")[0], int(p.split(":")[1])))


def test_the_kernel_never_probes_a_reconciler() -> None:
    """Every hook is declared on the contract's base class with a default: the kernel calls it, and never asks
    getattr/hasattr whether a reconciler has it, nor retries a call with fewer arguments on TypeError."""
    assert probes() == []


def test_the_probe_scan_finds_what_it_forbids(tmp_path: Path) -> None:
    """The scan sees a getattr on a reconciler, a hasattr for a hook name and the catch-TypeError retry."""
    (tmp_path / "daemon").mkdir()
    (tmp_path / "daemon" / "x.py").write_text(
        "def f(rec, other, d):\n"
        "    hook = getattr(rec, 'whatever', None)\n"
        "    if hasattr(other, 'observe_changed'):\n"
        "        pass\n"
        "    try:\n"
        "        other.drift(d, d, [])\n"
        "    except TypeError:\n"
        "        other.drift(d, d)\n"
        "    return getattr(d, 'name', None)\n")
    assert [p.split(": ")[0] for p in probes(tmp_path)] == ["daemon/x.py:2", "daemon/x.py:3", "daemon/x.py:5"]


ADAPTERS = {"Evaluator", "GitSource", "Index", "Repository"}   # what the daemon owns and hands out as ports


def adapters_built(root: Path = importgraph.ROOT) -> list[str]:
    """`file:line: call` for every adapter a reconciler module builds itself, and every reach into another
    object's private attribute by getattr (the knowledge reconciler's `getattr(snap, "_repo")`)."""
    out: list[str] = []
    for path in sorted((root / "reconcilers").glob("*/reconciler.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
        where = path.relative_to(root)
        for node in ast.walk(tree):
            if not isinstance(node, ast.Call):
                continue
            name = node.func.attr if isinstance(node.func, ast.Attribute) else getattr(node.func, "id", "")
            private = name in ("getattr", "hasattr") and len(node.args) >= 2 \
                and isinstance(node.args[1], ast.Constant) and str(node.args[1].value).startswith("_")
            if name in ADAPTERS or private:
                out.append(f"{where}:{node.lineno}: {ast.unparse(node)}")
    return out


def test_reconcilers_build_no_adapters_of_their_own() -> None:
    """The evaluator, the git source, the index and the repository come from ReconcilerEnv (ports), never from
    a reconciler's own constructor call; nothing reaches into a private attribute of what it was handed."""
    assert adapters_built() == []


def test_the_adapter_scan_finds_what_it_forbids(tmp_path: Path) -> None:
    """The scan sees an Evaluator built in a reconciler and a getattr of a private attribute."""
    (tmp_path / "reconcilers" / "x").mkdir(parents=True)
    (tmp_path / "reconcilers" / "x" / "reconciler.py").write_text(
        "from daemon.nickel.evaluator import Evaluator\n"
        "def f(snap, d):\n"
        "    ev = Evaluator(d)\n"
        "    return getattr(snap, '_repo', None)\n")
    assert [p.split(": ")[0] for p in adapters_built(tmp_path)] == ["reconcilers/x/reconciler.py:3",
                                                                     "reconcilers/x/reconciler.py:4"]
