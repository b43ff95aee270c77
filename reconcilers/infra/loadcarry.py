"""Steps 2-4 of an infra load carried forward: the last problem-free load, patched by the files that moved.

A commit changing one file of 20,000 evaluates one file (the evaluator caches by blob) and loads one file's
resources (load.py's file cache), but collecting 20,000 files' resources into one mapping and checking every
reference again cost ~0.2 s per run. `LoadCarry` keeps the last load that had no problem and builds the next
from it.

Why the patch equals a full load (and when it is not tried: `patch` returns None, the full path runs):
- A file's contribution (its resources and problems) is a function of its Nickel result key (the blob ids of
  the file and of everything it imports, the contract, the library) and of the blob ids of the templates its
  resources name. That is the file cache's own rule (load.py). A file is "moved" when its key differs, when a
  template it names has another blob, when it is new, or when it is gone; every other file's contribution is
  taken as it was. A file without a key (the evaluator could not make one) always takes the full path.
- Problems of any kind (Nickel, a file's own, duplicates, references, cycles) take the full path, which finds
  and orders them exactly as always. The carried load had none, so:
  - a duplicate id or a path managed twice can only involve a resource of a moved file (checked by count and
    against the carried maps);
  - an unknown dependency is either a moved resource's own (each checked) or an unchanged resource's on a
    resource that went away (the carried reverse dependencies say which);
  - a cycle needs an edge from a moved resource (the others' edges were acyclic and are unchanged): when
    some moved resource has dependencies, the whole cycle check runs again over resources with dependencies.
- Resources are inserted in the order a full load inserts them (files by path, each file in its own order),
  so plans list actions in the same order.
- More than MAX_MOVED moved files: the full path (the patch would save nothing).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from reconcilers.base import Problem
from reconcilers.infra.model import InfraDesired, Resource
from reconcilers.ports import Snapshot

MAX_MOVED = 1_000


@dataclass(frozen=True, slots=True)
class FileLoad:
    """One infra file's part of a load: its Nickel result key, the templates it names, what it declares."""

    key: str
    templates: tuple[str, ...]
    resources: tuple[Resource, ...]
    problems: tuple[Problem, ...]


@dataclass(frozen=True, slots=True)
class _Carried:
    """A problem-free load and the maps its checks were made with."""

    files: Mapping[str, FileLoad]
    template_blobs: Mapping[str, str]             # template path -> blob id when loaded
    desired: InfraDesired
    paths: Mapping[str, str]                      # managed path -> resource id
    dependents: Mapping[str, frozenset[str]]      # resource id -> ids of the resources depending on it


def _blob(snap: Snapshot, path: str) -> str:
    entry = snap.entry(path)
    return entry.blob_id if entry is not None else "missing"


@dataclass
class LoadCarry:
    """The last problem-free infra load of one reconciler (loads are pure: any snapshot may be the base)."""

    last: _Carried | None = None
    note: str = ""                                # how the last load went: "patched: ..." or "full: why"
    patched: int = 0                              # loads patched (tests)
    _why: str = field(default="first load", repr=False)

    def remember(self, snap: Snapshot, files: Mapping[str, FileLoad], keys: Mapping[str, str],
                 desired: InfraDesired) -> None:
        """Keep a full load for the next one, when it had no problem."""
        self.note = f"full: {self._why}"
        if desired.problems or any(not keys.get(p) for p in files):
            self.last = None
            self._why = "the last load had problems"
            return
        paths: dict[str, str] = {}
        dependents: dict[str, set[str]] = {}
        for r in desired.resources.values():
            if r.path:
                paths[r.path] = r.id
            for dep in r.depends_on:
                dependents.setdefault(dep, set()).add(r.id)
        templates = {t for f in files.values() for t in f.templates}
        self.last = _Carried(dict(files), {t: _blob(snap, t) for t in templates}, desired, paths,
                             {k: frozenset(v) for k, v in dependents.items()})
        self._why = "patch not tried"

    def patch(self, snap: Snapshot, values: Mapping[str, Any], keys: Mapping[str, str],
              one: Callable[[str, Mapping[str, Any]], FileLoad],
              check: Callable[[Mapping[str, Resource]], list[Problem]]) -> InfraDesired | None:
        """The load of `snap` patched from the last one, or None (with the reason kept) for the full path."""
        last = self.last
        if last is None:
            return None
        why = self._try(last, snap, values, keys, one, check)
        if isinstance(why, str):
            self._why = why
            return None
        self.patched += 1
        return why

    def _try(self, last: _Carried, snap: Snapshot, values: Mapping[str, Any], keys: Mapping[str, str],
             one: Callable[[str, Mapping[str, Any]], FileLoad],
             check: Callable[[Mapping[str, Resource]], list[Problem]]) -> InfraDesired | str:
        # 1. the moved files
        moved_templates = {t for t, blob in last.template_blobs.items() if _blob(snap, t) != blob}
        moved: list[str] = []
        for path in values:
            before = last.files.get(path)
            key = keys.get(path, "")
            if not key:
                return f"{path} has no cache key"
            if before is None or before.key != key or (
                    moved_templates and not moved_templates.isdisjoint(before.templates)):
                moved.append(path)
        gone = [p for p in last.files if p not in values]
        if len(moved) + len(gone) > MAX_MOVED:
            return f"{len(moved) + len(gone)} files moved"
        # 2. their resources (a problem in any: the full path reports it)
        files = dict(last.files)
        old: list[Resource] = []
        for path in gone:
            old.extend(files.pop(path).resources)
        new: list[Resource] = []
        for path in moved:
            loaded = one(path, values[path])
            if loaded.problems:
                return f"{path} has problems"
            if path in files:
                old.extend(files[path].resources)
            files[path] = loaded
            new.extend(loaded.resources)
        # 3. collect in a full load's order; a duplicate id shows as a shorter mapping
        resources: dict[str, Resource] = {}
        count = 0
        for path in sorted(files):
            for r in files[path].resources:
                resources[r.id] = r
            count += len(files[path].resources)
        if len(resources) != count:
            return "a duplicate resource id"
        # 4. references: moved resources' own, unchanged resources' on what went away, paths, cycles
        old_ids = {r.id for r in old}
        moved_ids = {r.id for r in new}
        for r in new:
            if any(d not in resources for d in r.depends_on):
                return f"resource {r.id} depends on an unknown resource"
        for rid in old_ids - resources.keys():
            if not last.dependents.get(rid, frozenset()) <= old_ids:
                return f"a resource depends on {rid}, which went away"
        paths = dict(last.paths)
        for r in old:
            if r.path and paths.get(r.path) == r.id:
                del paths[r.path]
        for r in new:
            if r.path:
                if r.path in paths:
                    return f"{r.path} is managed twice"
                paths[r.path] = r.id
        if any(r.depends_on for r in new) and check(resources):
            return "a dependency problem"
        dependents = {k: set(v) for k, v in last.dependents.items()}
        for r in old:
            for dep in r.depends_on:
                dependents.get(dep, set()).discard(r.id)
        for r in new:
            for dep in r.depends_on:
                dependents.setdefault(dep, set()).add(r.id)
        desired = InfraDesired(resources=MappingProxyType(resources), problems=())
        self.last = _Carried(files, {**last.template_blobs, **{t: _blob(snap, t) for f in (files[p] for p in moved)
                                                               for t in f.templates}},
                             desired, paths, {k: frozenset(v) for k, v in dependents.items() if v})
        self.note = f"patched: {len(moved)} file(s) moved, {len(gone)} gone, {len(moved_ids)} resource(s) reloaded"
        return desired
