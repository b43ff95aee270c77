"""Plugins: how the daemon and the CLI find reconcilers, their CLI verb groups and (through the reconcilers)
their HTTP mounts, by the entry point group `stratum.reconcilers`.

A distribution declares, in its pyproject.toml,

    [project.entry-points."stratum.reconcilers"]
    hello = "stratum_hello.plugin:PLUGIN"

where `PLUGIN` is a `Plugin`: plain data in a module that imports nothing heavy, so `stratum --help` can list a
plugin's verbs (with their one-line summaries) without importing the reconciler or its libraries. The
reconciler class and the verbs' click commands are named as "module:attribute" and imported when used.
Stratum's own reconcilers (infra, vault, knowledge) are plugins like any other (pyproject.toml).
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Any

GROUP = "stratum.reconcilers"


@dataclass(frozen=True, slots=True)
class Verb:
    """A CLI verb group a plugin adds to `stratum`: `target` is "module:attribute" of its click command, and
    `summary` the first sentence of its help (shown by `stratum --help` without importing the module)."""

    name: str
    target: str
    summary: str


@dataclass(frozen=True, slots=True)
class Plugin:
    """One reconciler: its name (the repo part it owns), its class as "module:Class" (constructed with a
    ReconcilerEnv), its CLI verbs, and `order` (reconcilers load and plan in ascending order, then by name)."""

    name: str
    reconciler: str
    verbs: tuple[Verb, ...] = ()
    order: int = 100


@dataclass(frozen=True, slots=True)
class Broken:
    """An entry point that could not be loaded or is not a Plugin: reported, never fatal."""

    name: str
    value: str
    reason: str


def discover() -> tuple[list[Plugin], list[Broken]]:
    """Every installed plugin, in run order, and the entry points that are broken."""
    from importlib.metadata import entry_points

    found: dict[str, Plugin] = {}
    broken: list[Broken] = []
    for ep in entry_points(group=GROUP):
        try:
            plugin = ep.load()
        except Exception as err:  # noqa: BLE001 a broken third-party plugin must not take the daemon down
            broken.append(Broken(ep.name, ep.value, f"{type(err).__name__}: {err}"))
            continue
        if not isinstance(plugin, Plugin) or plugin.name != ep.name:
            broken.append(Broken(ep.name, ep.value, "not a reconcilers.plugin.Plugin named like its entry point"))
        elif ep.name not in found:          # the first distribution on the path wins, as for imports
            found[ep.name] = plugin
    return sorted(found.values(), key=lambda p: (p.order, p.name)), broken


def load_target(target: str) -> Any:
    """Import "module:attribute" and return the attribute."""
    module, _, attr = target.partition(":")
    return getattr(importlib.import_module(module), attr)
