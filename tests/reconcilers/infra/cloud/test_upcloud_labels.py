"""UpCloud labels (a resource's `tags`) and `stratum infra import upcloud`, against the loopback server that
replays the UpCloud API answers libcloud ships (conftest.UpcloudReplay, which also keeps the title and labels a
PUT sets), through libcloud's real UpCloud driver, the real pipeline and the real CLI."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from click.testing import CliRunner

from daemon.cli.main import cli as stratum
from daemon.nickel.evaluator import Evaluator
from reconcilers.infra.providers.upcloud import parse_title
from tests.fixtures import Raw, WorkRepo, infra, resource
from tests.reconcilers.infra.cloud.conftest import CloudStack, FaultProxy, UpcloudReplay, aws_settings

TEMPLATE = "01000000-0000-4000-8000-000010050200"
RECORDED = "00f8c525-7e62-4108-8115-3958df5b43dc"     # a server in the shipped recordings, not made by Stratum


def settings(tmp: Path, proxy: FaultProxy, upcloud: UpcloudReplay) -> dict[str, Any]:
    """An aws provider (unused here) and an upcloud one at the replay server."""
    out = aws_settings(proxy.port, "placeholder", tmp / "root")
    out["infra"]["providers"]["upcloud"] = {"type": "upcloud", "username": "u", "password": "p",
                                            "host": "127.0.0.1", "port": upcloud.port, "secure": False,
                                            "zone": "fi-hel1", "poll": 0.02}
    return out


def labels(server: dict[str, Any]) -> dict[str, str]:
    """A replayed server's labels."""
    return {x["key"]: x["value"] for x in server.get("labels", {}).get("label", [])}


def app(tags: str) -> str:
    """infra/up.ncl: one UpCloud server with `tags`."""
    return infra(resource("app", "server", provider=Raw("'upcloud"), size="1xCPU-1GB", image=TEMPLATE,
                          tags=Raw(tags)))


def test_tags_are_labels_set_at_create_and_changed_in_place(tmp_path: Path, repo: WorkRepo, evaluator: Evaluator,
                                                           proxy: FaultProxy, upcloud: UpcloudReplay) -> None:
    """A server's tags become its UpCloud labels; the next plan reads them back and is empty; a changed tag
    updates the same server's labels in place (no replacement)."""
    stack = CloudStack(tmp_path, repo.path, evaluator, proxy, settings(tmp_path, proxy, upcloud))
    try:
        owner = stack.settings["infra"]["owner"]
        repo.commit({"infra/up.ncl": app('{ team = "ops", env = "prod" }')})
        result = stack.run()
        assert result.status == "succeeded", result.message
        first = upcloud.ours(owner)["app"]
        assert labels(first) == {"team": "ops", "env": "prod"}
        assert stack.pipeline.plan("main").actions == ()

        repo.commit({"infra/up.ncl": app('{ team = "web" }')})
        assert [a.summary for a in stack.pipeline.plan("main").actions] == [
            "update server app on upcloud in place [tags differ (env, team)]"]
        assert stack.run().status == "succeeded"
        now = upcloud.ours(owner)["app"]
        assert now["uuid"] == first["uuid"] and labels(now) == {"team": "web"}
        assert stack.pipeline.plan("main").actions == ()
    finally:
        stack.close()


def test_import_retitles_a_server_and_the_committed_nickel_adopts_it(
        tmp_path: Path, repo: WorkRepo, evaluator: Evaluator, proxy: FaultProxy, upcloud: UpcloudReplay) -> None:
    """`stratum infra import upcloud UUID --as legacy` takes a server made outside Stratum: its title marks it
    ours, its labels are kept and printed as tags; once committed (with its image named: the API does not say
    which template a server came from) the plan records the spec in place and the next plan is empty."""
    stack = CloudStack(tmp_path, repo.path, evaluator, proxy, settings(tmp_path, proxy, upcloud))
    try:
        owner = stack.settings["infra"]["owner"]
        upcloud.servers[RECORDED]["labels"] = {"label": [{"key": "team", "value": "legacy"}]}
        config = tmp_path / "stratumd.toml"
        config.write_text(f'[infra]\nowner = "{owner}"\n[infra.providers.upcloud]\ntype = "upcloud"\n'
                          f'username = "u"\npassword = "p"\nhost = "127.0.0.1"\nport = {upcloud.port}\n'
                          "secure = false\n")
        out = CliRunner().invoke(stratum, ["infra", "import", "upcloud", RECORDED, "--as", "legacy", "--repo",
                                           str(repo.path), "--data-dir", str(stack.data), "--config", str(config)])
        assert out.exit_code == 0, out.output
        assert "kind = 'server," in out.output and 'size = "1xCPU-1GB",' in out.output
        assert 'zone = "fi-hel1",' in out.output and 'tags = { "team" = "legacy" },' in out.output
        assert parse_title(upcloud.servers[RECORDED]["title"]) == (owner, "legacy", "")
        nickel = "\n".join(line for line in out.output.splitlines() if not line.startswith("#"))
        repo.commit({"infra/legacy.ncl": nickel.replace("SET-ME", TEMPLATE) + "\n"})
        assert [a.summary for a in stack.pipeline.plan("main").actions] == [
            "update server legacy on upcloud in place [imported: Stratum's spec tag is recorded]"]
        result = stack.run()
        assert result.status == "succeeded", result.message
        assert stack.pipeline.plan("main").actions == ()
        assert list(upcloud.ours(owner)) == ["legacy"] and labels(upcloud.servers[RECORDED]) == {"team": "legacy"}
    finally:
        stack.close()


def test_import_refuses_what_is_not_there_or_not_a_server(tmp_path: Path, repo: WorkRepo, evaluator: Evaluator,
                                                          proxy: FaultProxy, upcloud: UpcloudReplay) -> None:
    """An unknown uuid, or a kind UpCloud does not serve here, is a one-line error naming what to fix."""
    config = tmp_path / "stratumd.toml"
    config.write_text(f'[infra]\nowner = "o"\n[infra.providers.upcloud]\ntype = "upcloud"\nusername = "u"\n'
                      f'password = "p"\nhost = "127.0.0.1"\nport = {upcloud.port}\nsecure = false\n')
    common = ["--repo", str(repo.path), "--data-dir", str(tmp_path / "data"), "--config", str(config)]
    repo.commit({"infra/x.ncl": infra()})
    gone = CliRunner().invoke(stratum, ["infra", "import", "upcloud", "00000000-dead", "--as", "x", *common])
    assert gone.exit_code != 0 and "no server 00000000-dead" in gone.output and "Traceback" not in gone.output
    net = CliRunner().invoke(stratum, ["infra", "import", "upcloud", RECORDED, "--as", "x", "--kind", "network",
                                       *common])
    assert net.exit_code != 0 and "only servers can be imported" in net.output
