"""The import graph of daemon/ and reconcilers/ (every import, also type-only and function-level ones).

Run `python -m tests.importgraph` from the checkout: prints the cycles (strongly connected components) and every
import from reconcilers/ into daemon/. tests/test_architecture.py fails on a new one.
"""

from __future__ import annotations

import ast
import sys
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("daemon", "reconcilers")


def modules(root: Path = ROOT) -> dict[str, Path]:
    """Dotted module name -> file, for every module of the project's packages."""
    out: dict[str, Path] = {}
    for package in PACKAGES:
        for path in sorted((root / package).rglob("*.py")):
            parts = list(path.relative_to(root).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            out[".".join(parts)] = path
    return out


def _imported(tree: ast.AST, name: str, is_package: bool) -> Iterator[str]:
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = name.split(".") if is_package else name.split(".")[:-1]
                anchor = anchor[: len(anchor) - (node.level - 1)]
                base = ".".join([*anchor, base] if base else anchor)
            yield base
            for alias in node.names:
                yield f"{base}.{alias.name}"


def graph(root: Path = ROOT) -> dict[str, set[str]]:
    """Module -> the project modules it imports (a `from pkg import sub` counts as importing `pkg.sub`)."""
    mods = modules(root)
    edges: dict[str, set[str]] = {}
    for name, path in mods.items():
        tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
        targets = set()
        for dotted in _imported(tree, name, path.name == "__init__.py"):
            while dotted and dotted not in mods:
                dotted = dotted.rpartition(".")[0]
            if dotted and dotted != name and not name.startswith(dotted + "."):
                targets.add(dotted)
        # `from pkg import module` names the package too: that is no dependency on the package's __init__
        edges[name] = {t for t in targets if mods[t].name != "__init__.py"
                       or not any(o.startswith(t + ".") for o in targets)}
    return edges


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan), each sorted, largest first."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    out: list[list[str]] = []
    counter = [0]
    sys.setrecursionlimit(max(10_000, sys.getrecursionlimit()))

    def visit(v: str) -> None:
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in edges.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(edges):
        if v not in index:
            visit(v)
    return sorted(out, key=lambda c: (-len(c), c))


def reconciler_to_daemon(edges: dict[str, set[str]]) -> list[tuple[str, str]]:
    """Every (reconciler module, daemon module) import: the direction the architecture forbids."""
    return sorted((a, b) for a, targets in edges.items() if a.startswith("reconcilers")
                  for b in targets if b.startswith("daemon"))


def kernel_to_reconciler(edges: dict[str, set[str]]) -> list[tuple[str, str]]:
    """Every (daemon module, specific reconciler module) import: the kernel must find reconcilers by entry point."""
    return sorted((a, b) for a, targets in edges.items() if a.startswith("daemon")
                  for b in targets if b.startswith("reconcilers.") and b != "reconcilers.base")


def main() -> int:
    edges = graph()
    found = cycles(edges)
    print(f"{len(edges)} modules, {sum(map(len, edges.values()))} imports")
    print(f"\ncycles: {len(found)}")
    for comp in found:
        print("  " + " <-> ".join(comp))
    up = reconciler_to_daemon(edges)
    print(f"\nreconcilers -> daemon: {len(up)}")
    for a, b in up:
        print(f"  {a} -> {b}")
    down = kernel_to_reconciler(edges)
    print(f"\ndaemon -> a specific reconciler: {len(down)}")
    for a, b in down:
        print(f"  {a} -> {b}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
