"""The ports the daemon hands reconcilers (reconcilers/ports.py, daemon/run/ports.py), over real repositories, a
real index, a real vault key and real timers: secrets resolved at apply time and audited, never stored; commits
as the daemon to side branches only; timers and waking the loop; events under the reconciler's name."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path

import pygit2
import pytest

from daemon.git.source import GitSource
from daemon.index.store import Index
from daemon.run.ports import IDENTITY, RepoGitWriter, TimerScheduler, bound_events
from daemon.run.runtime import Runtime, build
from daemon.settings import load_settings
from reconcilers.errors import SourceError, StratumError
from tests.fixtures import WorkRepo, infra, resource
from tests.vault_fixtures import CANARY, secret_world


@pytest.fixture
def runtime(tmp_path: Path) -> Iterator[tuple[Runtime, WorkRepo]]:
    """A daemon's runtime (runtime.build, as stratumd makes it) over a repo with one secret manifest."""
    data = tmp_path / "data"
    world = secret_world(data)
    repo = WorkRepo(tmp_path / "ops")
    repo.commit({"infra/motd.ncl": infra(resource("motd", "file", path="etc/motd", content="hi\n")),
                 "secrets/rules.ncl": world.rules(),
                 "secrets/app.yaml": world.manifest({"db": {"password": CANARY}})})
    config = tmp_path / "stratumd.toml"
    config.write_text("")
    settings = load_settings({"repo": str(repo.path), "data_dir": data, "root": tmp_path / "root"}, env={},
                             config=config)
    rt = build(settings)
    yield rt, repo
    rt.close()


def _events(index: Index, kind: str) -> list[tuple[str, str, str]]:
    return [(str(a), str(b), str(c)) for a, b, c in
            index.query("SELECT reconciler, subject, message FROM events WHERE kind = ? ORDER BY ts", [kind])]


def test_the_secrets_port_resolves_at_apply_time_audited_and_never_stored(
        runtime: tuple[Runtime, WorkRepo], tmp_path: Path) -> None:
    """Before the manifest is applied nothing resolves; after, the port of another reconciler (infra) gets the
    value from the vault; each use is an event naming who asked and what for, and the value is in no file of the
    data directory (index, journal, state)."""
    rt, _ = runtime
    assert rt.ports is not None
    port = rt.ports.secrets.for_("infra")
    with pytest.raises(StratumError, match="not loaded"):
        port.resolve("secrets/app.yaml#db.password", purpose="render etc/app.conf")
    assert rt.pipeline.run("main").status == "succeeded"
    assert port.resolve("secrets/app.yaml#db.password", purpose="render etc/app.conf") == CANARY
    with pytest.raises(StratumError, match="not <manifest path>#<key>"):
        port.resolve("secrets/app.yaml", purpose="oops")
    audited = _events(rt.index, "secret_resolved")
    assert [(r, s) for r, s, _ in audited] == [("infra", "secrets/app.yaml#db.password")] * 2 + \
        [("infra", "secrets/app.yaml")]
    assert "render etc/app.conf" in audited[1][2] and "resolved" in audited[1][2]
    assert all(CANARY not in m for _, _, m in audited)
    rt.index.sync()
    leaked = [p for p in (tmp_path / "data").rglob("*") if p.is_file() and CANARY.encode() in p.read_bytes()]
    assert leaked == []


def test_without_a_provider_the_secrets_port_refuses_and_says_why(tmp_path: Path) -> None:
    """A daemon whose vault is unavailable: resolving fails with what to do, and the refusal is audited."""
    from daemon.run.ports import SecretsBroker

    index = Index(tmp_path / "index.duckdb")
    try:
        with pytest.raises(StratumError, match="no reconciler provides secrets") as err:
            SecretsBroker(index).for_("infra").resolve("secrets/a.yaml#k", purpose="test")
        assert "vault" in err.value.hint
        assert _events(index, "secret_resolved")[0][0] == "infra"
    finally:
        index.close()


def test_the_git_writer_commits_as_the_daemon_to_side_branches_only(tmp_path: Path) -> None:
    """A new side branch starts at the given base (or with no parent), later commits stack on it, the author is
    the daemon, the watched branch is refused and never moves."""
    repo = WorkRepo(tmp_path / "ops")
    tip = repo.commit({"README.md": "ops\n"})
    writer = RepoGitWriter(GitSource(str(repo.path), "main", tmp_path / "data"))
    first = writer.commit_file("stratum/mcp/x", "knowledge/notes/a.md", "# A\n", "add a", base=tip)
    second = writer.commit_file("stratum/mcp/x", "knowledge/notes/b.md", "# B\n", "add b")
    git = pygit2.Repository(str(repo.path))
    head = git.references["refs/heads/stratum/mcp/x"].peel(pygit2.Commit)
    assert str(head.id) == second and [str(p) for p in head.parent_ids] == [first]
    assert (head.author.name, head.author.email) == IDENTITY
    assert {"README.md", "knowledge"} <= {e.name for e in head.tree}
    orphan = writer.commit_file("stratum/executions", "runs/r1.md", "run\n", "run r1")
    assert git.get(orphan).parent_ids == []   # type: ignore[union-attr]
    with pytest.raises(SourceError, match="branch it watches"):
        writer.commit_file("main", "x.md", "x\n", "no")
    assert str(git.references["refs/heads/main"].target) == tip


def test_the_scheduler_runs_timers_wakes_the_loop_and_cancels_on_close() -> None:
    """A timer fires once (its error is logged, not raised); `wake` rings the loop it was given; close cancels
    what is pending and refuses new timers."""
    scheduler = TimerScheduler()
    fired = threading.Event()
    rung: list[str] = []
    scheduler.call_later(0.0, fired.set, name="t1")
    def broken() -> None:
        raise RuntimeError("a reconciler's timer fails")

    scheduler.call_later(0.0, broken, name="broken")
    assert fired.wait(10)
    scheduler.wake("nobody listens yet")                              # no loop: a no-op
    scheduler.wake_fn = rung.append
    scheduler.wake("agent task due")
    assert rung == ["agent task due"]
    never = threading.Event()
    scheduler.call_later(3600.0, never.set, name="later")
    scheduler.close()
    with pytest.raises(StratumError, match="stopping"):
        scheduler.call_later(0.0, never.set)
    assert not never.is_set()


def test_events_are_recorded_under_the_reconcilers_name(tmp_path: Path) -> None:
    """The recorder a reconciler gets writes its own name, whatever it passes."""
    index = Index(tmp_path / "index.duckdb")
    try:
        bound_events(index, "hello")("drift_found", "etc/motd changed", subject="motd", revision="abc")
        assert _events(index, "drift_found") == [("hello", "motd", "etc/motd changed")]
    finally:
        index.close()
