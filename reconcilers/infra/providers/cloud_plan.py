"""The cloud side of the pure diff (reconcilers/infra/diff.py calls these): summaries with reasons, moves
between providers, orphans, and the order deletes must run in.

- A resource whose `provider` changed is *created* on the new provider and then *deleted* on the old one (the
  delete waits for the create: fail over first, then tear down), so `aws` -> `upcloud` is one plan.
- Deletes run in reverse dependency order: a network goes after the servers and subnets in it were deleted.
- An object tagged ours that nothing claims (created, then the apply died before recording it) is deleted.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from typing import Any

from reconcilers.base import Action, InventoryItem, freeze
from reconcilers.infra.model import CLOUD_KINDS, InfraDesired, InfraObserved, ObservedResource, Resource
from reconcilers.infra.providers.cloud_diff import differs

NAME = "infra"


def is_cloud(kind: str) -> bool:
    """True for the kinds cloud providers serve."""
    return kind in CLOUD_KINDS


def how(r: Resource, o: ObservedResource) -> tuple[str, str]:
    """(why, how) for a cloud resource: create | replace | update | "" (in place)."""
    return differs(r.kind, r.fields, o.exists, o.content_hash, o.attrs)


def summary(verb: str, r: Resource, o: ObservedResource) -> str:
    """One line for a person: `create server web on aws (t3.micro, ami-1)`, `replace ... [size a -> b]`."""
    f = r.fields
    why, way = how(r, o)
    detail = ", ".join(str(f[k]) for k in ("size", "image", "cidr", "size_gb") if k in f)
    # Secret references (a server's user-data): each with the keyed fingerprint of its committed value.
    versions = f.get("secret_versions") or {}
    note = " with secret " + ", ".join(f"{ref} {fp}" for ref, fp in sorted(versions.items())) if versions else ""
    if way == "replace":
        return f"replace {r.kind} {r.id} on {r.provider} [{why}]{note}"
    if way == "update":
        return f"update {r.kind} {r.id} on {r.provider} in place [{why}]{note}"
    return f"{verb} {r.kind} {r.id} on {r.provider}" + (f" ({detail})" if detail else "") + note


def inventory_provider(item: InventoryItem | None) -> str:
    """The provider an inventory entry recorded ("local" when none)."""
    if item is None:
        return ""
    return str(json.loads(item.data).get("provider") or "local")


def moved(r: Resource, item: InventoryItem | None) -> bool:
    """True when a cloud resource was applied on another provider than the one it names now."""
    return item is not None and is_cloud(r.kind) and inventory_provider(item) != r.provider


def moves(desired: InfraDesired, inventory: Mapping[str, InventoryItem], planned: set[str]) -> list[Action]:
    """Deletes on the old provider of resources whose provider changed (each after its create, if planned)."""
    out = []
    for rid, item in sorted(inventory.items()):
        r = desired.resources.get(rid)
        if r is None or not moved(r, item):
            continue
        data: dict[str, Any] = json.loads(item.data)
        old = str(data.get("provider"))
        out.append(Action(
            id=f"{NAME}:{rid}@{old}", reconciler=NAME, kind="delete", target=rid,
            summary=f"delete {data.get('kind')} {rid} on {old} (moved to {r.provider})",
            change=freeze({"inventory": data, "keep_inventory": True}),
            depends_on=(f"{NAME}:{rid}",) if rid in planned else ()))
    return out


def orphans(observed: InfraObserved) -> list[Action]:
    """Deletes of objects tagged ours that no resource or inventory entry claims."""
    return [Action(id=f"{NAME}:~orphan:{provider}:{rid}", reconciler=NAME, kind="delete", target=rid,
                   summary=f"delete untracked {kind} {rid} on {provider} (tagged as ours, claimed by nothing: "
                           "left by an interrupted apply)",
                   change=freeze({"orphan": {"provider": provider, "kind": kind, "rid": rid}}))
            for provider, kind, rid in observed.orphans]


def delete_order(deletes: Iterable[Action]) -> list[Action]:
    """The deletes with reverse dependencies added: a resource is deleted after every deleted resource that
    depended on it (by the `depends_on` its inventory entry recorded)."""
    actions = list(deletes)
    by_rid: dict[str, str] = {}
    needs: dict[str, list[str]] = {}
    for a in actions:
        if '"depends_on"' not in a.change:    # only cloud entries record dependencies: skip decoding the rest
            continue
        data = a.payload().get("inventory")
        if not isinstance(data, dict) or not is_cloud(str(data.get("kind", ""))):
            continue
        by_rid[a.target] = a.id
        needs[a.id] = [str(d) for d in data.get("depends_on", ())]
    after: dict[str, set[str]] = {}
    for action_id, deps in needs.items():
        for dep in deps:
            if dep in by_rid:
                after.setdefault(by_rid[dep], set()).add(action_id)
    out = []
    for a in actions:
        extra = after.get(a.id)
        if extra:
            a = Action(a.id, a.reconciler, a.kind, a.target, a.summary, a.change,
                       tuple(sorted(set(a.depends_on) | extra)), a.compensation)
        out.append(a)
    return out
