"""Cost in plans: each cloud server action's hourly price change (+ for what is created, - for what is
destroyed; a replacement costs the difference), from the cached catalogs (reconcilers/infra/providers/
catalog.py). Prices are in the provider's own currency (AWS: USD; UpCloud: EUR) and are shown per provider,
never summed across providers."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

from reconcilers.base import Action, InventoryItem
from reconcilers.infra.model import InfraDesired
from reconcilers.infra.providers.catalog import HOURS_PER_MONTH, Catalogs, price


def _old(inventory: Mapping[str, InventoryItem], rid: str) -> tuple[str, str] | None:
    item = inventory.get(rid)
    if item is None or item.kind != "server":
        return None
    data = json.loads(item.data)
    return str(data.get("provider", "")), str(data.get("size") or "")


def changes(actions: Sequence[Action], desired: InfraDesired, inventory: Sequence[InventoryItem],
            catalogs: Catalogs) -> dict[str, tuple[str, float]]:
    """Action id -> (provider, hourly price change) for the server actions whose prices are known."""
    inv = {i.resource_id: i for i in inventory if i.reconciler == "infra"}
    out: dict[str, tuple[str, float]] = {}
    for a in actions:
        if a.reconciler != "infra":
            continue
        change = 0.0
        provider = ""
        if a.kind == "delete":
            payload = a.payload()
            if "orphan" in payload or payload.get("replaced"):
                continue                      # a replacement's old object: its action prices the change
            old = _old(inv, a.target)
            if old is None:
                continue
            provider, size = old
            known = price(catalogs, provider, size)
            if known is None:
                continue
            change = -known
        else:
            r = desired.resources.get(a.target)
            if r is None or r.kind != "server":
                continue
            provider = r.provider
            new = price(catalogs, provider, str(r.fields.get("size")))
            if new is None:
                continue
            old = _old(inv, a.target)
            replaced = a.summary.startswith("replace") and old is not None and old[0] == provider
            if a.kind == "update" and not replaced:
                continue                      # an in-place change costs nothing more
            before = 0.0
            if replaced and old is not None:
                before = price(catalogs, provider, old[1]) or 0.0
            change = new - before
        out[a.id] = (provider, change)
    return out


def annotate(actions: Sequence[Action], cost: Mapping[str, tuple[str, float]]) -> list[Action]:
    """The actions with their price change appended to the summary (`[+0.0116/h]`)."""
    out = []
    for a in actions:
        found = cost.get(a.id)
        if found is not None and found[1]:
            a = Action(a.id, a.reconciler, a.kind, a.target, f"{a.summary} [{found[1]:+.4f}/h]", a.change,
                       a.depends_on, a.compensation)
        out.append(a)
    return out


def totals(cost: Mapping[str, tuple[str, float]]) -> dict[str, dict[str, Any]]:
    """Provider -> {hourly, monthly} price change of a plan."""
    out: dict[str, dict[str, Any]] = {}
    for provider, hourly in cost.values():
        row = out.setdefault(provider, {"hourly": 0.0, "monthly": 0.0})
        row["hourly"] += hourly
        row["monthly"] += hourly * HOURS_PER_MONTH
    return out


TALLY_TITLE = "Cost change (provider's currency)"


def tally(provider: str, hourly: float) -> dict[str, Any]:
    """An action detail's `tally` (the kernel's plan report sums tallies by title and key, whatever the
    reconciler): this action's price change on `provider`."""
    return {"title": TALLY_TITLE, "key": provider,
            "values": {"per hour": hourly, f"per month ({HOURS_PER_MONTH} h)": hourly * HOURS_PER_MONTH}}
