"""Catalogs of sizes, images and zones per provider, fetched from the driver (`stratum infra catalog refresh`),
cached in the index (table `infra_catalog`, the infra reconciler's own), and used to reject unknown values with
a "did you mean" and to price plans (hourly from libcloud's pricing data or the API's price list; monthly as
730 hours, the convention the providers bill by)."""

from __future__ import annotations

import difflib
import time
from collections.abc import Mapping
from dataclasses import dataclass

from reconcilers.base import Problem
from reconcilers.infra.model import CLOUD_KINDS, InfraDesired
from reconcilers.ports import Tables

HOURS_PER_MONTH = 730
# The infra reconciler's own tables (component "infra" of the index's schema versions).
MIGRATIONS = ("CREATE TABLE infra_catalog (provider TEXT, kind TEXT, id TEXT, name TEXT, price_hourly DOUBLE, "
              "fetched DOUBLE, PRIMARY KEY (provider, kind, id))",)
# resource field -> catalog kind
FIELDS = {"size": "size", "image": "image", "zone": "zone"}


@dataclass(frozen=True, slots=True)
class Entry:
    """One catalog entry: a size, image or zone id of a provider, with its hourly price when known."""

    kind: str
    id: str
    name: str = ""
    price_hourly: float | None = None


Catalogs = Mapping[str, Mapping[str, Mapping[str, Entry]]]   # provider -> kind -> id -> entry


def store(index: Tables, provider: str, entries: list[Entry]) -> int:
    """Replace `provider`'s catalog in the index; returns the number of entries."""
    index.migrate("infra", MIGRATIONS)
    with index.transaction():
        index.execute("DELETE FROM infra_catalog WHERE provider = ?", [provider])
        if entries:
            now = time.time()
            index.execute(
                "INSERT INTO infra_catalog SELECT ?, unnest(?), unnest(?), unnest(?), unnest(?::DOUBLE[]), ?",
                [provider, [e.kind for e in entries], [e.id for e in entries], [e.name for e in entries],
                 [e.price_hourly for e in entries], now])
    return len(entries)


def load(index: Tables | None) -> dict[str, dict[str, dict[str, Entry]]]:
    """Every cached catalog (empty when none was fetched)."""
    if index is None:
        return {}
    # Read only: the CLI opens the index read-only, and a repo without catalogs has no table yet.
    if not index.query("SELECT 1 FROM information_schema.tables WHERE table_name = 'infra_catalog'"):
        return {}
    out: dict[str, dict[str, dict[str, Entry]]] = {}
    for provider, kind, id_, name, price in index.query(
            "SELECT provider, kind, id, name, price_hourly FROM infra_catalog"):
        out.setdefault(provider, {}).setdefault(kind, {})[id_] = Entry(kind, id_, name or "", price)
    return out


def check(desired: InfraDesired, catalogs: Catalogs) -> list[Problem]:
    """Unknown sizes, images and zones of cloud resources, for providers whose catalog of that kind is known."""
    out: list[Problem] = []
    for r in desired.resources.values():
        if r.kind not in CLOUD_KINDS or r.provider not in catalogs:
            continue
        for field, kind in FIELDS.items():
            known = catalogs[r.provider].get(kind)
            value = r.fields.get(field)
            if not known or value is None or str(value) in known:
                continue
            close = difflib.get_close_matches(str(value), list(known), n=3, cutoff=0.6)
            hint = (f"did you mean {' or '.join(repr(c) for c in close)}?" if close
                    else f"see `stratum infra catalog show {r.provider}`")
            out.append(Problem(f"resource {r.id}: unknown {field} {value!r} on provider {r.provider}",
                               r.source, r.line, reconciler="infra", hint=hint))
    return out


def price(catalogs: Catalogs, provider: str, size: str) -> float | None:
    """The hourly price of a size on a provider, when its catalog knows it."""
    entry = catalogs.get(provider, {}).get("size", {}).get(size)
    return entry.price_hourly if entry is not None else None


def money(hourly: float) -> str:
    """"$0.0116/h, $8.47/month"."""
    return f"${hourly:.4f}/h, ${hourly * HOURS_PER_MONTH:.2f}/month"
