"""Load balancers on aws (classic ELB, against moto's ELB API through libcloud's ELB driver's signed connection
and the loopback proxy), kinds a provider does not serve, and dependencies across providers."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from daemon.nickel.evaluator import Evaluator
from tests.fixtures import Raw, WorkRepo, infra, resource
from tests.reconcilers.infra.cloud.conftest import CloudStack, FaultProxy, UpcloudReplay, aws_settings

AMI = "ami-03cf127a"
TEMPLATE = "01000000-0000-4000-8000-000010050200"


def aws(rid: str, kind: str, **fields: object) -> str:
    """A resource line on the aws provider."""
    return resource(rid, kind, provider=Raw("'aws"), **fields)


def balancers(ec2_port: int) -> dict[str, Any]:
    """Every load balancer moto knows, by name, with its tags and member instances (a driver of our own)."""
    from reconcilers.infra.providers.aws_elb import Balancers, elb_driver

    found = Balancers(elb_driver({"host": "127.0.0.1", "port": ec2_port, "secure": False}, "k", "s"))
    return {o.native_id: o for o in found._objects(found._describe())}


def test_a_load_balancer_is_created_with_its_members_tagged_and_removed(cloud: CloudStack, repo: WorkRepo,
                                                                       proxy: FaultProxy) -> None:
    """A balancer over two servers: created tagged as ours with both registered; the next plan is empty (one
    listing, no call per balancer); a tag change is in place; removing it deletes it before its servers."""
    lb = aws("front", "load_balancer", zones=Raw('["us-east-1a"]'), servers=Raw('["a", "b"]'),
             listeners=Raw('[{ port = 80, instance_port = 8080, protocol = \'http }]'))
    repo.commit({"infra/lb.ncl": infra(aws("a", "server", size="t2.micro", image=AMI),
                                       aws("b", "server", size="t2.micro", image=AMI), lb)})
    plan = {a.id: a for a in cloud.pipeline.plan("main").actions}
    assert plan["infra:front"].depends_on == ("infra:a", "infra:b")
    result = cloud.run()
    assert result.status == "succeeded", result.message
    mine = {o.rid: o for o in balancers(proxy.upstream).values() if o.tags.get("stratum:owner") == cloud.owner}
    assert list(mine) == ["front"] and len(mine["front"].attrs["members"]) == 2
    before = len(proxy.calls)
    assert cloud.pipeline.plan("main").actions == ()
    assert proxy.calls[before:].count("DescribeLoadBalancers") == 1

    repo.commit({"infra/lb.ncl": infra(aws("a", "server", size="t2.micro", image=AMI),
                                       aws("b", "server", size="t2.micro", image=AMI))})
    actions = {a.id: a for a in cloud.pipeline.plan("main").actions}
    assert actions["infra:front"].summary == "delete load_balancer front on aws"
    assert cloud.run().status == "succeeded"
    assert not [o for o in balancers(proxy.upstream).values() if o.tags.get("stratum:owner") == cloud.owner]


def test_kinds_a_provider_does_not_serve_are_named_at_validate(tmp_path: Path, repo: WorkRepo,
                                                               evaluator: Evaluator, proxy: FaultProxy,
                                                               upcloud: UpcloudReplay) -> None:
    """A DNS record and a load balancer on UpCloud (its adapter serves neither) are rejected before anything
    is applied, naming the resource, the provider and what it serves."""
    settings = aws_settings(proxy.port, "o", tmp_path / "root")
    settings["infra"]["providers"]["upcloud"] = {"type": "upcloud", "username": "u", "password": "p",
                                                 "host": "127.0.0.1", "port": upcloud.port, "secure": False}
    stack = CloudStack(tmp_path, repo.path, evaluator, proxy, settings)
    try:
        repo.commit({"infra/x.ncl": infra(
            resource("www", "dns_record", provider=Raw("'upcloud"), zone="example.com", name="www",
                     values=Raw('["192.0.2.10"]')),
            resource("edge", "load_balancer", provider=Raw("'upcloud"),
                     listeners=Raw("[{ port = 443, instance_port = 8443 }]")))})
        problems = sorted((p.message, p.hint) for p in stack.pipeline.plan("main").problems)
        assert problems == [
            ("resource edge: provider upcloud has no load balancer support",
             "upcloud serves: server; declare the load_balancer on a provider that has it"),
            ("resource www: provider upcloud has no DNS record support",
             "upcloud serves: server; declare the dns_record on a provider that has it")]
    finally:
        stack.close()


def test_dependencies_across_providers_order_the_plan_and_unknown_ones_are_named(
        tmp_path: Path, repo: WorkRepo, evaluator: Evaluator, proxy: FaultProxy, upcloud: UpcloudReplay) -> None:
    """An UpCloud server that depends on an aws server and on a local file is planned after both; a dependency
    on a resource that exists on no provider names the resource, its provider and the missing id."""
    settings = aws_settings(proxy.port, "o", tmp_path / "root")
    settings["infra"]["providers"]["upcloud"] = {"type": "upcloud", "username": "u", "password": "p",
                                                 "host": "127.0.0.1", "port": upcloud.port, "secure": False}
    stack = CloudStack(tmp_path, repo.path, evaluator, proxy, settings)
    try:
        repo.commit({"infra/x.ncl": infra(
            aws("db", "server", size="t2.micro", image=AMI),
            resource("conf", "file", path="etc/app.conf", content="x\n"),
            resource("app", "server", provider=Raw("'upcloud"), size="1xCPU-1GB", image=TEMPLATE,
                     depends_on=Raw('["db", "conf"]')))})
        actions = {a.id: a for a in stack.pipeline.plan("main").actions}
        assert actions["infra:app"].depends_on == ("infra:conf", "infra:db")
        repo.commit({"infra/x.ncl": infra(
            resource("app", "server", provider=Raw("'upcloud"), size="1xCPU-1GB", image=TEMPLATE,
                     depends_on=Raw('["db"]')))})
        problems = [(p.message, p.path) for p in stack.pipeline.plan("main").problems]
        assert problems == [("resource app (server on upcloud) depends on unknown resource 'db'", "infra/x.ncl")]
    finally:
        stack.close()


def test_a_replaced_member_server_is_registered_in_the_same_load_balancer(cloud: CloudStack, repo: WorkRepo,
                                                                         proxy: FaultProxy) -> None:
    """A member server whose size changes is replaced; its load balancer is not: the plan updates it in place
    after the new server exists, and the run leaves the same balancer (same name) with the new instance
    registered and the old one gone from its members."""
    lb = aws("front", "load_balancer", zones=Raw('["us-east-1a"]'), servers=Raw('["a", "b"]'),
             listeners=Raw('[{ port = 80, instance_port = 8080 }]'))
    repo.commit({"infra/lb.ncl": infra(aws("a", "server", size="t2.micro", image=AMI),
                                       aws("b", "server", size="t2.micro", image=AMI), lb)})
    assert cloud.run().status == "succeeded"
    before = {o.rid: o for o in balancers(proxy.upstream).values() if o.tags.get("stratum:owner") == cloud.owner}
    old_members = set(before["front"].attrs["members"])

    repo.commit({"infra/lb.ncl": infra(aws("a", "server", size="t2.small", image=AMI),
                                       aws("b", "server", size="t2.micro", image=AMI), lb)})
    plan = {a.id: a for a in cloud.pipeline.plan("main").actions}
    assert sorted(plan) == ["infra:a", "infra:a@old", "infra:front"]
    assert plan["infra:front"].summary == "update load_balancer front on aws in place [register the new server a]"
    assert plan["infra:front"].depends_on == ("infra:a", "infra:b")
    result = cloud.run()
    assert result.status == "succeeded", result.message
    after = {o.rid: o for o in balancers(proxy.upstream).values() if o.tags.get("stratum:owner") == cloud.owner}
    assert after["front"].native_id == before["front"].native_id
    members = set(after["front"].attrs["members"])
    assert len(members) == 2 and len(members & old_members) == 1       # b stays, a's new instance replaces a's
    assert cloud.pipeline.plan("main").actions == ()
