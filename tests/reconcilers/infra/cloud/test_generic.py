"""The generic libcloud adapter (`type = "libcloud"`), here over libcloud's EC2 driver named as any driver would
be, against moto's EC2 API through the loopback proxy: the common subset works (create, a no-op plan, delete),
and what it cannot do (tags, import) is refused with a message saying why, before anything is applied."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from click.testing import CliRunner

from daemon.cli.main import cli as stratum
from daemon.nickel.evaluator import Evaluator
from tests.fixtures import Raw, WorkRepo, infra, resource
from tests.reconcilers.infra.cloud.conftest import CloudStack, FaultProxy

AMI = "ami-03cf127a"


def settings(tmp: Path, port: int) -> dict[str, Any]:
    """A provider `other` of type libcloud: the EC2 driver at the proxy."""
    return {"infra": {"root": str(tmp / "root"), "owner": "placeholder", "providers": {"other": {
        "type": "libcloud", "driver": "ec2", "key": "test-key", "secret": "test-secret", "poll": 0.05,
        "options": {"region": "us-east-1", "host": "127.0.0.1", "port": port, "secure": False,
                    "signature_version": "4"}}}}}


def vm(**extra: object) -> str:
    """infra/g.ncl: one server on the generic provider."""
    return infra(resource("vm", "server", provider=Raw("'other"), size="t2.micro", image=AMI, **extra))


def test_generic_adapter_creates_keeps_and_deletes_a_server(tmp_path: Path, repo: WorkRepo, evaluator: Evaluator,
                                                            proxy: FaultProxy, ec2: Any) -> None:
    """A server is created named as ours, the next plan is empty, removing it destroys it."""
    stack = CloudStack(tmp_path, repo.path, evaluator, proxy, settings(tmp_path, proxy.port))
    try:
        repo.commit({"infra/g.ncl": vm()})
        result = stack.run()
        assert result.status == "succeeded", result.message
        live = [n for n in ec2.list_nodes() if n.name.startswith("vm--") and n.name.endswith(stack.owner)
                and n.state != "terminated"]
        assert len(live) == 1
        assert stack.pipeline.plan("main").actions == ()
        repo.commit({"infra/g.ncl": infra()})
        assert stack.run().status == "succeeded"
        assert ec2.list_nodes(ex_node_ids=[live[0].id])[0].state in ("terminated", "shutting-down")
    finally:
        stack.close()


def test_generic_adapter_refuses_tags_and_import_saying_why(tmp_path: Path, repo: WorkRepo, evaluator: Evaluator,
                                                            proxy: FaultProxy) -> None:
    """Tags on a generic server reject the revision at validate, naming the resource (they would otherwise be
    dropped at create); `stratum infra import` on a generic provider says the common subset cannot rename a
    node."""
    stack = CloudStack(tmp_path, repo.path, evaluator, proxy, settings(tmp_path, proxy.port))
    try:
        repo.commit({"infra/g.ncl": vm(tags=Raw('{ team = "ops" }'))})
        before = len(proxy.calls)
        problems = [(p.message, p.hint) for p in stack.pipeline.plan("main").problems]
        assert problems == [("resource vm: provider other cannot set tags (the generic libcloud adapter: "
                             "libcloud's common subset has no tags)", "remove `tags` from the resource")]
        assert "RunInstances" not in proxy.calls[before:]
        config = tmp_path / "stratumd.toml"
        config.write_text(f'[infra]\nowner = "o"\n[infra.providers.other]\ntype = "libcloud"\ndriver = "ec2"\n'
                          f'key = "k"\nsecret = "s"\n[infra.providers.other.options]\nhost = "127.0.0.1"\n'
                          f"port = {proxy.port}\nsecure = false\n")
        out = CliRunner().invoke(stratum, ["infra", "import", "other", "i-123", "--as", "x", "--repo",
                                           str(repo.path), "--data-dir", str(tmp_path / "d2"), "--config",
                                           str(config)])
        assert out.exit_code != 0 and "cannot import server i-123" in out.output and "Traceback" not in out.output
    finally:
        stack.close()
