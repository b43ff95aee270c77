"""Load `infra/**/*.ncl` from a snapshot into frozen desired state (pure but for the Nickel evaluator).

1. Evaluate every infra file under the `infra.ncl` Config contract: Nickel's cheap `Shape` pass and the rest of
   Config checked in Python, Config itself in Nickel for any file that pass doubts (reconcilers/infra/contract.py).
2. Collect resources, refusing duplicate ids across files (both places named).
3. Render `template` files from the snapshot with their `vars` (Jinja2, sandboxed, strict undefined).
4. Check references: unknown `depends_on` ids, dependency cycles (the cycle named), unsafe names.
"""

from __future__ import annotations

import graphlib
import re
from collections.abc import Mapping
from types import MappingProxyType
from typing import Any

from reconcilers.base import Problem, freeze
from reconcilers.errors import InputError
from reconcilers.infra import contract, secretrefs
from reconcilers.infra.loadcarry import FileLoad, LoadCarry
from reconcilers.infra.model import CLOUD_KINDS, InfraDesired, Resource
from reconcilers.infra.providers.cloud_diff import references
from reconcilers.infra.templates import TemplateRenderer
from reconcilers.locations import MAX_FILES, safe_relpath
from reconcilers.ports import Evaluator, Snapshot

INFRA_CONTRACT = contract.CONFIG
_COMMON = frozenset(("kind", "provider", "depends_on", "prune", "drift", "labels", "description"))
_UNIT_NAME = re.compile(r"^[A-Za-z0-9@_.:-]+\.(service|socket|timer|target|path|mount)$")
_ID = re.compile(r"^[a-z0-9][a-z0-9_.-]{0,127}$")


_FIELD = re.compile(r'^\s*(?:"([^"\n]+)"|([A-Za-z0-9_][A-Za-z0-9_.\'-]*))\s*=', re.MULTILINE)


def _lines_of(text: str) -> dict[str, int]:
    """Where each `name =` field first appears in a file: one pass, so ids map to lines in O(file)."""
    out: dict[str, int] = {}
    line, pos = 1, 0
    for m in _FIELD.finditer(text):
        line += text.count("\n", pos, m.start())
        pos = m.start()
        out.setdefault(m.group(1) or m.group(2), line)
    return out


def _render(snap: Snapshot, rid: str, template: str, variables: Mapping[str, Any],
            renderer: TemplateRenderer) -> str:
    entry = snap.entry(template)
    if entry is None:
        raise InputError(f"resource {rid}: template {template} is not in the commit", where=template)
    return renderer.render(rid, template, snap.text(entry), variables)


def _spec(snap: Snapshot, rid: str, raw: Mapping[str, Any], renderer: TemplateRenderer) -> dict[str, Any]:
    """The host-facing fields of a resource, with paths normalised and templates rendered."""
    kind = raw["kind"]
    spec = {k: v for k, v in raw.items() if k not in _COMMON}
    tokens = secretrefs.extract(rid, kind, spec)      # references -> tokens; values come at apply time only
    for key in ("path", "target", "creates"):
        if key in spec:
            try:
                spec[key] = safe_relpath(spec[key])
            except ValueError as err:
                raise InputError(f"resource {rid}: {key}: {err}") from err
    if kind == "file":
        has_content, has_template = "content" in spec, "template" in spec
        if has_content == has_template:
            raise InputError(f"resource {rid}: a file needs exactly one of `content` or `template`")
        if has_template:
            spec["content"] = _render(snap, rid, spec.pop("template"), spec.get("vars", {}), renderer)
        spec.pop("vars", None)
    if kind == "systemd_unit" and not _UNIT_NAME.match(spec["name"]):
        raise InputError(f"resource {rid}: {spec['name']!r} is not a systemd unit name (e.g. app.service)")
    secretrefs.finish(rid, spec, tokens)
    if kind in ("file", "systemd_unit") and "mode" not in spec:
        # A file holding a secret is readable by its owner only unless the resource says otherwise.
        spec["mode"] = "0600" if secretrefs.holds_private(spec) else "0644"
    return spec


