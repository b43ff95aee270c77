"""Checks and observation helpers of cloud resources that the infra reconciler calls: validation (providers
that exist on this host, references of the right kind on the same provider), orphans found by their tags, and
the simulated state of a pull request's plan."""

from __future__ import annotations

from collections.abc import Mapping

from reconcilers.base import InventoryItem, Problem
from reconcilers.infra.model import CLOUD_KINDS, InfraDesired, ObservedResource, Resource
from reconcilers.infra.provider import Provider
from reconcilers.infra.providers import Unavailable
from reconcilers.infra.providers.cloud import CloudProvider
from reconcilers.infra.providers.cloud_diff import (
    COMPARED,
    dns_values,
    observed_attrs,
    replace_hash,
    rule_keys,
    wanted_tags,
)
from reconcilers.infra.providers.cloud_plan import inventory_provider

# field -> the kind the resource it names must be
_REF_KINDS = {"network": "network", "subnet": "subnet", "server": "server", "firewalls": "firewall",
              "servers": "server"}
_KIND_NAMES = {"dns_record": "DNS record", "load_balancer": "load balancer"}


def check(desired: InfraDesired, providers: Mapping[str, Provider]) -> list[Problem]:
    """Problems of cloud resources: unknown or unusable providers, references to a resource of another kind
    or another provider."""
    out: list[Problem] = []
    res = desired.resources
    for r in res.values():
        if r.kind not in CLOUD_KINDS:
            continue

        def problem(message: str, hint: str = "", r: Resource = r) -> None:
            out.append(Problem(message, r.source, r.line, reconciler="infra", hint=hint))

        found = providers.get(r.provider)
        if r.provider == "local" or found is None:
            names = sorted(n for n in providers if n != "local")
            problem(f"resource {r.id}: {r.kind} needs a cloud provider; {r.provider!r} is not configured on "
                    "this host", f"configured: {', '.join(names) or 'none'}; add [infra.providers."
                    f"{r.provider}] to the host settings (stratumd.toml), or name a configured provider")
            continue
        if isinstance(found, Unavailable):
            problem(f"resource {r.id}: provider {r.provider} is not usable: {found.error.what}", found.error.hint)
        elif isinstance(found, CloudProvider) and r.kind not in found.backend.kinds:
            served = ", ".join(sorted(found.backend.kinds))
            problem(f"resource {r.id}: provider {r.provider} has no {_KIND_NAMES.get(r.kind, r.kind)} support",
                    f"{r.provider} serves: {served}; declare the {r.kind} on a provider that has it")
        elif isinstance(found, CloudProvider) and r.fields.get("tags") and not getattr(found.backend,
                                                                                        "tags_supported", True):
            problem(f"resource {r.id}: provider {r.provider} cannot set tags (the generic libcloud adapter: "
                    "libcloud's common subset has no tags)", "remove `tags` from the resource")
        for key, kind in _REF_KINDS.items():
            value = r.fields.get(key)
            refs: list[str] = ([str(v) for v in value] if isinstance(value, (list, tuple))
                               else [value] if isinstance(value, str) else [])
            for name in refs:
                other = res.get(str(name))
                if other is None:
                    continue                  # an unknown id is reported by load (depends on unknown resource)
                if other.kind != kind:
                    problem(f"resource {r.id}: {key} names {name!r}, which is a {other.kind}, not a {kind}")
                elif other.provider != r.provider:
                    problem(f"resource {r.id} (provider {r.provider}) uses {kind} {name} of provider "
                            f"{other.provider}", f"move both to one provider, or give {r.id} a {kind} on "
                            f"{r.provider}")
    return out


def orphans(desired: InfraDesired, inventory: list[InventoryItem], providers: Mapping[str, Provider],
            cache: dict[str, str]) -> tuple[tuple[str, str, str], ...]:
    """(provider, kind, id) of objects tagged ours on the providers in use that nothing claims."""
    claimed = set(desired.resources)
    used = {r.provider for r in desired.resources.values() if r.kind in CLOUD_KINDS}
    for item in inventory:
        if item.reconciler == "infra":
            claimed.add(item.resource_id)
            if item.kind in CLOUD_KINDS:
                used.add(inventory_provider(item))
    out: list[tuple[str, str, str]] = []
    for name in sorted(used):
        found = providers.get(name)
        if isinstance(found, CloudProvider):
            out += [(name, kind, rid) for kind, rid in found.owned(cache) if rid not in claimed]
    return tuple(out)


def simulated(r: Resource) -> ObservedResource:
    """A cloud resource as if applied (pull-request plans read no API)."""
    spec = r.fields
    attrs: dict[str, object] = {k: spec[k] for k in COMPARED if k in spec}
    if r.kind == "firewall":
        attrs["rules"] = rule_keys(spec.get("rules"))
    if r.kind == "dns_record":
        attrs.update(values=dns_values(spec), ttl=int(spec.get("ttl", 300)))
    return ObservedResource(True, r.kind, replace_hash(spec), attrs=observed_attrs(attrs, wanted_tags(spec)))
