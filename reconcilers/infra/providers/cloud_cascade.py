"""Replace cascades: a cloud object replaced under objects that name it (a network under its subnets and
firewalls, a subnet under its servers) takes them along, in dependency order.

A cloud API refuses to delete what is still in use (AWS: a VPC with subnets, a security group an instance
uses), and the new object has a new id that the old dependents do not carry. So, for a replaced object X with
existing dependents, the plan:

1. deletes the old objects first, dependents before what they depend on (`infra:<id>@old`, keeping their
   inventory entries: the same resources come back),
2. then creates X anew and every dependent after it (each dependent's action says which replacement it
   follows: `replace server web on aws [its subnet web-subnet is replaced]`).

A volume attached to a replaced server is not replaced (it holds data): it is re-attached to the new server.
A load balancer whose member server is replaced is not replaced either (its name and address stay): the new
server is registered in it.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping

from reconcilers.base import Action, freeze
from reconcilers.infra.model import CLOUD_KINDS, InfraDesired, InfraObserved, ObservedResource, Resource
from reconcilers.infra.providers.cloud_diff import differs, references
from reconcilers.infra.secretrefs import AFTER

NAME = "infra"


def _field(r: Resource, ref: str) -> str:
    """The field of `r` that names `ref` (for the reason shown)."""
    return next((k for k in ("network", "subnet", "server") if r.fields.get(k) == ref), "firewall")


def _change(r: Resource, reason: str) -> str:
    """An action payload of the shape the infra diff gives (reconcilers/infra/diff.py `_change`)."""
    resource = {"id": r.id, "kind": r.kind, "provider": r.provider, "prune": r.prune, "source": r.source,
                "spec": json.loads(r.spec)}
    return freeze({"inventory": r.inventory_data(), "nature": "change", "reason": reason, "resource": resource})


def _with_deps(a: Action, extra: set[str]) -> Action:
    return Action(a.id, a.reconciler, a.kind, a.target, a.summary, a.change,
                  tuple(sorted(set(a.depends_on) | extra)), a.compensation)


def cascade(desired: InfraDesired, observed: InfraObserved, actions: dict[str, Action]) -> None:
    """Add the cascade of every replacement to `actions` (keyed as the infra diff keys them: a desired
    resource's action by its id), in place. Pure."""
    res = desired.resources
    # Deletes of removed resources that named a replaced one (a volume dropped from the repo while its server
    # is replaced) run before the old object goes: the API refuses, or races, otherwise.
    removed: dict[str, set[str]] = {}
    for a in actions.values():
        if a.kind == "delete" and "@" not in a.id and '"depends_on"' in a.change:
            data = a.payload().get("inventory")
            for dep in data.get("depends_on", ()) if isinstance(data, dict) else ():
                removed.setdefault(str(dep), set()).add(a.id)
    for x in _replaced(res, observed, actions, {rid: ["-"] for rid in removed}):
        actions[x] = _with_deps(actions[x], removed[x])

    def exists(rid: str) -> bool:
        return rid in observed.assumed or observed.resources.get(rid, ObservedResource(exists=False)).exists

    dependents: dict[str, list[str]] = {}
    for r in res.values():
        if r.kind in CLOUD_KINDS:
            for ref in references(r.kind, r.fields):
                other = res.get(ref)
                if other is not None and other.provider == r.provider and other.id != r.id:
                    dependents.setdefault(ref, []).append(r.id)
    if not dependents:
        return
    replaced = _replaced(res, observed, actions, dependents)
    if not replaced:
        return
    why: dict[str, str] = {}
    reattach: dict[str, set[str]] = {}
    queue = sorted(replaced)
    while queue:
        x = queue.pop()
        for d in sorted(dependents.get(x, ())):
            r = res[d]
            if not exists(d) or d in replaced:
                continue
            if r.kind in ("volume", "load_balancer") and res[x].kind == "server":
                # Data and addresses stay: the volume is attached to the new server, the balancer registers it.
                reattach.setdefault(d, set()).add(x)
                continue
            replaced.add(d)
            why[d] = f"its {_field(r, x)} {x} is replaced"
            queue.append(d)
    for x in sorted(replaced):
        r = res[x]
        old = f"{NAME}:{x}@old"
        before = {f"{NAME}:{d}@old" for d in dependents.get(x, ()) if d in replaced} | removed.get(x, set())
        actions[old] = Action(
            id=old, reconciler=NAME, kind="delete", target=x,
            summary=f"delete old {r.kind} {x} on {r.provider} (replaced{': ' + why[x] if x in why else ''})",
            change=freeze({"inventory": json.loads(r.inventory_data()), "keep_inventory": True, "replaced": True}),
            depends_on=tuple(sorted(before)))
        if x in actions:
            actions[x] = _with_deps(actions[x], {old})
        else:
            deps = {f"{NAME}:{d}" for d in r.depends_on} | set(r.fields.get(AFTER, ())) | {old}
            actions[x] = Action(id=f"{NAME}:{x}", reconciler=NAME, kind="update", target=x,
                                summary=f"replace {r.kind} {x} on {r.provider} [{why[x]}]",
                                change=_change(r, why[x]), depends_on=tuple(sorted(deps)))
    for v, servers in sorted(reattach.items()):
        if v in replaced:
            continue
        new = {f"{NAME}:{s}" for s in servers}
        if v in actions:
            actions[v] = _with_deps(actions[v], new)
            continue
        r = res[v]
        names = ", ".join(sorted(servers))
        reason = (f"register the new server{'s' if len(servers) > 1 else ''} {names}" if r.kind == "load_balancer"
                  else f"re-attach to the new server {names}")
        deps = {f"{NAME}:{d}" for d in r.depends_on} | new
        actions[v] = Action(id=f"{NAME}:{v}", reconciler=NAME, kind="update", target=v,
                            summary=f"update {r.kind} {v} on {r.provider} in place [{reason}]",
                            change=_change(r, reason), depends_on=tuple(sorted(deps)))


def _replaced(res: Mapping[str, Resource], observed: InfraObserved, actions: Mapping[str, Action],
              dependents: Mapping[str, list[str]]) -> set[str]:
    """The resources whose planned action replaces an existing object that others name."""
    out = set()
    get: Callable[[str], ObservedResource | None] = observed.resources.get
    for rid, a in actions.items():
        r = res.get(rid)
        o = get(rid)
        if r is None or a.kind == "delete" or r.kind not in CLOUD_KINDS or o is None or not o.exists:
            continue
        if dependents.get(rid) and differs(r.kind, r.fields, True, o.content_hash, o.attrs)[1] == "replace":
            out.add(rid)
    return out
