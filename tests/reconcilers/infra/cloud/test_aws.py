"""The aws provider against moto's EC2 API (a real AWS emulator on loopback) through libcloud's real EC2
driver and the real pipeline: create, update in place, replace, drift, prune, rollback and adoption. Faults are
injected only at the HTTP level, by the loopback proxy in conftest.py."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from reconcilers.infra.providers.cloud_diff import TAG_ID, TAG_OWNER
from tests.fixtures import Raw, WorkRepo, infra, resource
from tests.reconcilers.infra.cloud.conftest import CloudStack, aws_settings

AMI = "ami-03cf127a"          # one of the images moto ships


def aws(rid: str, kind: str, **fields: object) -> str:
    """A resource line on the aws provider."""
    return resource(rid, kind, provider=Raw("'aws"), **fields)


def base(**server: object) -> list[str]:
    """A network, subnet, firewall and a server in them (server fields overridable)."""
    fields: dict[str, object] = {"size": "t2.micro", "image": AMI, "subnet": "web-subnet",
                                 "firewalls": Raw('["web-fw"]'), "tags": Raw('{ team = "ops" }')}
    fields.update(server)
    return [aws("web-net", "network", cidr="10.0.0.0/16"),
            aws("web-subnet", "subnet", network="web-net", cidr="10.0.1.0/24", zone="us-east-1a"),
            aws("web-fw", "firewall", network="web-net",
                rules=Raw('[{ ports = "22", cidr = "10.0.0.0/8" }, { ports = "443" }]')),
            aws("web", "server", **fields)]


def owned(ec2: Any, owner: str) -> dict[str, Any]:
    """Live instances tagged with `owner`, by their stratum id."""
    nodes = ec2.list_nodes(ex_filters={f"tag:{TAG_OWNER}": owner})
    return {n.extra["tags"][TAG_ID]: n for n in nodes if n.state not in ("terminated", "shutting-down")}


def summaries(cloud: CloudStack) -> list[str]:
    """The summaries of the plan of main."""
    return [a.summary for a in cloud.pipeline.plan("main").actions]


def test_create_then_update_tags_in_place_then_replace(cloud: CloudStack, repo: WorkRepo, ec2: Any) -> None:
    """A network, subnet, firewall, server and attached volume are created tagged as ours; a tag change updates
    the same instance in place; a size change replaces it (a new instance, the old one terminated)."""
    repo.commit({"infra/cloud.ncl": infra(*base(), aws("data", "volume", size_gb=5, zone="us-east-1a",
                                                       server="web"))})
    result = cloud.run()
    assert result.status == "succeeded", result.message
    assert cloud.inventory_ids() == {"web-net", "web-subnet", "web-fw", "web", "data"}
    nodes = owned(ec2, cloud.owner)
    first = nodes["web"]
    assert first.extra["instance_type"] == "t2.micro" and first.extra["tags"]["team"] == "ops"
    vpcs = ec2.ex_list_networks(filters={f"tag:{TAG_OWNER}": cloud.owner})
    assert [v.extra["tags"][TAG_ID] for v in vpcs] == ["web-net"]
    assert first.extra["subnet_id"] == ec2.ex_list_subnets(filters={f"tag:{TAG_ID}": "web-subnet"})[0].id
    vols = ec2.list_volumes(ex_filters={f"tag:{TAG_OWNER}": cloud.owner})
    assert [(v.size, v.extra["instance_id"]) for v in vols] == [(5, first.id)]
    assert summaries(cloud) == []                               # a second plan has nothing to do

    repo.commit({"infra/cloud.ncl": infra(*base(tags=Raw('{ team = "platform" }')),
                                          aws("data", "volume", size_gb=5, zone="us-east-1a", server="web"))})
    assert summaries(cloud) == ["update server web on aws in place [tags differ (team)]"]
    assert cloud.run().status == "succeeded"
    now = owned(ec2, cloud.owner)["web"]
    assert now.id == first.id and now.extra["tags"]["team"] == "platform"

    repo.commit({"infra/cloud.ncl": infra(*base(size="t2.small", tags=Raw('{ team = "platform" }')))})
    plan = summaries(cloud)
    assert "replace server web on aws [size t2.micro -> t2.small]" in plan
    assert "delete volume data" in " ".join(plan)
    actions = {a.id: a for a in cloud.pipeline.plan("main").actions}
    assert "infra:data" in actions["infra:web"].depends_on         # the dropped volume goes before its server
    result = cloud.run()
    assert result.status == "succeeded", result.message
    nodes = owned(ec2, cloud.owner)
    assert list(nodes) == ["web"] and nodes["web"].id != first.id and nodes["web"].extra["instance_type"] == "t2.small"
    assert ec2.list_volumes(ex_filters={f"tag:{TAG_OWNER}": cloud.owner}) == []


def test_drift_detect_reports_and_correct_recreates(cloud: CloudStack, repo: WorkRepo, ec2: Any) -> None:
    """An instance terminated behind Stratum's back: under 'detect the drift is reported and nothing is
    planned; under 'correct the next run creates it again."""
    repo.commit({"infra/cloud.ncl": infra(*base(drift=Raw("'detect")))})
    assert cloud.run().status == "succeeded"
    ec2.destroy_node(owned(ec2, cloud.owner)["web"])
    loaded = cloud.pipeline.load("main")
    observed = cloud.infra.observe(loaded.desired["infra"], cloud.index.inventory())
    drift = cloud.infra.drift(loaded.desired["infra"], observed, cloud.index.inventory())
    assert [str(p.message) for p in drift] == ["drift on server web (on aws): missing; policy detect"]
    assert summaries(cloud) == []

    repo.commit({"infra/cloud.ncl": infra(*base(drift=Raw("'correct")))})
    assert summaries(cloud) == ["create server web on aws (t2.micro, ami-03cf127a) [drift: missing]"]
    assert cloud.run().status == "succeeded"
    assert "web" in owned(ec2, cloud.owner)


