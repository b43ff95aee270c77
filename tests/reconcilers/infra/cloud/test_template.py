"""The template's infra/cloud.ncl (what `stratum init` lays down): inert on a host with no provider, and, once
enabled, a valid plan against moto with the network before the subnet before the server before the volume."""

from __future__ import annotations

from pathlib import Path

from daemon.cli.init import init_repo
from daemon.nickel.evaluator import Evaluator
from tests.fixtures import WorkRepo
from tests.reconcilers.infra.cloud.conftest import CloudStack, FaultProxy


def test_template_cloud_example_is_inert_then_plans_in_order(tmp_path: Path, evaluator: Evaluator,
                                                             proxy: FaultProxy) -> None:
    """With no provider configured the template's plan has no cloud action and nothing is rejected; with
    `enabled = true` (and moto's image id) it plans seven creates in dependency order (the load balancer after
    its server; the DNS record's zone is only looked up at apply)."""
    target = tmp_path / "ops"
    init_repo(target)
    repo = WorkRepo.__new__(WorkRepo)
    repo.path = target
    bare = CloudStack(tmp_path / "bare", target, evaluator, proxy,
                      {"infra": {"root": str(tmp_path / "bare-root")}})
    try:
        report = bare.pipeline.plan("main")
        assert report.problems == ()
        assert not [a for a in report.actions if " on aws" in a.summary]
    finally:
        bare.close()
    text = (target / "infra/cloud.ncl").read_text()
    assert "let enabled = false in" in text
    (target / "infra/cloud.ncl").write_text(text.replace("let enabled = false in", "let enabled = true in")
                                            .replace("ami-0123456789abcdef0", "ami-03cf127a"))
    import pygit2

    git = pygit2.Repository(str(target))
    git.index.add_all()
    git.index.write()
    sig = pygit2.Signature("t", "t@example.com")
    git.create_commit("HEAD", sig, sig, "enable cloud", git.index.write_tree(), [git.head.target])
    stack = CloudStack(tmp_path / "cloud", target, evaluator, proxy)
    try:
        report = stack.pipeline.plan("main")
        assert report.problems == ()
        cloud = {a.target: a for a in report.actions if " on aws" in a.summary}
        assert set(cloud) == {"web-net", "web-subnet", "web-fw", "web-1", "web-data", "web-lb", "web-dns"}
        assert cloud["web-lb"].depends_on == ("infra:web-1",)
        assert cloud["web-subnet"].depends_on == ("infra:web-net",)
        assert set(cloud["web-1"].depends_on) == {"infra:web-subnet", "infra:web-fw"}
        assert cloud["web-data"].depends_on == ("infra:web-1",)
    finally:
        stack.close()
