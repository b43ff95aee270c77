"""The acceptance story end to end: a check sees a real PostgreSQL stopped by the test -> the incident pipeline
starts -> the devops agent gets the runbook from knowledge search (a tool call answered by a real knowledge
base over a real git repository) -> a command step runs the runbook's restart -> the security agent reviews ->
an execution node with the postmortem skeleton is committed to a side branch. The models are a loopback
server standing in for hosted ones (OpenAI chat-completions for devops, Anthropic messages for security)."""

from __future__ import annotations

import shutil
import tempfile
import time
from pathlib import Path
from types import MappingProxyType
from typing import Any

import pygit2
import pytest
import yaml

from daemon.run.workspace import open_workspace
from reconcilers.agents.knowledge import context_for, tool_host
from reconcilers.agents.model import Agent, AgentsDesired, Check, Pipeline, Provider, Step, Task, Trigger
from reconcilers.agents.service import AgentService
from reconcilers.knowledge.execution import commit_file
from reconcilers.knowledge.knowledge_base import KnowledgeBase
from tests.fixtures import WorkRepo
from tests.reconcilers.agents.model_server import Answer, anthropic_text, model_server, openai_text, openai_tool
from tests.servers import PG_BIN, start_postgres

RUNBOOK = """---
id: 7d1f2a3b-4c5d-4e6f-8a9b-0c1d2e3f4a5b
type: note
title: "Runbook: PostgreSQL is down"
tags: [runbook, postgres]
status: active
created: 2024-05-02
modified: 2024-06-20
---
# PostgreSQL is down

**Symptoms:** connections to port 5432 are refused.

1. Check the cluster's log for a crash or a full disk.
2. Start the cluster again with pg_ctl start.
3. Confirm with `select 1`.
"""


def wait_for(check: Any, what: str, limit: float = 120.0) -> None:
    """Poll `check()` until true (bounded)."""
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.2)
    pytest.fail(f"timed out waiting for {what}")


@pytest.mark.slow
def test_postgres_down_runs_the_incident_pipeline_end_to_end(tmp_path: Path) -> None:
    """Stop PostgreSQL; the check fails twice; the pipeline triages with the runbook, restarts the cluster,
    reviews, and records the postmortem skeleton; PostgreSQL answers again."""
    # Under a temp dir of its own, as tests/servers.py's session fixture does (initdb runs as postgres, which
    # failed under pytest's tmp_path here).
    pg_root = Path(tempfile.mkdtemp(prefix="stratum-agents-pg-"))
    pg = start_postgres(pg_root / "pg")
    repo = WorkRepo(tmp_path / "ops")
    repo.commit({"knowledge/runbooks/postgres-down.md": RUNBOOK})
    kb = KnowledgeBase(open_workspace(str(repo.path), tmp_path / "kb-data"), provider=None)
    seen_tool_results: list[str] = []
    review_prompts: list[str] = []

    def script(path: str, body: dict[str, Any], headers: dict[str, str]) -> Answer:
        if path.endswith("/messages"):                  # the security reviewer (Anthropic)
            review_prompts.append(str(body["messages"][0]["content"]))
            return anthropic_text("Review: restart was by the runbook; no credentials touched. Approved.")
        last = body["messages"][-1]
        if last["role"] == "tool":
            seen_tool_results.append(last["content"])
            return openai_text("Runbook 'PostgreSQL is down': step 2, start the cluster with pg_ctl start.")
        return openai_tool("knowledge_search", {"query": "postgres down"})

    try:
        with model_server(script) as models:
            restart = [*pg.as_user, str(PG_BIN / "pg_ctl"), "-D", str(pg.data), "-o",
                       f"-p {pg.port} -k {pg.root / 'sock'} -c listen_addresses=127.0.0.1 -c fsync=off",
                       "-l", str(pg.log), "-w", "start"]
            team = AgentsDesired(
                revision="test-revision",
                providers=MappingProxyType({
                    "local": Provider("local", "command"),
                    "gpt": Provider("gpt", "openai", base_url=models.url + "/v1", model="stand-in", price_in=0.1),
                    "claude": Provider("claude", "anthropic", base_url=models.url, model="stand-in")}),
                agents=MappingProxyType({
                    "ops": Agent("ops", "devops", ("gpt", "local"), tools=("knowledge.search",)),
                    "sec": Agent("sec", "security", ("claude",))}),
                checks=MappingProxyType({"pg": Check("pg", "tcp", host="127.0.0.1", port=pg.port, failures=2,
                                                     timeout=2)}),
                tasks=MappingProxyType({
                    "triage": Task("triage", "Find the runbook", "devops",
                                   prompt="Check {{ inputs.check }} failed: {{ inputs.message }}. Find the runbook."),
                    "restart": Task("restart", "Restart PostgreSQL", "devops", command=tuple(restart), timeout=120,
                                    idempotency_key=f"restart-{pg.port}"),
                    "review": Task("review", "Security review", "security",
                                   prompt="Review what was done:\n{{ inputs.steps.triage }}\n{{ inputs.steps.fix }}")}),
                pipelines=MappingProxyType({"incident": Pipeline("incident", "PostgreSQL incident",
                                                                 Trigger("on_check", check="pg"),
                    (Step("triage", "triage"), Step("fix", "restart", ("triage",)),
                     Step("review", "review", ("fix",))))}))
            svc = AgentService(tmp_path / "data", roles=("devops", "security"), tools=tool_host(kb),
                               context=context_for(kb))
            committed: list[str] = []
            git = pygit2.Repository(str(repo.path))
            svc.on_pipeline = lambda path, text, run: committed.append(
                commit_file(git, "stratum/executions", path, text, f"incident {run.outcome}"))
            try:
                svc.update(team)
                assert svc.run_check("pg") == ""
                pg.stop("immediate")                              # the incident
                assert svc.run_check("pg") == ""                  # one failure: not yet
                assert svc.run_check("pg") == "failing"           # the second: the pipeline starts
                wait_for(lambda: svc.pipelines, "the incident pipeline to finish")
                result = svc.pipelines[0]
                assert result.outcome == "succeeded", [(s.step, s.state, s.error) for s in result.steps]
                assert [s.step for s in result.steps] == ["triage", "fix", "review"]
                assert svc.run_check("pg") == "recovered"
            finally:
                svc.close()
        assert pg.psql("select 1") == "1"
        assert seen_tool_results and "pg_ctl start" in seen_tool_results[0]
        assert "Runbook 'PostgreSQL is down'" in review_prompts[0]
        node_commit = git.revparse_single("stratum/executions")
        assert isinstance(node_commit, pygit2.Commit) and committed == [str(node_commit.id)]
        blob = next(iter(_files(git, node_commit.tree)))
        front = yaml.safe_load(blob.split("---")[1])
        assert (front["type"], front["outcome"], front["title"]) == ("execution", "succeeded",
                                                                     "Pipeline incident succeeded")
        assert "agents:task:restart" in front["resources"] and "## Follow-ups" in blob
    finally:
        if pg.running():
            pg.stop()
        shutil.rmtree(pg_root, ignore_errors=True)


def _files(repo: pygit2.Repository, tree: pygit2.Tree) -> list[str]:
    """Texts of every blob under `tree`."""
    out: list[str] = []
    for entry in tree:
        obj = repo[entry.id]
        if isinstance(obj, pygit2.Tree):
            out += _files(repo, obj)
        elif isinstance(obj, pygit2.Blob):
            out.append(obj.data.decode())
    return out
