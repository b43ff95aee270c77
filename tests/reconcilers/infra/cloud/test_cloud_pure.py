"""The pure parts of cloud resources: what forces a replacement, what is changed in place, how deletes are
ordered, how a move between providers is planned, and how prices add up (no API involved)."""

from __future__ import annotations

from reconcilers.base import Action, InventoryItem, freeze
from reconcilers.infra import diff
from reconcilers.infra.model import InfraDesired, InfraObserved, ObservedResource, Resource
from reconcilers.infra.providers import cost
from reconcilers.infra.providers.catalog import Entry
from reconcilers.infra.providers.cloud_diff import differs, observed_attrs, replace_hash


def server(rid: str, provider: str = "aws", deps: tuple[str, ...] = (), **spec: object) -> Resource:
    """A server resource."""
    fields: dict[str, object] = {"size": "t3.micro", "image": "ami-1", "tags": {}, "timeout": 300, **spec}
    return Resource(rid, "server", provider, freeze(fields), depends_on=deps)


def seen(r: Resource, **attrs: object) -> ObservedResource:
    """The resource as the API would report it after an apply, with `attrs` overriding."""
    spec = dict(r.fields)
    base = {"size": spec["size"], "image": spec["image"], "state": "running", **attrs}
    return ObservedResource(True, r.kind, replace_hash(spec), target="i-1",
                            attrs=observed_attrs(base, dict(spec.get("tags", {}))))


def test_what_replaces_and_what_updates_in_place() -> None:
    """Size, image or another fixed field moves: replace; tags or the timeout move: in place; a stopped or
    missing server: replace or create."""
    r = server("web")
    o = seen(r)
    assert differs("server", r.fields, True, o.content_hash, o.attrs) == ("", "")
    bigger = server("web", size="t3.small")
    assert differs("server", bigger.fields, True, o.content_hash, o.attrs) == ("size t3.micro -> t3.small",
                                                                              "replace")
    keyed = server("web", ssh_key="ops")
    assert differs("server", keyed.fields, True, o.content_hash, o.attrs)[1] == "replace"
    tagged = server("web", tags={"team": "a"}, timeout=60)
    assert differs("server", tagged.fields, True, o.content_hash, o.attrs) == ("tags differ (team)", "update")
    stopped = seen(r, state="stopped")
    assert differs("server", r.fields, True, stopped.content_hash, stopped.attrs) == ("state is stopped", "replace")
    assert differs("server", r.fields, False, "", "") == ("missing", "create")


def test_moving_provider_plans_create_then_delete_and_old_dependencies_after() -> None:
    """Inventory says web (on sub) is on aws; desired puts web on upcloud and drops sub: create web on
    upcloud, delete web on aws after it, delete sub after that."""
    web = server("web", provider="upcloud")
    inventory = [
        InventoryItem("infra", "web", "server", freeze({"kind": "server", "path": "", "prune": True,
                                                        "spec_hash": "x", "provider": "aws", "source": "a.ncl",
                                                        "depends_on": ["sub"], "size": "t3.micro"})),
        InventoryItem("infra", "sub", "subnet", freeze({"kind": "subnet", "path": "", "prune": True,
                                                        "spec_hash": "y", "provider": "aws", "source": "a.ncl",
                                                        "depends_on": [], "size": None}))]
    actions = {a.id: a for a in diff.plan(InfraDesired({"web": web}),
                                          InfraObserved({"web": ObservedResource(exists=False)}), inventory)}
    assert actions["infra:web"].kind == "create" and actions["infra:web"].summary.startswith(
        "create server web on upcloud")
    assert actions["infra:web@aws"].depends_on == ("infra:web",)
    assert actions["infra:web@aws"].payload()["keep_inventory"] is True
    assert actions["infra:sub"].depends_on == ("infra:web@aws",)

    catalogs = {"aws": {"size": {"t3.micro": Entry("size", "t3.micro", price_hourly=0.0104)}},
                "upcloud": {"size": {"t3.micro": Entry("size", "t3.micro", price_hourly=0.0149)}}}
    changes = cost.changes(list(actions.values()), InfraDesired({"web": web}), inventory, catalogs)
    assert changes == {"infra:web": ("upcloud", 0.0149), "infra:web@aws": ("aws", -0.0104)}
    assert cost.totals(changes)["aws"]["monthly"] == -0.0104 * 730


def test_orphans_become_deletes_that_keep_inventory_alone() -> None:
    """An object tagged ours that nothing claims becomes one delete naming its provider and kind."""
    observed = InfraObserved({}, orphans=(("aws", "network", "ghost"),))
    [action] = diff.plan(InfraDesired({}), observed, [])
    assert action.id == "infra:~orphan:aws:ghost" and action.kind == "delete"
    assert action.payload() == {"orphan": {"provider": "aws", "kind": "network", "rid": "ghost"}}


def test_annotate_adds_the_price_change_to_summaries() -> None:
    """A priced action's summary ends with its hourly change; others are left as they are."""
    a = Action("infra:web", "infra", "create", "web", "create server web on aws")
    b = Action("infra:net", "infra", "create", "net", "create network net on aws")
    out = cost.annotate([a, b], {"infra:web": ("aws", 0.0104)})
    assert [x.summary for x in out] == ["create server web on aws [+0.0104/h]", "create network net on aws"]


def test_each_apply_thread_gets_its_own_driver(tmp_path: object) -> None:
    """A libcloud connection keeps the request in flight on itself, so the providers built from host settings
    give each thread its own driver (the same one again within a thread)."""
    import threading
    from pathlib import Path

    from reconcilers.infra.providers import build

    providers = build({"owner": "o", "providers": {"aws": {"type": "aws", "key": "k", "secret": "s"}}},
                      Path(str(tmp_path)))
    from typing import Any

    from reconcilers.infra.providers.cloud import CloudProvider

    provider = providers["aws"]
    assert isinstance(provider, CloudProvider)
    backend: Any = provider.backend
    mine = backend.driver
    assert backend.driver is mine
    seen: list[object] = []
    worker = threading.Thread(target=lambda: seen.append(backend.driver))
    worker.start()
    worker.join()
    assert seen and seen[0] is not mine and type(seen[0]) is type(mine)


def test_a_firewall_tagged_before_rules_were_changed_in_place_is_not_replaced() -> None:
    """A firewall whose spec tag was computed with its rules in it (before rules were changed in place) is
    kept: same rules, nothing to do; other rules, updated in place. Replacing it would replace every server
    using it too."""
    from reconcilers.infra.providers.cloud_diff import IN_PLACE, rule_keys

    spec = {"rules": [{"protocol": "tcp", "ports": "22", "cidr": "10.0.0.0/8"}], "tags": {}, "timeout": 300}
    old_tag = replace_hash(spec, IN_PLACE - {"rules"})
    assert old_tag != replace_hash(spec)
    seen = observed_attrs({"rules": rule_keys(spec["rules"])}, {})
    assert differs("firewall", spec, True, old_tag, seen) == ("", "")
    more = {**spec, "rules": [*spec["rules"], {"protocol": "tcp", "ports": "443", "cidr": "0.0.0.0/0"}]}
    assert differs("firewall", more, True, old_tag, seen)[1] == "replace"      # the old tag hashed the old rules
    assert differs("firewall", more, True, replace_hash(spec), seen) == (
        "rules differ (+tcp:443-443:0.0.0.0/0)", "update")
