"""The pure diff: desired resources, what the host has, and inventory in; actions and drift out.

A difference between host and repo is *drift* when inventory shows the same spec was applied before (someone
changed the host); it is a *change* when the spec itself moved (someone changed the repo). Changes always
apply; drift is corrected or only reported, per the resource's `drift` setting.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import PurePosixPath

from reconcilers.base import Action, ActionKind, InventoryItem, freeze
from reconcilers.infra.local import content_hash
from reconcilers.infra.model import InfraDesired, InfraObserved, ObservedResource, Resource

NAME = "infra"


@dataclass(frozen=True, slots=True)
class Finding:
    """How one resource differs from the host: `change` (repo moved) or `drift` (host moved), and why."""

    resource_id: str
    nature: str                               # create | change | drift
    reason: str


def expected_link(path: str, target: str) -> str:
    """The relative link text the local provider writes for a symlink resource."""
    return os.path.relpath("/" + target, "/" + str(PurePosixPath(path).parent))


def _parents(path: str) -> list[str]:
    """"a/b/c" -> ["a/b", "a"] (string work: this runs once per resource per plan)."""
    parts = path.split("/")[:-1]
    return ["/".join(parts[:i]) for i in range(len(parts), 0, -1)]


def _host_differs(r: Resource, o: ObservedResource) -> str:
    """'' when the host matches the resource, else why not."""
    f = r.fields
    if r.kind in ("file", "systemd_unit"):
        if not o.exists:
            return "missing"
        if o.kind != "file":
            return f"is a {o.kind}, not a file"
        if o.content_hash != content_hash(f["content"]):
            return "content differs"
        if o.mode != format(int(f["mode"], 8), "04o"):
            return f"mode {o.mode} is not {f['mode']}"
        return ""
    if r.kind == "directory":
        if not o.exists:
            return "missing"
        if o.kind != "directory":
            return f"is a {o.kind}, not a directory"
        if o.mode != format(int(f["mode"], 8), "04o"):
            return f"mode {o.mode} is not {f['mode']}"
        return ""
    if r.kind == "symlink":
        if not o.exists:
            return "missing"
        if o.kind != "symlink":
            return f"is a {o.kind}, not a symlink"
        if o.target != expected_link(f["path"], f["target"]):
            return f"points to {o.target}"
        return ""
    if r.kind == "command" and "creates" in f and not o.exists:
        return f"{f['creates']} is missing"
    return ""


def findings(desired: InfraDesired, observed: InfraObserved,
             inventory: Mapping[str, InventoryItem]) -> list[Finding]:
    """Every desired resource that needs attention, classified."""
    out: list[Finding] = []
    for rid, r in desired.resources.items():
        inv = inventory.get(rid)
        known_hash = json.loads(inv.data).get("spec_hash") if inv else None
        o = observed.resources.get(rid, ObservedResource(exists=False))
        differs = _host_differs(r, o)
        if r.kind == "command":
            if known_hash != r.spec_hash and not ("creates" in r.fields and o.exists):
                out.append(Finding(rid, "create" if inv is None else "change", "spec changed" if inv else "new"))
            elif differs:
                out.append(Finding(rid, "drift", differs))
            continue
        if not differs:
            continue
        if known_hash == r.spec_hash:
            out.append(Finding(rid, "drift", differs))
        else:
            out.append(Finding(rid, "create" if not o.exists else "change", differs))
    return out


def _change(r: Resource, f: Finding) -> str:
    """The action payload as canonical JSON; the resource's spec is already canonical JSON, so it is spliced
    in rather than decoded and encoded again (this runs once per changed resource)."""
    dumps = json.dumps
    resource = (f'{{"id":{dumps(r.id)},"kind":{dumps(r.kind)},"provider":{dumps(r.provider)},'
                f'"prune":{dumps(r.prune)},"source":{dumps(r.source)},"spec":{r.spec}}}')
    return (f'{{"inventory":{dumps(r.inventory_data())},"nature":{dumps(f.nature)},'
            f'"reason":{dumps(f.reason)},"resource":{resource}}}')


def _summary(verb: str, r: Resource) -> str:
    f = r.fields
    if r.kind == "command":
        return f"{verb} command {r.id}: {f['run'][:60]}"
    extra = f" ({f['mode']})" if "mode" in f else ""
    if r.kind == "symlink":
        extra = f" -> {f['target']}"
    return f"{verb} {r.kind} {r.path}{extra}"


def plan(desired: InfraDesired, observed: InfraObserved, inventory_items: list[InventoryItem]) -> list[Action]:
    """Actions that bring the host to `desired`, prune included. Pure."""
    inventory = {i.resource_id: i for i in inventory_items if i.reconciler == NAME}
    actions: dict[str, Action] = {}
    dirs = {r.path: r.id for r in desired.resources.values() if r.kind == "directory"}
    by_path = {r.path: r.id for r in desired.resources.values() if r.path}
    removed_paths: dict[str, str] = {}
    deletes: list[tuple[str, dict[str, object]]] = []
    for rid, item in sorted(inventory.items()):
        if rid in desired.resources:
            continue
        data = json.loads(item.data)
        if not data.get("prune", True):
            continue
        deletes.append((rid, data))
        if data.get("path"):
            removed_paths[str(data["path"])] = f"{NAME}:{rid}"
    for f in findings(desired, observed, inventory):
        if f.nature == "drift" and desired.resources[f.resource_id].drift != "correct":
            continue
        r = desired.resources[f.resource_id]
        deps = [f"{NAME}:{d}" for d in r.depends_on]
        deps += [f"{NAME}:{dirs[p]}" for p in _parents(r.path) if p in dirs]
        if r.path in removed_paths:
            deps.append(removed_paths[r.path])
        if r.kind == "symlink" and r.fields["target"] in by_path:
            deps.append(f"{NAME}:{by_path[r.fields['target']]}")
        kind: ActionKind = "run" if r.kind == "command" else ("create" if f.nature == "create" else "update")
        verb = {"create": "create", "update": "update", "run": "run"}[kind]
        compensation = None
        if r.kind == "command" and "compensate" in r.fields:
            compensation = freeze({"run": r.fields["compensate"], "timeout": r.fields.get("timeout", 300),
                                   "env": r.fields.get("env", {})})
        actions[r.id] = Action(
            id=f"{NAME}:{r.id}", reconciler=NAME, kind=kind, target=r.id,
            summary=f"{_summary(verb, r)} [{f.reason}]" if f.nature == "drift" else _summary(verb, r),
            change=_change(r, f),
            depends_on=tuple(sorted(set(d for d in deps if d != f"{NAME}:{r.id}"))), compensation=compensation)
    # A removed folder goes after everything removed beneath it (one walk up per removed path).
    deleted_at = {str(data["path"]): rid for rid, data in deletes if data.get("path")}
    children: dict[str, list[str]] = {}
    for rid, data in deletes:
        for parent in _parents(str(data.get("path", ""))):
            if parent in deleted_at:
                children.setdefault(deleted_at[parent], []).append(f"{NAME}:{rid}")
    for rid, data in deletes:
        path = str(data.get("path", ""))
        what = f"{data.get('kind')} {path}" if path else f"command {rid} (forget; nothing to remove)"
        actions[f"-{rid}"] = Action(
            id=f"{NAME}:{rid}", reconciler=NAME, kind="delete", target=rid, summary=f"delete {what}",
            change=freeze({"inventory": data}), depends_on=tuple(sorted(children.get(rid, ()))))
    # Debris of an interrupted apply (a temporary file never renamed): removed, whatever else happens.
    for stray in observed.strays:
        actions[f"~{stray}"] = Action(
            id=f"{NAME}:~tmp:{stray}", reconciler=NAME, kind="delete", target=stray,
            summary=f"remove stray temporary file {stray} (an interrupted apply left it)",
            change=freeze({"stray": stray}))
    return list(actions.values())