def test_prune_destroys_in_reverse_dependency_order(cloud: CloudStack, repo: WorkRepo, ec2: Any) -> None:
    """Emptying the repo destroys everything: the server before its subnet and firewall, those before the
    network (AWS refuses to delete a VPC that still has a subnet, so the wrong order fails the run)."""
    repo.commit({"infra/cloud.ncl": infra(*base())})
    assert cloud.run().status == "succeeded"
    repo.commit({"infra/cloud.ncl": infra()})
    actions = {a.id: a for a in cloud.pipeline.plan("main").actions}
    assert set(actions["infra:web-net"].depends_on) == {"infra:web-subnet", "infra:web-fw"}
    assert actions["infra:web-subnet"].depends_on == ("infra:web",)
    result = cloud.run()
    assert result.status == "succeeded", result.message
    assert owned(ec2, cloud.owner) == {}
    assert ec2.ex_list_networks(filters={f"tag:{TAG_OWNER}": cloud.owner}) == []
    assert cloud.inventory_ids() == set()


def test_a_failure_mid_apply_rolls_back_what_the_run_created(cloud: CloudStack, repo: WorkRepo, ec2: Any) -> None:
    """The API answers 500 to every RunInstances of server `b` (injected by the proxy): the action is retried
    (transient), then the run rolls back, destroying the network and server `a` this run created."""
    cloud.proxy.rules.append(lambda action, q: (500, "InternalError") if action == "RunInstances"
                             and q.get("TagSpecification.1.Tag.2.Value") == "b" else None)
    repo.commit({"infra/cloud.ncl": infra(
        aws("net", "network", cidr="10.1.0.0/16"),
        aws("sub", "subnet", network="net", cidr="10.1.1.0/24"),
        aws("a", "server", size="t2.micro", image=AMI, subnet="sub"),
        aws("b", "server", size="t2.micro", image=AMI, subnet="sub", depends_on=Raw('["a"]')))})
    result = cloud.run()
    assert result.status == "rolled_back", result.message
    assert "HTTP 500" in result.message
    assert cloud.proxy.calls.count("RunInstances") == 1 + 3          # a once, b three tries
    assert owned(ec2, cloud.owner) == {}
    assert ec2.ex_list_networks(filters={f"tag:{TAG_OWNER}": cloud.owner}) == []
    assert cloud.inventory_ids() == set()


