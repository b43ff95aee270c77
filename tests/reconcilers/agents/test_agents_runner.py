"""Running tasks end to end through the DuckDB queue: command tasks, LLM tasks against a loopback server that
stands in for a hosted model (OpenAI chat-completions with tool calls, Anthropic messages), 429/500/slow
answers and the fallback chain, budgets at 80 % and 100 %, tool calls authorized and audited, idempotency."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path
from types import MappingProxyType
from typing import Any

import httpx
import pytest

from reconcilers.agents.model import Agent, AgentsDesired, Budget, Provider, Task
from reconcilers.agents.prompts import Context
from reconcilers.agents.queue import DEAD, DONE, READY, DuckDBQueue
from reconcilers.agents.runner import Runner
from reconcilers.agents.store import Store
from reconcilers.agents.tools import ToolHost
from reconcilers.agents.worker import Worker
from tests.reconcilers.agents.model_server import (
    Answer,
    ModelServer,
    anthropic_text,
    anthropic_tool,
    model_server,
    openai_text,
    openai_tool,
)


def team(providers: list[Provider], agents: list[Agent], budgets: tuple[Budget, ...] | list[Budget] = (),
         ) -> AgentsDesired:
    """Declarations in force, built directly (loading them is test_agents_load's business)."""
    return AgentsDesired(providers=MappingProxyType({p.id: p for p in providers}),
                         agents=MappingProxyType({a.id: a for a in agents}),
                         budgets=MappingProxyType({b.role: b for b in budgets}))


class Env:
    """A store, a queue, a runner and a worker over a temp dir."""

    def __init__(self, tmp: Path, desired: AgentsDesired, **runner: Any) -> None:
        self.store = Store(tmp / "agents.duckdb")
        self.queue = DuckDBQueue(self.store)
        self.events: list[tuple[str, str]] = []
        self.runner = Runner(self.store, self.queue, desired, tmp / "work", http=httpx.Client(),
                             events=lambda k, m: self.events.append((k, m)), **runner)
        self.worker = Worker(self.queue, self.runner, ["devops", "security"])

    def run(self, task: Task, **enqueue: Any) -> dict[str, Any]:
        """Queue `task`, drain the queue, and return the task's last execution row."""
        self.queue.enqueue(task.role, task.spec(), **enqueue)
        self.worker.drain()
        return self.store.dicts("SELECT * FROM executions WHERE task = ? ORDER BY started DESC LIMIT 1",
                                [task.id])[0]


LOCAL = Provider("local", "command")
OPS = Agent("ops-1", "devops", ("local",))


@pytest.fixture
def env(tmp_path: Path) -> Iterator[Env]:
    """A devops team with one command agent."""
    e = Env(tmp_path, team([LOCAL], [OPS]))
    yield e
    e.store.close()


def test_a_command_task_runs_and_is_recorded(env: Env) -> None:
    """A command task is assigned, run, acked and recorded with its agent, provider and summary."""
    task = Task("hello", "Hello", "devops", command=(sys.executable, "-c", "print('hello from the task')"))
    row = env.run(task)
    assert (row["outcome"], row["agent"], row["provider"]) == ("succeeded", "ops-1", "local")
    assert row["summary"] == "exit 0: hello from the task"
    assert env.queue.rows()[0]["state"] == DONE
    assert (row["rule"], row["explain"].splitlines()[0]) == ("least-loaded", "winner: ops-1 (by least-loaded)")


def test_a_failing_command_is_retried_then_dead_lettered(env: Env) -> None:
    """A non-zero exit is retried after its backoff (at-least-once), then goes to the dead letter."""
    task = Task("fail", "Fail", "devops", command=(sys.executable, "-c", "import sys; sys.exit(2)"), retries=1,
                backoff=0)
    row = env.run(task, retries=1, backoff=0)
    assert row["outcome"] == "failed"
    env.worker.drain()
    states = [r["state"] for r in env.queue.rows()]
    assert states == [DEAD]
    assert env.store.query("SELECT count(*) FROM executions WHERE task = 'fail'")[0][0] == 2


def test_a_redelivered_run_with_an_idempotency_key_acts_once(env: Env, tmp_path: Path) -> None:
    """The same key queued again after it acted is acked from memory: the command does not run twice."""
    marker = tmp_path / "count"
    code = (f"p={str(marker)!r}\nimport os\nn=int(open(p).read()) if os.path.exists(p) else 0\n"
            "open(p,'w').write(str(n+1))")
    task = Task("once", "Once", "devops", command=(sys.executable, "-c", code), idempotency_key="incident-42")
    assert env.run(task, idem_key="incident-42")["outcome"] == "succeeded"
    assert env.run(task, idem_key="incident-42")["outcome"] == "skipped"
    assert marker.read_text() == "1"


def test_a_program_that_cannot_start_is_not_retried(env: Env) -> None:
    """A missing program is a bad declaration: dead at once with the reason in the record."""
    row = env.run(Task("missing", "M", "devops", command=("/nonexistent/prog",), retries=3), retries=3)
    assert row["outcome"] == "failed" and "cannot start" in row["error"]
    assert [r["state"] for r in env.queue.rows()] == [DEAD]


# -- LLM tasks ---------------------------------------------------------------------------------------------
def gpt(server: ModelServer, pid: str = "gpt", price: float = 1.0, timeout: float = 10) -> Provider:
    """An OpenAI-compatible provider on the stand-in server."""
    return Provider(pid, "openai", base_url=server.url + "/v1", model="stand-in", price_in=price,
                    price_out=price, timeout=timeout, api_key="secrets/llm.yaml#key")


def claude(server: ModelServer, pid: str = "claude", price: float = 0.5) -> Provider:
    """An Anthropic provider on the stand-in server."""
    return Provider(pid, "anthropic", base_url=server.url, model="stand-in", price_in=price, price_out=price)


PROMPT_TASK = Task("triage", "Triage", "devops", prompt="Postgres on {{ inputs.host }} is down. Find the runbook.")


def test_an_openai_task_calls_a_tool_and_is_charged(tmp_path: Path) -> None:
    """The model calls knowledge_search (allowed, audited), gets the runbook, answers; tokens and cost are
    recorded, and the API key is resolved from its reference and sent only as a header."""
    def script(path: str, body: dict[str, Any], headers: dict[str, str]) -> Answer:
        if body["messages"][-1]["role"] == "tool":
            return openai_text("Restart postgres with the runbook steps.", 200, 40)
        return openai_tool("knowledge_search", {"query": "postgres down"})

    with model_server(script) as server:
        agent = Agent("ops-1", "devops", ("gpt",), tools=("knowledge.search",))
        host = ToolHost({"knowledge.search": lambda a: f"runbook for {a['query']}: pg_ctl start"})
        e = Env(tmp_path, team([gpt(server)], [agent]), tools=host, secrets=lambda ref: "test-key-not-real",
                context=lambda msg: Context(inputs={"host": "db-1"}))
        row = e.run(PROMPT_TASK)
        assert (row["outcome"], row["provider"]) == ("succeeded", "gpt")
        assert (row["tokens_in"], row["tokens_out"]) == (250, 50)
        assert row["cost"] == pytest.approx(0.25 + 0.05)
        first, second = server.requests[0][1], server.requests[1][1]
        assert "db-1" in first["messages"][1]["content"]
        assert first["tools"][0]["function"]["name"] == "knowledge_search"
        assert second["messages"][-1]["content"] == "runbook for postgres down: pg_ctl start"
        assert server.requests[0][2]["authorization"] == "Bearer test-key-not-real"
        audit = e.store.dicts("SELECT tool, allowed, reason FROM tool_calls")
        assert audit == [{"tool": "knowledge.search", "allowed": True, "reason": "allowed"}]


def test_a_tool_the_role_may_not_call_is_refused_and_audited(tmp_path: Path) -> None:
    """vault.read without a host policy allowing the role is refused; the model is told, the audit says why."""
    def script(path: str, body: dict[str, Any], headers: dict[str, str]) -> Answer:
        if isinstance(body["messages"][-1]["content"], str):
            return anthropic_tool("vault_read", {"reference": "secrets/db.yaml#password"})
        return anthropic_text("I may not read it.")

    with model_server(script) as server:
        agent = Agent("ops-1", "devops", ("claude",), tools=("vault.read",))
        host = ToolHost({"vault.read": lambda a: "the-secret-value"})
        e = Env(tmp_path, team([claude(server)], [agent]), tools=host)
        row = e.run(Task("t", "T", "devops", prompt="Read the database password."))
        assert row["outcome"] == "succeeded"
        result = server.requests[1][1]["messages"][-1]["content"][0]
        assert result["type"] == "tool_result" and result["content"].startswith("error: policy does not allow")
        assert "the-secret-value" not in str(server.requests)
        audit = e.store.dicts("SELECT tool, allowed FROM tool_calls")
        assert audit == [{"tool": "vault.read", "allowed": False}]


@pytest.mark.parametrize("failure", [Answer(429, {"error": "rate limited"}), Answer(500, {"error": "boom"}),
                                     Answer(200, {}, delay=3.0),
                                     Answer(200, {"choices": [], "padding": "x" * 100}, drip=0.05),
                                     Answer(200, {"choices": []}, pad=5 * 1024 * 1024)],
                         ids=["429", "500", "slow", "dripping", "oversized"])
def test_a_failing_provider_falls_back_to_the_next(tmp_path: Path, failure: Answer) -> None:
    """429, 500, an answer slower than the provider's timeout, one dripped byte by byte past it (each byte in
    time for the read timeout) and one over the size cap each move on to the next provider."""
    def script(path: str, body: dict[str, Any], headers: dict[str, str]) -> Answer:
        return failure if path.endswith("/chat/completions") else anthropic_text("fallback answered")

    with model_server(script) as server:
        agent = Agent("ops-1", "devops", ("gpt", "claude"))
        e = Env(tmp_path, team([gpt(server, timeout=1), claude(server)], [agent]))
        row = e.run(Task("triage", "Triage", "devops", prompt="Hello"))
        assert (row["outcome"], row["provider"]) == ("succeeded", "claude")
        assert "provider gpt" in row["error"]


def test_every_provider_failing_is_retried_later(tmp_path: Path) -> None:
    """When the whole chain fails the run is failed and queued again after its backoff."""
    with model_server(lambda p, b, h: Answer(500, {})) as server:
        e = Env(tmp_path, team([gpt(server)], [Agent("ops-1", "devops", ("gpt",))]))
        row = e.run(Task("t", "T", "devops", prompt="hi"), retries=2, backoff=60)
        assert row["outcome"] == "failed" and "HTTP 500" in row["error"]
        assert [r["state"] for r in e.queue.rows()] == [READY]


def test_budget_thresholds_cut_the_chain(tmp_path: Path) -> None:
    """Under 80 % the preferred provider; from 80 % only cheaper ones; over 100 % only free ones; crossing a
    threshold is an event and calls the webhook once."""
    calls: list[tuple[str, dict[str, Any]]] = []
    used: list[str] = []

    def script(path: str, body: dict[str, Any], headers: dict[str, str]) -> Answer:
        used.append(body["model"])
        return openai_text("ok", 1000, 0)          # 1,000 input tokens: costs the price per 1,000

    with model_server(script) as server:
        def at(pid: str, price: float) -> Provider:
            return Provider(pid, "openai", base_url=server.url + "/v1", model=pid, price_in=price)
        providers = [at("big", 4.0), at("small", 1.0), at("free", 0.0)]
        agent = Agent("ops-1", "devops", ("big", "small", "free"))
        e = Env(tmp_path, team(providers, [agent], [Budget("devops", monthly=10.0, webhook="http://hook")]),
                webhook=lambda url, body: calls.append((url, body)))
        task = Task("t", "T", "devops", prompt="hi", lock=False)
        for _ in range(2):
            e.run(task)                            # 4 + 4 = 8: 80 % reached
        assert used == ["big", "big"]
        e.run(task)                                # cheaper only: small (1) -> 9
        e.run(task)                                # small -> 10: 100 %
        e.run(task)                                # free only
        assert used == ["big", "big", "small", "small", "free"]
        assert [c[1]["threshold"] for c in calls] == [80, 100]
        assert sum(1 for k, _ in e.events if k == "budget_threshold") == 2


def test_a_blocking_budget_refuses_when_spent(tmp_path: Path) -> None:
    """`over = 'block` with the cap spent: the run is blocked, not sent to any provider."""
    with model_server(lambda p, b, h: openai_text("x")) as server:
        e = Env(tmp_path, team([gpt(server)], [Agent("ops-1", "devops", ("gpt",))],
                               [Budget("devops", monthly=0.0, over="block")]))
        row = e.run(Task("t", "T", "devops", prompt="hi"))
        assert row["outcome"] == "blocked" and "blocked" in row["error"]
        assert server.requests == []


def test_a_prompt_template_error_is_in_the_record(env: Env) -> None:
    """An undefined name in the template fails the run with the template's message; no retry."""
    env.runner.team = team([LOCAL, Provider("m", "openai", base_url="http://127.0.0.1:9/v1", model="x")],
                           [Agent("ops-1", "devops", ("m",))])
    row = env.run(Task("bad", "Bad", "devops", prompt="{{ nothing.here }}"), retries=3)
    assert row["outcome"] == "failed" and "prompt template" in row["error"] and "nothing" in row["error"]
    assert [r["state"] for r in env.queue.rows()] == [DEAD]


def test_a_run_waits_while_every_agent_is_busy(env: Env) -> None:
    """When every agent of the role is at its cap the run goes back to the queue without spending an attempt
    and without an execution record (it failed as dead-lettered before: seen in the incident pipeline)."""
    env.runner._running["ops-1"] = 1             # ops-1 (max_concurrency 1) is busy with another run
    mid = env.queue.enqueue("devops", Task("t", "T", "devops", command=("true",)).spec())
    env.worker.run_once()
    assert env.queue.state(mid) == READY
    assert env.store.query("SELECT count(*) FROM executions")[0][0] == 0
    env.runner._running["ops-1"] = 0
    env.queue.store.execute("UPDATE queue SET available_at = 0")
    env.worker.drain()
    assert env.queue.state(mid) == DONE
