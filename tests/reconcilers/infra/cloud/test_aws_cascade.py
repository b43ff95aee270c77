"""Replace cascades against moto's EC2 API through the real libcloud driver and pipeline: replacing a network
replaces the subnet, firewall and server in it (old ones deleted first, dependents before what they depend on;
moto, like AWS, refuses to delete a VPC that still has subnets), and re-attaches the server's volume."""

from __future__ import annotations

from typing import Any

from reconcilers.infra.providers.cloud_diff import TAG_ID, TAG_OWNER
from tests.fixtures import Raw, WorkRepo, infra, resource
from tests.reconcilers.infra.cloud.conftest import CloudStack

AMI = "ami-03cf127a"


def aws(rid: str, kind: str, **fields: object) -> str:
    """A resource line on the aws provider."""
    return resource(rid, kind, provider=Raw("'aws"), **fields)


def stack_of(prefix: str) -> str:
    """A network (10.<prefix>/16), its subnet and firewall, a server in both and a volume attached to it."""
    return infra(aws("net", "network", cidr=f"{prefix}.0.0/16"),
                 aws("sub", "subnet", network="net", cidr=f"{prefix}.1.0/24", zone="us-east-1a"),
                 aws("fw", "firewall", network="net", rules=Raw('[{ ports = "22" }]')),
                 aws("web", "server", size="t2.micro", image=AMI, subnet="sub", firewalls=Raw('["fw"]')),
                 aws("data", "volume", size_gb=2, zone="us-east-1a", server="web"))


def ours(ec2: Any, owner: str, kind: str) -> dict[str, Any]:
    """Our live objects of a kind, by stratum id."""
    f = {f"tag:{TAG_OWNER}": owner}
    found: list[Any] = {"network": lambda: ec2.ex_list_networks(filters=f),
                        "subnet": lambda: ec2.ex_list_subnets(filters=f),
                        "volume": lambda: ec2.list_volumes(ex_filters=f),
                        "server": lambda: [n for n in ec2.list_nodes(ex_filters=f)
                                           if n.state not in ("terminated", "shutting-down")]}[kind]()
    return {o.extra["tags"][TAG_ID]: o for o in found}


def test_replacing_a_network_replaces_what_is_in_it_in_order(cloud: CloudStack, repo: WorkRepo, ec2: Any) -> None:
    """A new address range for the network and its subnet: the old server, firewall, subnet and network are
    deleted first (server, then subnet and firewall, then network), then all are created again in dependency
    order; the volume keeps its data and is attached to the new server."""
    repo.commit({"infra/stack.ncl": stack_of("10.20")})
    result = cloud.run()
    assert result.status == "succeeded", result.message
    old_net, old_web = ours(ec2, cloud.owner, "network")["net"], ours(ec2, cloud.owner, "server")["web"]
    disk = ours(ec2, cloud.owner, "volume")["data"]

    repo.commit({"infra/stack.ncl": stack_of("10.21")})
    actions = {a.id: a for a in cloud.pipeline.plan("main").actions}
    assert {k: (a.summary, a.depends_on) for k, a in actions.items()} == {
        "infra:web@old": ("delete old server web on aws (replaced: its subnet sub is replaced)", ()),
        "infra:sub@old": ("delete old subnet sub on aws (replaced)", ("infra:web@old",)),
        "infra:fw@old": ("delete old firewall fw on aws (replaced: its network net is replaced)", ("infra:web@old",)),
        "infra:net@old": ("delete old network net on aws (replaced)", ("infra:fw@old", "infra:sub@old")),
        "infra:net": ("replace network net on aws [cidr 10.20.0.0/16 -> 10.21.0.0/16]", ("infra:net@old",)),
        "infra:sub": ("replace subnet sub on aws [cidr 10.20.1.0/24 -> 10.21.1.0/24]",
                      ("infra:net", "infra:sub@old")),
        "infra:fw": ("replace firewall fw on aws [its network net is replaced]", ("infra:fw@old", "infra:net")),
        "infra:web": ("replace server web on aws [its subnet sub is replaced]",
                      ("infra:fw", "infra:sub", "infra:web@old")),
        "infra:data": ("update volume data on aws in place [re-attach to the new server web]", ("infra:web",)),
    }
    result = cloud.run()
    assert result.status == "succeeded", result.message
    net, web = ours(ec2, cloud.owner, "network")["net"], ours(ec2, cloud.owner, "server")["web"]
    assert net.id != old_net.id and net.cidr_block == "10.21.0.0/16"
    assert web.id != old_web.id and web.extra["subnet_id"] == ours(ec2, cloud.owner, "subnet")["sub"].id
    now = ours(ec2, cloud.owner, "volume")["data"]
    assert now.id == disk.id and now.extra["instance_id"] == web.id
    assert [n.id for n in ec2.ex_list_networks(filters={f"tag:{TAG_OWNER}": cloud.owner})] == [net.id]
    assert cloud.inventory_ids() == {"net", "sub", "fw", "web", "data"}
    assert cloud.pipeline.plan("main").actions == ()