def test_an_answer_lost_after_create_adopts_instead_of_duplicating(cloud: CloudStack, repo: WorkRepo,
                                                                   ec2: Any) -> None:
    """The API creates the instance but its answer is lost (the proxy forwards RunInstances, then answers
    500, once): the retry finds the instance by its tags and adopts it; there is exactly one."""
    lost: list[str] = []

    def once(action: str, q: dict[str, str]) -> tuple[int, str] | None:
        if action == "RunInstances" and not lost:
            lost.append(action)
            return 500, "InternalError"
        return None

    cloud.proxy.after.append(once)
    repo.commit({"infra/cloud.ncl": infra(aws("solo", "server", size="t2.micro", image=AMI))})
    result = cloud.run()
    assert result.status == "succeeded", result.message
    assert lost and cloud.proxy.calls.count("RunInstances") == 1
    assert list(owned(ec2, cloud.owner)) == ["solo"]


def test_an_untracked_object_tagged_ours_is_removed(cloud: CloudStack, repo: WorkRepo, ec2: Any) -> None:
    """A VPC tagged with our owner and an id nothing claims (an apply died before recording it) is planned
    for deletion and removed; other owners' objects are never touched."""
    from reconcilers.infra.providers.aws import AwsBackend

    backend = AwsBackend(ec2)
    backend.create("network", "ghost", {"cidr": "10.9.0.0/16"}, {TAG_ID: "ghost", TAG_OWNER: cloud.owner},
                   lambda k, r: (_ for _ in ()).throw(AssertionError("no references")))
    backend.create("network", "theirs", {"cidr": "10.8.0.0/16"}, {TAG_ID: "theirs", TAG_OWNER: "someone-else"},
                   lambda k, r: (_ for _ in ()).throw(AssertionError("no references")))
    repo.commit({"infra/cloud.ncl": infra(aws("net", "network", cidr="10.2.0.0/16"))})
    assert summaries(cloud) == ["create network net on aws (10.2.0.0/16)",
                                "delete untracked network ghost on aws (tagged as ours, claimed by nothing: "
                                "left by an interrupted apply)"]
    assert cloud.run().status == "succeeded"
    mine = ec2.ex_list_networks(filters={f"tag:{TAG_OWNER}": cloud.owner})
    assert [n.extra["tags"][TAG_ID] for n in mine] == ["net"]
    assert ec2.ex_list_networks(filters={f"tag:{TAG_OWNER}": "someone-else"})


def test_listing_follows_pages(cloud: CloudStack, repo: WorkRepo, ec2: Any) -> None:
    """DescribeInstances answered in pages of 2 (the proxy sets MaxResults=2 on listings; moto itself pages
    at 100, which the 200-server benchmark hit): every page is read, so five servers are all seen and the
    second plan is empty."""
    import re

    def small_pages(action: str, path: str) -> str:
        if action != "DescribeInstances" or "InstanceId." in path:
            return path
        path = re.sub(r"&MaxResults=\d+", "", path)
        return path + "&MaxResults=2"

    cloud.proxy.rewrites.append(small_pages)
    repo.commit({"infra/cloud.ncl": infra(*(aws(f"vm{i}", "server", size="t2.micro", image=AMI)
                                            for i in range(5)))})
    assert cloud.run().status == "succeeded"
    assert len(owned(ec2, cloud.owner)) == 5
    assert summaries(cloud) == []


