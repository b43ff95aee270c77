"""Task executions in a daemon's runtime (runtime.build, as stratumd makes it), with the daemon's real ports: every
execution gets an `execution` knowledge node committed by the git writer to the executions branch (bounded per
task), the `vault.read` tool resolves through the real secrets port where the repo's Cedar policy allows the
role and is refused (in the record, audited) where it does not, and no secret value reaches a record, a node
or a file of the data directory. The model is a loopback server standing in for a hosted one."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pygit2
import pytest
import yaml

from daemon.run.runtime import Runtime, build
from daemon.settings import load_settings
from reconcilers.agents.reconciler import AgentsReconciler
from tests.fixtures import WorkRepo
from tests.proc import wait_for
from tests.reconcilers.agents.model_server import Answer, ModelServer, model_server, openai_text, openai_tool
from tests.vault_fixtures import CANARY, secret_world

BRANCH = "stratum/executions"
POLICY = """// devops may read the app's secrets through vault.read; no other role reads anything.
permit(principal == Agents::Role::"devops", action == Agents::Action::"vault.read", resource)
  when { resource.path like "secrets/app*" };
"""


def team(url: str) -> str:
    return f"""{{
  providers = {{
    local = {{ kind = 'command }},
    model = {{ kind = 'openai, base_url = "{url}/v1", model = "stand-in" }},
  }},
  agents = {{
    ops = {{ role = "devops", providers = ["model", "local"], tools = ["vault.read", "plan.read"] }},
    sec = {{ role = "security", providers = ["model"], tools = ["vault.read"] }},
  }},
}}
"""


TASKS = """{
  tasks = {
    hello = { title = "Hello", role = "devops", command = ["sh", "-c", "echo hello from $STRATUM_TASK"] },
    read-ops = { title = "Read as devops", role = "devops", prompt = "Check the database password works." },
    read-sec = { title = "Read as security", role = "security", prompt = "Check the database password." },
  },
}
"""


def script(path: str, body: dict[str, Any], headers: dict[str, str]) -> Answer:
    """The stand-in model: asks for the secret, then repeats what the tool answered (as a careless model would)."""
    last = body["messages"][-1]
    if last["role"] == "tool":
        return openai_text(f"The tool said: {last['content']}")
    return openai_tool("vault_read", {"reference": "secrets/app.yaml#db.password"})


@pytest.fixture
def world(tmp_path: Path) -> Iterator[tuple[Runtime, WorkRepo, ModelServer]]:
    """A runtime over a repo with agents, tasks, a secret manifest and a policy; executions go to BRANCH."""
    with model_server(script) as server:
        data = tmp_path / "data"
        secrets = secret_world(data)
        repo = WorkRepo(tmp_path / "ops")
        repo.commit({"agents/team.ncl": team(server.url), "tasks/t.ncl": TASKS,
                     "agents/policies/vault.cedar": POLICY,
                     "secrets/rules.ncl": secrets.rules(),
                     "secrets/app.yaml": secrets.manifest({"db": {"password": CANARY}})})
        config = tmp_path / "stratumd.toml"
        config.write_text(f'[agents]\nexecutions_branch = "{BRANCH}"\n')
        settings = load_settings({"repo": str(repo.path), "data_dir": data, "root": tmp_path / "root"}, env={},
                                 config=config)
        rt = build(settings)
        try:
            yield rt, repo, server
        finally:
            rt.close()


def _history(rec: AgentsReconciler, task: str) -> list[dict[str, Any]]:
    assert rec.service is not None
    return rec.service.store.dicts("SELECT * FROM executions WHERE task = ? ORDER BY started", [task])


def _run(rec: AgentsReconciler, task: str, times: int = 1) -> list[dict[str, Any]]:
    """Queue `task` `times` times and wait until each has a record."""
    svc = rec.service
    assert svc is not None
    before = len(_history(rec, task))
    for _ in range(times):
        svc.enqueue_task(svc.team.tasks[task], "manual", {})
    wait_for(lambda: len(_history(rec, task)) >= before + times, 180)
    return _history(rec, task)


def _tree(repo: WorkRepo) -> dict[str, str]:
    git = pygit2.Repository(str(repo.path))
    out: dict[str, str] = {}

    def walk(tree: pygit2.Tree, prefix: str) -> None:
        for e in tree:
            obj = git[e.id]
            if isinstance(obj, pygit2.Tree):
                walk(obj, f"{prefix}{e.name}/")
            elif isinstance(obj, pygit2.Blob):
                out[f"{prefix}{e.name}"] = obj.data.decode()

    commit = git.revparse_single(BRANCH)
    assert isinstance(commit, pygit2.Commit)
    walk(commit.tree, "")
    return out


def test_every_execution_gets_a_bounded_execution_node_and_no_secret_leaks(
        world: tuple[Runtime, WorkRepo, ModelServer], tmp_path: Path) -> None:
    """Command and LLM executions each get an `execution` node on the executions branch; a task's nodes rotate
    over retention-bounded slots; vault.read answers devops through the secrets port (audited there and in
    tool_calls) and refuses security (a tool error in its record); the value is in no record, node or file."""
    rt, repo, server = world
    assert rt.pipeline.run("main").status == "succeeded"
    rec = rt.reconcilers["agents"]
    assert isinstance(rec, AgentsReconciler)
    wait_for(lambda: rec.service is not None, 30)
    assert rec.service is not None and rec.service.nodes is not None
    rec.service.nodes.keep = 2                          # retention_count 2: two slots per task

    hello = _run(rec, "hello", 3)
    ops = _run(rec, "read-ops")[-1]
    sec = _run(rec, "read-sec")[-1]
    assert [r["outcome"] for r in hello] == ["succeeded"] * 3
    assert ops["outcome"] == "succeeded" and CANARY not in ops["summary"] and "[redacted]" in ops["summary"]
    assert sec["outcome"] == "succeeded" and "tool vault.read: policy does not allow the security role" in \
        sec["error"]
    # The model of devops did get the value (it asked for it, and the policy allows devops).
    assert any(m.get("content") == CANARY for _, body, _ in server.requests for m in body["messages"])
    audit = rec.service.store.dicts("SELECT role, tool, allowed FROM tool_calls ORDER BY at_ts")
    assert audit == [{"role": "devops", "tool": "vault.read", "allowed": True},
                     {"role": "security", "tool": "vault.read", "allowed": False}]
    resolved = rt.index.query("SELECT reconciler, subject, message FROM events WHERE kind = 'secret_resolved'")
    assert [(r, s) for r, s, m in resolved if "vault.read" in m] == [("agents", "secrets/app.yaml#db.password")]

    rec.close()                                         # the service stops: the last nodes are committed
    tree = _tree(repo)
    nodes = {p: t for p, t in tree.items() if p.startswith("executions/agents/tasks/")}
    assert sorted(nodes) == ["executions/agents/tasks/hello/000.md", "executions/agents/tasks/hello/001.md",
                             "executions/agents/tasks/read-ops/000.md", "executions/agents/tasks/read-sec/000.md"]
    front = {p: yaml.safe_load(t.split("---")[1]) for p, t in nodes.items()}
    assert all(f["type"] == "execution" and f["revision"] == rt.index.get_state("last_applied_revision")
               for f in front.values())
    # Three hello runs, two slots: the third run recorded took the first slot again, so the tree holds two
    # different hello runs. (Which two depends on the order the parallel workers recorded them, not on the
    # history's order of finish times: asserting the ids by position was flaky under load.)
    kept = {front[f"executions/agents/tasks/hello/{slot}.md"]["run_id"] for slot in ("000", "001")}
    assert len(kept) == 2 and kept <= {r["id"] for r in hello}
    assert "hello from hello" in nodes["executions/agents/tasks/hello/000.md"]
    assert front["executions/agents/tasks/read-sec/000.md"]["resources"] == ["agents:task:read-sec",
                                                                          "agents:agent:sec"]
    assert all(CANARY not in t for t in tree.values())
    rt.index.sync()
    leaked = [p for p in (tmp_path / "data").rglob("*") if p.is_file() and CANARY.encode() in p.read_bytes()]
    assert leaked == []