# Files' loaded resources kept across revisions: a revision at the host's cap and the next one fit (a
# 20,000-file repo emptied a 20,000-entry cache on every commit, and every file was rebuilt).
FILE_CACHE_MAX = 2 * MAX_FILES + 1_000
FileCache = dict[tuple[str, str, tuple[str, ...]], tuple[tuple[Resource, ...], tuple[Problem, ...]]]


def load_infra(snap: Snapshot, evaluator: Evaluator, cache: FileCache | None = None,
               renderer: TemplateRenderer | None = None, carry: LoadCarry | None = None) -> InfraDesired:
    """The desired infrastructure of a commit. `cache` keeps each file's resources by the file's Nickel
    result key and its templates' blob ids, so a commit that changes one file rebuilds one file. Templates
    render in `renderer`'s bounded worker (a short-lived one when none is given). `carry` keeps the last
    problem-free load, and the next one is patched from it by the files whose key moved (loadcarry.py)."""
    if renderer is None:
        own = TemplateRenderer()
        try:
            return load_infra(snap, evaluator, cache, own, carry)
        finally:
            own.close()
    renderer.begin()
    if not cache and snap.entries("templates"):
        renderer.prestart()     # a cold load of a repo with templates will render: start the worker meanwhile
    entries = snap.entries("infra", suffixes=(".ncl",))
    # Files loaded while Nickel still evaluates others (contract.evaluate's on_value): path -> (the value, its
    # key, its FileLoad). A cold load of 5,000 resources spent ~0.2 s on this after every run was back.
    early: dict[str, tuple[Mapping[str, Any], str, FileLoad]] = {}

    def ahead(path: str, key: str, value: Mapping[str, Any]) -> None:
        try:
            early[path] = (value, key, _file_load(snap, path, value, key, cache, renderer))
        except Exception:  # noqa: BLE001 an optimisation only: `one` below loads the file again and raises
            early.pop(path, None)

    result = contract.evaluate(snap, evaluator, entries, on_value=ahead)
    problems: list[Problem] = [
        Problem(p.message, p.path, p.line, p.col, "infra", p.hint) for p in result.problems]

    def one(path: str, value: Mapping[str, Any]) -> FileLoad:
        key = result.keys.get(path, "")
        known = early.get(path)
        if known is not None and known[0] is value and known[1] == key:
            return known[2]
        return _file_load(snap, path, value, key, cache, renderer)

    if carry is not None and not problems:
        patched = carry.patch(snap, result.values, result.keys, one, _check_references)
        if patched is not None:
            return patched
    files: dict[str, FileLoad] = {}
    resources: dict[str, Resource] = {}
    for path, value in sorted(result.values.items()):
        files[path] = loaded = one(path, value)
        problems.extend(loaded.problems)
        for r in loaded.resources:
            if r.id in resources:
                first = resources[r.id]
                problems.append(Problem(
                    f"duplicate resource id {r.id!r}: also declared in {first.source}:{first.line}",
                    path, r.line, reconciler="infra", hint="resource ids are unique across infra/"))
                continue
            resources[r.id] = r
    problems.extend(_check_references(resources))
    desired = InfraDesired(resources=MappingProxyType(resources), problems=tuple(problems))
    if carry is not None:
        carry.remember(snap, files, result.keys, desired)
    return desired


