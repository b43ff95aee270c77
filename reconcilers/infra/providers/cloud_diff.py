"""The pure part of cloud resources: which fields force a new resource, how observed differs from desired.

A cloud resource carries Stratum's tags (`stratum:id`, `stratum:owner`, `stratum:spec`). `stratum:spec` is the
hash of the fields that cannot change in place (everything but `tags` and the readiness settings): when the repo
moves one of them, the resource is *replaced*; when only `tags` moved, it is *updated in place*. Attributes the
API reports (size, image, cidr, state, ...) are compared too, so a server resized or stopped behind Stratum's
back shows as drift even though its tags still match.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from typing import Any

from reconcilers.base import freeze

# Fields that are settings of Stratum's own, or that the API changes on the object itself (a firewall's rules
# are authorized and revoked one by one): changing them replaces nothing.
IN_PLACE = frozenset({"tags", "wait_ready", "timeout", "rules", "values", "ttl"})
# Attributes a backend reports that are compared with the spec field of the same name.
COMPARED = ("size", "image", "cidr", "size_gb", "zone")
TAG_ID, TAG_OWNER, TAG_SPEC = "stratum:id", "stratum:owner", "stratum:spec"
GONE_STATES = frozenset({"terminated", "shutting-down", "deleted", "deleting"})
DOWN_STATES = frozenset({"stopped", "stopping", "error", "suspended"})


def replace_hash(spec: Mapping[str, Any], in_place: frozenset[str] = IN_PLACE) -> str:
    """A short hash of the fields that need a new resource when they change (the `stratum:spec` tag)."""
    fixed = {k: v for k, v in spec.items() if k not in in_place}
    return hashlib.sha256(freeze(fixed).encode()).hexdigest()[:16]


# Before firewall rules were changed in place, they were part of the hash: a firewall tagged so is not replaced
# for that alone (with the replace cascade that would also replace every server using it).
_LEGACY_IN_PLACE = IN_PLACE - {"rules"}


def wanted_tags(spec: Mapping[str, Any]) -> dict[str, str]:
    """The user's tags of a resource (Stratum's own are added by the provider)."""
    return {str(k): str(v) for k, v in dict(spec.get("tags", {})).items()}


def rule_key(protocol: str, ports: str, cidr: str) -> str:
    """One inbound rule as `tcp:22-22:10.0.0.0/8` (every protocol: `all:*:cidr`, ports mean nothing there)."""
    if protocol in ("all", "-1"):
        return f"all:*:{cidr}"
    low, _, high = ports.partition("-")
    return f"{protocol}:{int(low)}-{int(high or low)}:{cidr}"


def rule_keys(rules: Any) -> list[str]:
    """The sorted keys of a firewall spec's `rules` (defaults as nickel/infra.ncl gives them)."""
    return sorted({rule_key(str(r.get("protocol", "tcp")), str(r.get("ports", "0-65535")),
                            str(r.get("cidr", "0.0.0.0/0"))) for r in rules or ()})


def observed_attrs(attrs: Mapping[str, Any], tags: Mapping[str, str]) -> str:
    """What `observe` keeps of a cloud object: its compared attributes, a firewall's inbound rules and the
    user tags, as canonical JSON."""
    user = {k: v for k, v in tags.items() if not k.startswith("stratum:") and k != "Name"}
    return freeze({**{k: attrs[k] for k in (*COMPARED, "state", "rules", "values", "ttl") if k in attrs},
                   "tags": user})


def differs(kind: str, spec: Mapping[str, Any], exists: bool, spec_tag: str, attrs_json: str,
            want: str | None = None) -> tuple[str, str]:
    """(why, how) the cloud object differs from the spec; how is "create", "replace", "update" or "" (same).
    `want` is the spec tag the spec should carry when the caller knows it (a spec with secret values in it)."""
    if not exists:
        return "missing", "create"
    attrs: dict[str, Any] = json.loads(attrs_json or "{}")
    state = str(attrs.get("state", ""))
    if state in DOWN_STATES:
        return f"state is {state}", "replace"
    moved = [f"{k} {attrs[k]} -> {spec[k]}" for k in COMPARED
             if k in attrs and k in spec and _norm(kind, k, attrs[k]) != _norm(kind, k, spec[k])]
    if moved:
        return ", ".join(moved), "replace"
    if spec_tag == "":
        # Imported (tagged as ours without a spec): its compared attributes match, so it is adopted in place.
        return "imported: Stratum's spec tag is recorded", "update"
    if spec_tag != (want or replace_hash(spec)) and not (
            kind == "firewall" and spec_tag == replace_hash(spec, _LEGACY_IN_PLACE)):
        return "fields that need a new resource changed", "replace"
    reasons = []
    if kind == "dns_record":
        reasons += dns_differs(spec, attrs)
    if kind == "firewall" and "rules" in attrs:
        seen, wanted = set(attrs["rules"]), set(rule_keys(spec.get("rules")))
        if seen != wanted:
            reasons.append("rules differ (" + ", ".join([f"+{k}" for k in sorted(wanted - seen)]
                                                         + [f"-{k}" for k in sorted(seen - wanted)]) + ")")
    have, wanted_now = dict(attrs.get("tags", {})), wanted_tags(spec)
    if have != wanted_now:
        changed = sorted(set(have) ^ set(wanted_now)
                         | {k for k in have.keys() & wanted_now.keys() if have[k] != wanted_now[k]})
        reasons.append(f"tags differ ({', '.join(changed)})")
    return ("; ".join(reasons), "update") if reasons else ("", "")


def _norm(kind: str, key: str, value: Any) -> str:
    """A compared attribute as text; a DNS zone without case or trailing dot (`Example.com.` is `example.com`)."""
    return str(value).rstrip(".").lower() if kind == "dns_record" and key == "zone" else str(value)


def dns_values(spec: Mapping[str, Any]) -> list[str]:
    """A DNS record spec's values as the API reports them (TXT without its quotes), sorted."""
    values = [str(v) for v in spec.get("values", ())]
    if str(spec.get("record_type", "A")) == "TXT":
        values = [v[1:-1] if len(v) >= 2 and v[0] == v[-1] == '"' else v for v in values]
    return sorted(values)


def dns_differs(spec: Mapping[str, Any], attrs: Mapping[str, Any]) -> list[str]:
    """What of a DNS record changes in place: its values and TTL (one atomic change on the API)."""
    out = []
    if "values" in attrs and sorted(str(v) for v in attrs["values"]) != dns_values(spec):
        out.append(f"values {' '.join(sorted(map(str, attrs['values'])))} -> {' '.join(dns_values(spec))}")
    if "ttl" in attrs and int(attrs["ttl"]) != int(spec.get("ttl", 300)):
        out.append(f"ttl {attrs['ttl']} -> {spec.get('ttl', 300)}")
    return out


def references(kind: str, spec: Mapping[str, Any]) -> list[str]:
    """Ids of other resources a cloud resource's fields name (they become dependencies)."""
    out: list[str] = []
    for key in ("network", "subnet", "server"):
        if isinstance(spec.get(key), str):
            out.append(str(spec[key]))
    out += [str(f) for f in spec.get("firewalls", ())]
    out += [str(s) for s in spec.get("servers", ())]         # a load balancer's members
    return out
