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
import os
import sys
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
class Ahead:
    """A worker process the plugin's reconciler starts while loading a repository that holds `folder` (the
    infra reconciler's template worker for `templates/`): `command` is "module:function" returning its
    (argv, environment). A CLI verb about to load such a repository starts it before importing the engine
    (reconcilers.workers.start_spare), so the worker's own start-up runs on another core meanwhile."""

    folder: str
    command: str


@dataclass(frozen=True, slots=True)
class Preload:
    """Libraries the plugin's reconciler imports while loading a repository that holds `folder`: third-party
    modules importing nothing of Stratum (jinja2 for prompts, fluent.syntax for locales). `stratum validate`
    imports them on a thread while its load waits for the Nickel worker, instead of after that wait."""

    folder: str
    modules: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class Plugin:
    """One reconciler: its name (the repo part it owns), its class as "module:Class" (constructed with a
    ReconcilerEnv), its CLI verbs, and `order` (reconcilers load and plan in ascending order, then by name)."""

    name: str
    reconciler: str
    verbs: tuple[Verb, ...] = ()
    order: int = 100
    # "module:function" run by `stratumd --worker` (data_dir, roles, queue_url) -> exit code; "" for none
    worker: str = ""
    ahead: tuple[Ahead, ...] = ()               # worker processes a CLI may start ahead (see Ahead)
    preload: tuple[Preload, ...] = ()           # libraries a CLI may import during the load's waits (Preload)


@dataclass(frozen=True, slots=True)
class Broken:
    """An entry point that could not be loaded or is not a Plugin: reported, never fatal."""

    name: str
    value: str
    reason: str


def discover() -> tuple[list[Plugin], list[Broken]]:
    """Every installed plugin, in run order, and the entry points that are broken."""
    found: dict[str, Plugin] = {}
    broken: list[Broken] = []
    for name, value in entry_points(GROUP):
        try:
            plugin = load_target(value)
        except Exception as err:  # noqa: BLE001 a broken third-party plugin must not take the daemon down
            broken.append(Broken(name, value, f"{type(err).__name__}: {err}"))
            continue
        if not isinstance(plugin, Plugin) or plugin.name != name:
            broken.append(Broken(name, value, "not a reconcilers.plugin.Plugin named like its entry point"))
        elif name not in found:             # the first distribution on the path wins, as for imports
            found[name] = plugin
    return sorted(found.values(), key=lambda p: (p.order, p.name)), broken


def entry_points(group: str) -> list[tuple[str, str]]:
    """(name, "module:attr") of every entry point in `group`, distributions in sys.path order.

    What importlib.metadata.entry_points(group=...) returns for installed distributions (dist-info and
    egg-info folders on sys.path; zipped eggs are not looked into), read directly: importing importlib.metadata
    costs ~40-70 ms (email, zipfile, csv), a fifth of `stratum --help`, which lists plugin verbs."""
    import configparser

    out: list[tuple[str, str]] = []
    seen: set[str] = set()
    for folder in sys.path:
        try:
            listing = sorted(os.scandir(folder or "."), key=lambda e: e.name)
        except OSError:
            continue
        for item in listing:
            if not item.name.endswith((".dist-info", ".egg-info")):
                continue
            dist = item.name.rsplit(".", 1)[0].split("-")[0].lower().replace("_", "-").replace(".", "-")
            if dist in seen:                # a distribution shadowed by one earlier on the path
                continue
            seen.add(dist)
            try:
                with open(os.path.join(item.path, "entry_points.txt"), encoding="utf-8") as fh:
                    text = fh.read()
            except OSError:
                continue
            if f"[{group}]" not in text:
                continue
            parser = configparser.ConfigParser(delimiters=("=",), interpolation=None)
            parser.optionxform = str        # type: ignore[assignment,method-assign]  # names keep their case
            try:
                parser.read_string(text)
            except configparser.Error:
                continue
            # `module:attr [extra]`: extras name optional dependencies, not part of the target
            out += [(name, value.split("[")[0].strip()) for name, value in parser.items(group)]
    return out


def load_target(target: str) -> Any:
    """Import "module:attribute" and return the attribute."""
    module, _, attr = target.partition(":")
    return getattr(importlib.import_module(module), attr)
