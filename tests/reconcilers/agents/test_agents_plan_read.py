"""The `plan.read` tool and the prompts' `plan()` helper answer the kernel's own plan: a real `stratum plan`
process over a real repository (no daemon here, so the CLI plans in its own process; with a daemon it asks the
daemon's socket). The model is a loopback server standing in for a hosted one."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import pytest

from reconcilers.agents.knowledge import context_for, tool_host
from reconcilers.agents.model import Agent, Task
from reconcilers.agents.plan_read import kernel_plan
from tests.fixtures import WorkRepo, infra, resource
from tests.proc import DaemonProc, wait_for
from tests.reconcilers.agents.model_server import Answer, model_server, openai_text, openai_tool
from tests.reconcilers.agents.test_agents_daemon import stratum
from tests.reconcilers.agents.test_agents_runner import Env, gpt, team

STRATUM = str(Path(sys.executable).with_name("stratum"))


def _repo(tmp_path: Path) -> tuple[WorkRepo, Path]:
    repo = WorkRepo(tmp_path / "ops")
    repo.commit({"infra/motd.ncl": infra(resource("motd", "file", path="etc/motd", content="hello\n"))})
    data = tmp_path / "data"
    data.mkdir()
    (data / "stratumd.toml").write_text(f'root = "{tmp_path / "root"}"\n')
    return repo, data


def test_plan_read_and_the_plan_helper_answer_the_kernels_plan(tmp_path: Path) -> None:
    """The prompt's plan() and the model's plan_read call both carry `stratum plan`'s markdown (the motd file
    the commit would create); the call is allowed (declared) and audited."""
    repo, data = _repo(tmp_path)

    def script(path: str, body: dict[str, Any], headers: dict[str, str]) -> Answer:
        if body["messages"][-1]["role"] == "tool":
            return openai_text("One file would be created.")
        return openai_tool("plan_read", {})

    plan = kernel_plan(STRATUM, str(repo.path), data)
    with model_server(script) as server:
        agent = Agent("ops-1", "devops", ("gpt",), tools=("plan.read",))
        e = Env(tmp_path, team([gpt(server)], [agent]), tools=tool_host(None, plan=plan),
                context=context_for(None, plan))
        row = e.run(Task("look", "Look", "devops", prompt="Before: {{ plan() }}\nWhat would change?"))
        assert row["outcome"] == "succeeded", row["error"]
        prompt = server.requests[0][1]["messages"][1]["content"]
        answer = server.requests[1][1]["messages"][-1]["content"]
        assert server.requests[0][1]["tools"][0]["function"]["name"] == "plan_read"
        for text in (prompt, answer):
            assert "motd" in text and "error:" not in text, text
        assert e.store.dicts("SELECT tool, allowed FROM tool_calls") == [{"tool": "plan.read", "allowed": True}]


def test_a_plan_that_cannot_be_made_is_an_answer_not_a_crash(tmp_path: Path) -> None:
    """A repository that does not exist: the tool answers why, in one line, and nothing raises."""
    data = tmp_path / "data"
    data.mkdir()
    answer = kernel_plan(STRATUM, str(tmp_path / "missing"), data)()
    assert answer.startswith("error: the plan could not be made: ") and "Traceback" not in answer
    assert "\n" not in answer


@pytest.mark.slow
def test_in_the_daemon_plan_read_asks_the_daemon_for_its_plan(tmp_path: Path) -> None:
    """A real stratumd: an agent's plan_read call is answered by `stratum plan` through the daemon's control
    socket (the daemon holds the index; the CLI could not open it): the plan of the applied head, no error."""
    seen: list[str] = []

    def script(path: str, body: dict[str, Any], headers: dict[str, str]) -> Answer:
        last = body["messages"][-1]
        if last["role"] == "tool":
            seen.append(str(last["content"]))
            return openai_text("Nothing to do.")
        return openai_tool("plan_read", {})

    with model_server(script) as server:
        repo = WorkRepo(tmp_path / "ops")
        head = repo.commit({
            "infra/motd.ncl": infra(resource("motd", "file", path="etc/motd", content="hello\n")),
            "agents/team.ncl": f"""{{
  providers = {{ model = {{ kind = 'openai, base_url = "{server.url}/v1", model = "stand-in" }} }},
  agents = {{ ops = {{ role = "devops", providers = ["model"], tools = ["plan.read"] }} }},
}}
""",
            "tasks/t.ncl": '{ tasks = { look = { title = "Look", role = "devops", prompt = "What changes?" } } }\n'})
        data = tmp_path / "data"
        daemon = DaemonProc(str(repo.path), data, tmp_path / "root")
        try:
            assert daemon.wait_run(head, 120)["status"] == "succeeded", daemon.log()
            wait_for(lambda: (data / "agents" / "status.json").exists(), 60)
            out = stratum("task", "run", "look", "--data-dir", str(data))
            assert out.returncode == 0, out.stderr
            wait_for(lambda: seen, 180)
        finally:
            assert daemon.stop() == 0, daemon.log()
    assert "Stratum plan for" in seen[0] and "error:" not in seen[0], seen[0]
