"""Firewall (security group) rules drift and paged listings of every kind, against moto's EC2 API through the
real libcloud driver and pipeline. moto pages only DescribeInstances, so the loopback proxy (conftest.page)
cuts the other Describe* answers into pages, as AWS may."""

from __future__ import annotations

from typing import Any

from reconcilers.infra.providers.cloud_diff import TAG_ID, TAG_OWNER
from tests.fixtures import Raw, WorkRepo, infra, resource
from tests.reconcilers.infra.cloud.conftest import CloudStack

AMI = "ami-03cf127a"


def aws(rid: str, kind: str, **fields: object) -> str:
    """A resource line on the aws provider."""
    return resource(rid, kind, provider=Raw("'aws"), **fields)


def firewall(drift: str) -> str:
    """The repo's firewall: ssh from 10/8 and https from anywhere."""
    return infra(aws("net", "network", cidr="10.0.0.0/16"),
                 aws("fw", "firewall", network="net", drift=Raw(f"'{drift}"),
                     rules=Raw('[{ ports = "22", cidr = "10.0.0.0/8" }, { ports = "443" }]')))


def group(ec2: Any, owner: str) -> Any:
    """Our security group `fw` as the API reports it."""
    [found] = ec2.ex_get_security_groups(filters={f"tag:{TAG_OWNER}": owner, f"tag:{TAG_ID}": "fw"})
    return found


def ingress(sg: Any) -> set[tuple[str, str, str, str]]:
    """(protocol, from, to, cidr) of each inbound permission."""
    return {(str(r["protocol"]), str(r["from_port"]), str(r["to_port"]), c) for r in sg.ingress_rules
            for c in r["cidr_ips"]}


def drift_messages(cloud: CloudStack) -> list[str]:
    """The drift report of main."""
    loaded = cloud.pipeline.load("main")
    observed = cloud.infra.observe(loaded.desired["infra"], cloud.index.inventory())
    return [str(p.message) for p in cloud.infra.drift(loaded.desired["infra"], observed, cloud.index.inventory())]


def test_a_rule_added_or_removed_behind_our_back_is_detected_then_corrected(
        cloud: CloudStack, repo: WorkRepo, ec2: Any) -> None:
    """MySQL opened to the world and the ssh rule revoked by hand: under 'detect both are reported and nothing
    is planned; under 'correct the same group is updated in place (no replacement): the stray rule revoked,
    the missing one authorized again, and the next plan is empty."""
    repo.commit({"infra/fw.ncl": firewall("detect")})
    assert cloud.run().status == "succeeded"
    sg = group(ec2, cloud.owner)
    assert ingress(sg) == {("tcp", "22", "22", "10.0.0.0/8"), ("tcp", "443", "443", "0.0.0.0/0")}
    assert cloud.pipeline.plan("main").actions == ()
    ec2.ex_authorize_security_group_ingress(sg.id, 3306, 3306, cidr_ips=["0.0.0.0/0"])
    ec2.ex_revoke_security_group_ingress(sg.id, 22, 22, cidr_ips=["10.0.0.0/8"])

    assert drift_messages(cloud) == ["drift on firewall fw (on aws): rules differ (+tcp:22-22:10.0.0.0/8, "
                                     "-tcp:3306-3306:0.0.0.0/0); policy detect"]
    assert cloud.pipeline.plan("main").actions == ()

    repo.commit({"infra/fw.ncl": firewall("correct")})
    assert [a.summary for a in cloud.pipeline.plan("main").actions] == [
        "update firewall fw on aws in place [rules differ (+tcp:22-22:10.0.0.0/8, -tcp:3306-3306:0.0.0.0/0)] "
        "[drift: rules differ (+tcp:22-22:10.0.0.0/8, -tcp:3306-3306:0.0.0.0/0)]"]
    result = cloud.run()
    assert result.status == "succeeded", result.message
    now = group(ec2, cloud.owner)
    assert now.id == sg.id
    assert ingress(now) == {("tcp", "22", "22", "10.0.0.0/8"), ("tcp", "443", "443", "0.0.0.0/0")}
    assert cloud.pipeline.plan("main").actions == ()


def test_changing_rules_in_the_repo_updates_the_group_in_place(cloud: CloudStack, repo: WorkRepo,
                                                               ec2: Any) -> None:
    """A rule added in the repo is authorized on the same security group (a replacement would cut every
    server using it off for a moment)."""
    repo.commit({"infra/fw.ncl": firewall("correct")})
    assert cloud.run().status == "succeeded"
    sg = group(ec2, cloud.owner)
    repo.commit({"infra/fw.ncl": infra(aws("net", "network", cidr="10.0.0.0/16"),
                                       aws("fw", "firewall", network="net", rules=Raw('[{ ports = "443" }]')))})
    assert [a.summary for a in cloud.pipeline.plan("main").actions] == [
        "update firewall fw on aws in place [rules differ (-tcp:22-22:10.0.0.0/8)]"]
    assert cloud.run().status == "succeeded"
    now = group(ec2, cloud.owner)
    assert now.id == sg.id and ingress(now) == {("tcp", "443", "443", "0.0.0.0/0")}


def test_every_kind_is_listed_across_pages(cloud: CloudStack, repo: WorkRepo, ec2: Any) -> None:
    """VPCs, subnets, security groups and volumes answered two per page (servers too, by moto's own
    MaxResults): three of each are all seen, so the second plan is empty, and the no-op observation asked for
    every page of every kind."""
    import re

    for action in ("DescribeVpcs", "DescribeSubnets", "DescribeSecurityGroups", "DescribeVolumes"):
        cloud.proxy.pages[action] = 2

    def small_pages(action: str, path: str) -> str:
        if action != "DescribeInstances" or "InstanceId." in path:
            return path
        return re.sub(r"&MaxResults=\d+", "", path) + "&MaxResults=2"

    cloud.proxy.rewrites.append(small_pages)
    lines = []
    for i in range(3):
        lines += [aws(f"net{i}", "network", cidr=f"10.{i}.0.0/16"),
                  aws(f"sub{i}", "subnet", network=f"net{i}", cidr=f"10.{i}.1.0/24", zone="us-east-1a"),
                  aws(f"fw{i}", "firewall", network=f"net{i}"),
                  aws(f"vm{i}", "server", size="t2.micro", image=AMI, subnet=f"sub{i}"),
                  aws(f"disk{i}", "volume", size_gb=1, zone="us-east-1a")]
    repo.commit({"infra/many.ncl": infra(*lines)})
    result = cloud.run()
    assert result.status == "succeeded", result.message
    before = len(cloud.proxy.calls)
    assert cloud.pipeline.plan("main").actions == ()
    calls = cloud.proxy.calls[before:]
    assert {a: calls.count(a) for a in sorted(set(calls))} == {
        "DescribeInstances": 2, "DescribeLoadBalancers": 1, "DescribeSecurityGroups": 2, "DescribeSubnets": 2,
        "DescribeVolumes": 2, "DescribeVpcs": 2}
