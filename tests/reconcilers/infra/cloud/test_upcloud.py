"""The upcloud provider against a loopback server replaying the UpCloud API answers libcloud ships
(conftest.UpcloudReplay says what it adds to the recordings), through libcloud's real UpCloud driver; and a
server moving from aws (moto) to upcloud in one plan, in dependency order."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from daemon.nickel.evaluator import Evaluator
from reconcilers.infra.providers.cloud_diff import TAG_OWNER
from tests.fixtures import Raw, WorkRepo, infra, resource
from tests.reconcilers.infra.cloud.conftest import CloudStack, FaultProxy, UpcloudReplay, aws_settings

TEMPLATE = "01000000-0000-4000-8000-000010050200"       # a template uuid from the shipped fixtures
AMI = "ami-03cf127a"


def upcloud_conf(port: int) -> dict[str, Any]:
    """Host settings of an `upcloud` provider at the replay server."""
    return {"type": "upcloud", "username": "test-user", "password": "test-password", "host": "127.0.0.1",
            "port": port, "secure": False, "zone": "fi-hel1", "poll": 0.02}


def both(tmp: Path, proxy: FaultProxy, upcloud: UpcloudReplay) -> dict[str, Any]:
    """Settings with an aws provider (moto) and an upcloud one (the replay)."""
    settings = aws_settings(proxy.port, "placeholder", tmp / "root")
    settings["infra"]["providers"]["upcloud"] = upcloud_conf(upcloud.port)
    return settings


def test_upcloud_server_create_noop_and_delete(tmp_path: Path, repo: WorkRepo, evaluator: Evaluator,
                                             proxy: FaultProxy, upcloud: UpcloudReplay) -> None:
    """A server is created titled as ours with the plan and zone asked; the next plan is empty; removing it
    stops and deletes it; the recorded server that is not ours is never touched."""
    stack = CloudStack(tmp_path, repo.path, evaluator, proxy, both(tmp_path, proxy, upcloud))
    try:
        owner = stack.settings["infra"]["owner"]
        repo.commit({"infra/up.ncl": infra(resource("app", "server", provider=Raw("'upcloud"), size="1xCPU-1GB",
                                                    image=TEMPLATE))})
        result = stack.run()
        assert result.status == "succeeded", result.message
        ours = upcloud.ours(owner)
        assert list(ours) == ["app"] and ours["app"]["plan"] == "1xCPU-1GB" and ours["app"]["zone"] == "fi-hel1"
        assert stack.pipeline.plan("main").actions == ()
        repo.commit({"infra/up.ncl": infra()})
        assert stack.run().status == "succeeded"
        assert upcloud.ours(owner) == {}
        assert "00f8c525-7e62-4108-8115-3958df5b43dc" in upcloud.servers      # the recorded one stays
        assert any(c.endswith("/stop") for c in upcloud.calls)
    finally:
        stack.close()


def test_moving_a_server_from_aws_to_upcloud(tmp_path: Path, repo: WorkRepo, evaluator: Evaluator,
                                             proxy: FaultProxy, upcloud: UpcloudReplay, ec2: Any) -> None:
    """Changing `provider` from 'aws to 'upcloud (and dropping the aws network) plans a create on upcloud, then
    the delete on aws after it, then the subnet and network after the server: one run moves it."""
    stack = CloudStack(tmp_path, repo.path, evaluator, proxy, both(tmp_path, proxy, upcloud))
    try:
        owner = stack.settings["infra"]["owner"]
        repo.commit({"infra/app.ncl": infra(
            resource("net", "network", provider=Raw("'aws"), cidr="10.3.0.0/16"),
            resource("sub", "subnet", provider=Raw("'aws"), network="net", cidr="10.3.1.0/24"),
            resource("app", "server", provider=Raw("'aws"), size="t2.micro", image=AMI, subnet="sub"))})
        assert stack.run().status == "succeeded"
        repo.commit({"infra/app.ncl": infra(
            resource("app", "server", provider=Raw("'upcloud"), size="1xCPU-1GB", image=TEMPLATE))})
        actions = {a.id: a for a in stack.pipeline.plan("main").actions}
        assert actions["infra:app"].summary == "create server app on upcloud (1xCPU-1GB, " + TEMPLATE + ")"
        assert actions["infra:app@aws"].summary == "delete server app on aws (moved to upcloud)"
        assert actions["infra:app@aws"].depends_on == ("infra:app",)
        assert actions["infra:sub"].depends_on == ("infra:app@aws",)
        assert actions["infra:net"].depends_on == ("infra:sub",)
        result = stack.run()
        assert result.status == "succeeded", result.message
        assert list(upcloud.ours(owner)) == ["app"]
        live = [n for n in ec2.list_nodes(ex_filters={f"tag:{TAG_OWNER}": owner}) if n.state != "terminated"]
        assert live == []
        inventory = {i.resource_id: json.loads(i.data)["provider"] for i in stack.index.inventory("infra")}
        assert inventory == {"app": "upcloud"}
    finally:
        stack.close()