def _file_load(snap: Snapshot, path: str, value: Mapping[str, Any], nickel_key: str, cache: FileCache | None,
               renderer: TemplateRenderer) -> FileLoad:
    """One evaluated file's resources and problems, from `cache` when its key (Nickel result, templates' blob
    ids) was loaded before."""
    used = tuple(sorted({str(raw["template"]) for raw in value.get("resources", {}).values()
                         if isinstance(raw, dict) and "template" in raw}))
    templates = tuple(sorted(f"{t}@{(snap.entry(t) or _MISSING).blob_id}" for t in used))
    key = (path, nickel_key, templates)
    cached = cache.get(key) if cache is not None and key[1] else None
    if cached is None:
        cached = _load_file(snap, path, value, renderer)
        if cache is not None and key[1]:
            if len(cache) > FILE_CACHE_MAX:
                cache.clear()
            cache[key] = cached
    return FileLoad(nickel_key, used, cached[0], cached[1])


class _Missing:
    blob_id = "missing"


_MISSING = _Missing()


def _load_file(snap: Snapshot, path: str, value: Mapping[str, Any], renderer: TemplateRenderer,
               ) -> tuple[tuple[Resource, ...], tuple[Problem, ...]]:
    """The resources of one evaluated infra file."""
    entry = snap.entry(path)
    lines = _lines_of(snap.text(entry)) if entry else {}
    out: list[Resource] = []
    problems: list[Problem] = []
    for rid, raw in sorted(value.get("resources", {}).items()):
        line = lines.get(rid, 0)
        if not _ID.match(rid):
            problems.append(Problem(f"resource id {rid!r} must be lowercase letters, digits, _ . -",
                                    path, line, reconciler="infra"))
            continue
        try:
            spec = _spec(snap, rid, raw, renderer)
        except InputError as err:
            file, _, ln = (err.where or path).partition(":")
            if not ln.isdigit():
                # No line in the file named (a missing template, an undefined variable): point at the
                # resource's declaration, never at the resource's line number in another file.
                file, ln = path, str(line)
            problems.append(Problem(err.what, file, int(ln), reconciler="infra", hint=err.hint))
            continue
        deps = tuple(raw.get("depends_on", ()))
        if raw["kind"] in CLOUD_KINDS:         # a cloud resource waits for the resources its fields name
            deps = tuple(dict.fromkeys([*deps, *references(raw["kind"], spec)]))
        out.append(Resource(
            id=rid, kind=raw["kind"], provider=raw.get("provider", "local"), spec=freeze(spec),
            depends_on=deps, prune=bool(raw.get("prune", True)),
            drift=str(raw.get("drift", "correct")), source=path, line=line,
            labels=MappingProxyType(dict(raw.get("labels", {})))))
    return tuple(out), tuple(problems)


def _check_references(resources: Mapping[str, Resource]) -> list[Problem]:
    problems: list[Problem] = []
    paths: dict[str, Resource] = {}
    for r in resources.values():
        for dep in r.depends_on:
            if dep not in resources:
                # A cloud resource is named with its provider: the missing one may be meant for another.
                who = f"{r.id} ({r.kind} on {r.provider})" if r.kind in CLOUD_KINDS else r.id
                problems.append(Problem(f"resource {who} depends on unknown resource {dep!r}", r.source, r.line,
                                        reconciler="infra", hint="fix the id or add the resource"))
        if r.path:
            other = paths.get(r.path)
            if other is not None:
                problems.append(Problem(f"resources {other.id} and {r.id} both manage {r.path}", r.source, r.line,
                                        reconciler="infra"))
            paths[r.path] = r
    sorter: graphlib.TopologicalSorter[str] = graphlib.TopologicalSorter()
    for r in resources.values():
        # Only resources with dependencies: one without can close no cycle (20,000 lone files cost nothing).
        deps = [d for d in r.depends_on if d in resources]
        if deps:
            sorter.add(r.id, *deps)
    try:
        sorter.prepare()
    except graphlib.CycleError as err:
        cycle = list(err.args[1])
        first = resources[cycle[0]]
        problems.append(Problem(f"dependency cycle: {' -> '.join(cycle)}", first.source, first.line,
                                reconciler="infra", hint="remove one of the depends_on links"))
    return problems
