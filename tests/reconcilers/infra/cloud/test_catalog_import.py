"""Catalogs, cost, import and bad input of cloud resources, against moto through the real EC2 driver: the CLI
verbs run in-process through click's runner with a real host settings file, a real data directory and index."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from click.testing import CliRunner

from daemon.cli.main import cli as stratum
from daemon.index.store import Index
from daemon.run.report import plan_markdown, plan_to_dict
from reconcilers.infra.providers.catalog import Entry, store
from reconcilers.infra.providers.cloud_diff import TAG_ID, TAG_OWNER
from tests.fixtures import Raw, WorkRepo, infra, resource
from tests.reconcilers.infra.cloud.conftest import CloudStack, FaultProxy

AMI = "ami-03cf127a"


def aws(rid: str, kind: str, **fields: object) -> str:
    """A resource line on the aws provider."""
    return resource(rid, kind, provider=Raw("'aws"), **fields)


def settings_file(tmp: Path, port: int, owner: str) -> Path:
    """A stratumd.toml with an aws provider at the proxy."""
    path = tmp / "stratumd.toml"
    path.write_text(f'[infra]\nowner = "{owner}"\n[infra.providers.aws]\ntype = "aws"\nkey = "test-key"\n'
                    f'secret = "test-secret"\nhost = "127.0.0.1"\nport = {port}\nsecure = false\n')
    return path


def test_catalog_refresh_then_unknown_size_gets_did_you_mean_and_plans_show_cost(
        cloud: CloudStack, repo: WorkRepo, tmp_path: Path) -> None:
    """`stratum infra catalog refresh` caches the instance types with libcloud's prices; a typo in a size is
    then rejected with a "did you mean"; a correct one plans with its price, summed per provider."""
    repo.commit({"infra/c.ncl": infra(aws("web", "server", size="t2.micro", image=AMI))})
    cloud.index.close()                     # the CLI writes the index as the daemon would (one writer)
    config = settings_file(tmp_path, cloud.proxy.port, cloud.owner)
    out = CliRunner().invoke(stratum, ["infra", "catalog", "refresh", "--repo", str(repo.path), "--data-dir",
                                         str(cloud.data), "--config", str(config)])
    assert out.exit_code == 0, out.output
    assert out.output.startswith("aws: ") and " sizes, 0 images, " in out.output
    shown = CliRunner().invoke(stratum, ["infra", "catalog", "show", "aws", "--repo", str(repo.path), "--data-dir",
                                           str(cloud.data), "--config", str(config)])
    assert "t2.micro" in shown.output and "/month" in shown.output
    cloud.index = Index(cloud.data / "index.duckdb")
    cloud.infra.index_port = cloud.index
    cloud.pipeline.index = cloud.index

    repo.commit({"infra/c.ncl": infra(aws("web", "server", size="t2.micr", image=AMI))})
    report = cloud.pipeline.plan("main")
    assert [p.message for p in report.problems] == ["resource web: unknown size 't2.micr' on provider aws"]
    assert report.problems[0].hint.startswith("did you mean 't2.micro'")

    repo.commit({"infra/c.ncl": infra(aws("web", "server", size="t2.micro", image=AMI),
                                      aws("api", "server", size="t2.micro", image=AMI))})
    report = cloud.pipeline.plan("main")
    price = dict(cloud.index.query("SELECT id, price_hourly FROM infra_catalog WHERE id = 't2.micro'"))["t2.micro"]
    assert price > 0
    assert {a.summary for a in report.actions} == {
        f"create server {rid} on aws (t2.micro, {AMI}) [{price:+.4f}/h]" for rid in ("web", "api")}
    text = "\n".join(plan_markdown(plan_to_dict(report)))
    assert "#### Cost change (provider's currency)" in text
    assert f"| aws | {2 * price:+.4f} | {2 * price * 730:+.4f} |" in text


def test_unknown_values_are_checked_only_against_a_known_catalog(cloud: CloudStack, repo: WorkRepo) -> None:
    """A zone check uses the zone catalog; a provider without a cached catalog is not checked at all."""
    store(cloud.index, "aws", [Entry("zone", "us-east-1a"), Entry("zone", "us-east-1b")])
    repo.commit({"infra/c.ncl": infra(aws("sub-net", "network", cidr="10.0.0.0/16"),
                                      aws("sub", "subnet", network="sub-net", cidr="10.0.1.0/24",
                                          zone="us-east-1z"))})
    cloud.infra.index_port = cloud.index
    problems = cloud.pipeline.plan("main").problems
    assert [p.message for p in problems] == ["resource sub: unknown zone 'us-east-1z' on provider aws"]
    assert "did you mean" in problems[0].hint


def test_import_tags_an_existing_instance_and_the_committed_nickel_adopts_it(
        cloud: CloudStack, repo: WorkRepo, tmp_path: Path, ec2: Any) -> None:
    """`stratum infra import aws ID --as legacy` tags an instance made outside Stratum and prints Nickel; once
    committed, the plan updates it in place (records the spec tag), never replaces it, and the next is empty."""
    from libcloud.compute.base import NodeImage, NodeSize

    node = ec2.create_node(name="hand-made", size=NodeSize("t2.micro", "t2.micro", 0, 0, 0, 0.0, ec2),
                           image=NodeImage(AMI, AMI, ec2), ex_metadata={"team": "legacy"})
    config = settings_file(tmp_path, cloud.proxy.port, cloud.owner)
    out = CliRunner().invoke(stratum, ["infra", "import", "aws", node.id, "--as", "legacy", "--repo", str(repo.path),
                                         "--data-dir", str(cloud.data), "--config", str(config)])
    assert out.exit_code == 0, out.output
    text = out.output
    assert "kind = 'server," in text and 'size = "t2.micro",' in text and f'image = "{AMI}",' in text
    assert 'tags = { "team" = "legacy" },' in text
    tags = ec2.list_nodes(ex_node_ids=[node.id])[0].extra["tags"]
    assert tags[TAG_ID] == "legacy" and tags[TAG_OWNER] == cloud.owner
    nickel = "\n".join(line for line in text.splitlines() if not line.startswith("#"))
    repo.commit({"infra/legacy.ncl": nickel + "\n"})
    assert [a.summary for a in cloud.pipeline.plan("main").actions] == [
        "update server legacy on aws in place [imported: Stratum's spec tag is recorded]"]
    assert cloud.run().status == "succeeded"
    assert cloud.pipeline.plan("main").actions == ()
    assert [n.id for n in ec2.list_nodes(ex_filters={f"tag:{TAG_ID}": "legacy"})] == [node.id]


def test_bad_input_is_named(cloud: CloudStack, repo: WorkRepo) -> None:
    """An unconfigured provider, a reference to another provider's resource, a reference of the wrong kind
    and a Nickel contract error each reject the revision with a message naming the resource."""
    repo.commit({"infra/c.ncl": infra(
        resource("n1", "network", provider=Raw("'gcp"), cidr="10.0.0.0/16"),
        aws("s1", "subnet", network="n1", cidr="10.0.1.0/24"),
        aws("fw", "firewall"),
        aws("vm", "server", size="t2.micro", image=AMI, subnet="fw"))})
    messages = sorted(p.message for p in cloud.pipeline.plan("main").problems)
    assert messages == [
        "resource n1: network needs a cloud provider; 'gcp' is not configured on this host",
        "resource s1 (provider aws) uses network n1 of provider gcp",
        "resource vm: subnet names 'fw', which is a firewall, not a subnet"]
    repo.commit({"infra/c.ncl": infra(aws("n2", "network", cidr="10.0.0/16"))})
    problems = cloud.pipeline.plan("main").problems
    assert len(problems) == 1 and problems[0].path == "infra/c.ncl" and "CIDR" in problems[0].message


def test_throttling_is_retried(cloud: CloudStack, repo: WorkRepo, proxy: FaultProxy) -> None:
    """RequestLimitExceeded on the first CreateVpc (injected by the proxy) is transient: retried, and the
    run succeeds."""
    seen: list[str] = []

    def throttle(action: str, q: dict[str, str]) -> tuple[int, str] | None:
        if action == "CreateVpc" and not seen:
            seen.append(action)
            return 503, "RequestLimitExceeded"
        return None

    proxy.rules.append(throttle)
    repo.commit({"infra/c.ncl": infra(aws("n", "network", cidr="10.4.0.0/16"))})
    result = cloud.run()
    assert result.status == "succeeded", result.message
    assert proxy.calls.count("CreateVpc") == 2
    events = cloud.index.query("SELECT message FROM events WHERE kind = 'action_retry'")
    assert any("throttled" in str(m[0]) for m in events)


def test_refused_credentials_fail_at_once_and_missing_ones_are_named(cloud: CloudStack, repo: WorkRepo,
                                                                      proxy: FaultProxy, tmp_path: Path) -> None:
    """AuthFailure from the API (injected by the proxy) is terminal: one try, the run rolls back, the message
    says to check the credentials. A provider configured without any credentials rejects the revision naming
    the provider and the settings to add."""
    proxy.rules.append(lambda action, q: (401, "AuthFailure") if action == "CreateVpc" else None)
    repo.commit({"infra/c.ncl": infra(aws("n", "network", cidr="10.5.0.0/16"))})
    result = cloud.run()
    assert result.status == "rolled_back"
    assert "refused the credentials" in result.message and proxy.calls.count("CreateVpc") == 1

    bare = CloudStack(tmp_path / "nocreds", repo.path, cloud.evaluator, proxy,
                      {"infra": {"root": str(tmp_path / "r"), "providers": {
                          "aws": {"type": "aws", "key_env": "STRATUM_TEST_NO_SUCH_KEY",
                                  "secret_env": "STRATUM_TEST_NO_SUCH_SECRET"}}}})
    try:
        problems = bare.pipeline.plan("main").problems
        assert [p.message for p in problems] == ["resource n: provider aws is not usable: provider aws: no AWS "
                                                 "credentials"]
        assert "[infra.providers.aws]" in problems[0].hint
    finally:
        bare.close()


def test_pull_request_plan_reads_no_api(cloud: CloudStack, repo: WorkRepo, proxy: FaultProxy) -> None:
    """A pull request's plan (base against head, no target read) shows a size change as a replacement and a
    tag change as in place, without a single API call."""
    base = repo.commit({"infra/c.ncl": infra(aws("web", "server", size="t2.micro", image=AMI),
                                             aws("api", "server", size="t2.micro", image=AMI))})
    head = repo.commit({"infra/c.ncl": infra(aws("web", "server", size="t2.small", image=AMI),
                                             aws("api", "server", size="t2.micro", image=AMI,
                                                 tags=Raw('{ team = "api" }')))})
    before = len(proxy.calls)
    report = cloud.pipeline.plan_between(base, head)
    assert sorted(a.summary for a in report.actions) == [
        "replace server web on aws [size t2.micro -> t2.small]",
        "update server api on aws in place [tags differ (team)]"]
    assert len(proxy.calls) == before