def test_an_api_that_does_not_answer_times_out_and_rolls_back(cloud: CloudStack, repo: WorkRepo,
                                                              tmp_path: Path) -> None:
    """An endpoint that accepts connections and never answers (a loopback socket that only listens): the
    observation's call ends at the provider's `timeout` and the run fails with nothing applied, saying the
    API cannot be reached, instead of hanging."""
    import socket

    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(16)
    try:
        settings = aws_settings(silent.getsockname()[1], "x", tmp_path / "r2")
        settings["infra"]["providers"]["aws"]["timeout"] = 0.5
        stack = CloudStack(tmp_path / "silent", repo.path, cloud.evaluator, cloud.proxy, settings)
        try:
            repo.commit({"infra/cloud.ncl": infra(aws("net", "network", cidr="10.6.0.0/16"))})
            result = stack.run()
            assert result.status == "failed" and result.actions == ()
            assert result.message.startswith("listing resources: aws: cannot reach the API (ReadTimeout)")
        finally:
            stack.close()
    finally:
        silent.close()


def test_without_an_owner_setting_unclaimed_objects_are_reported_not_deleted(
        tmp_path: Path, repo: WorkRepo, evaluator: Any, proxy: Any, ec2: Any) -> None:
    """With no `[infra] owner` the owner tag derives from the repository and branch (two repositories under
    one data directory path get different owners), and an object carrying it that nothing claims is reported
    as drift, never deleted: a derived owner could be shared by two daemons of one repository."""
    from reconcilers.infra.providers import default_owner
    from reconcilers.infra.providers.aws import AwsBackend

    one = default_owner({"repo_identity": "git@example.com:a/ops.git#main"}, Path("/var/lib/stratum"))
    two = default_owner({"repo_identity": "git@example.com:b/ops.git#main"}, Path("/var/lib/stratum"))
    assert one != two
    stack = CloudStack(tmp_path / "derived", repo.path, evaluator, proxy, explicit_owner=False)
    try:
        AwsBackend(ec2).create("network", "ghost", {"cidr": "10.7.0.0/16"},
                               {TAG_ID: "ghost", TAG_OWNER: stack.owner},
                               lambda k, r: (_ for _ in ()).throw(AssertionError("no references")))
        repo.commit({"infra/cloud.ncl": infra(aws("net", "network", cidr="10.2.0.0/16"))})
        report = stack.pipeline.plan("main")
        assert [a.summary for a in report.actions] == ["create network net on aws (10.2.0.0/16)"]
        assert [p.message for p in report.drift] == [
            "untracked network ghost on aws carries this repository's owner tag but no resource or inventory "
            "entry claims it; not deleted"]
        assert stack.run().status == "succeeded"
        mine = ec2.ex_list_networks(filters={f"tag:{TAG_OWNER}": stack.owner})
        assert sorted(n.extra["tags"][TAG_ID] for n in mine) == ["ghost", "net"]
    finally:
        stack.close()


def test_a_volume_removed_while_its_server_stays_is_detached_then_deleted(cloud: CloudStack, repo: WorkRepo,
                                                                         ec2: Any) -> None:
    """Removing an attached volume from the repo (its server stays) detaches it from that server and deletes
    it; the server is untouched. (Before: the detach named no instance and moto answered 500; the run rolled
    back.)"""
    repo.commit({"infra/cloud.ncl": infra(aws("vm", "server", size="t2.micro", image=AMI),
                                          aws("disk", "volume", size_gb=1, zone="us-east-1a", server="vm"))})
    assert cloud.run().status == "succeeded"
    server = owned(ec2, cloud.owner)["vm"].id
    repo.commit({"infra/cloud.ncl": infra(aws("vm", "server", size="t2.micro", image=AMI))})
    result = cloud.run()
    assert result.status == "succeeded", result.message
    assert not ec2.list_volumes(ex_filters={f"tag:{TAG_OWNER}": cloud.owner})
    assert owned(ec2, cloud.owner)["vm"].id == server
