"""Running one delivered task: idempotency, assignment, the command or LLM runner, budgets, the record.

1. idempotency  a run whose key already acted is acked with the remembered result (a redelivery acts once)
2. lock         a task declared `lock` never runs twice at once in this worker (requeued shortly)
3. assign       the best agent of the role (assign.py) from live load and the last 100 records per type
4. run          a command (command.py) or a prompt through the agent's provider chain cut by the budget
                (budget.py), tool calls authorized and audited (tools.py); a failing provider falls back
5. record       the execution row (tokens, cost, outcome, summary), budget thresholds, metrics; then ack,
                nak (retry with backoff) or term (bad input: no retry); then `recorded` (the service's
                execution node)
Nothing here raises to the worker loop: every failure ends as a recorded execution. The values of secrets a
run read (vault.read) are removed from its output, summary and error before anything is recorded.
"""

from __future__ import annotations

import contextlib
import json
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from reconcilers.agents import budget as budgets
from reconcilers.agents.assign import WINDOW, Candidate, Decision, Record, choose
from reconcilers.agents.command import run_command, workdir
from reconcilers.agents.llm import ProviderError, chat, cost
from reconcilers.agents.metrics import AgentMetrics
from reconcilers.agents.model import Agent, AgentsDesired, Provider
from reconcilers.agents.prompts import Context, PromptError, Renderer, bounded_renderer, render
from reconcilers.agents.queue import Message, Queue
from reconcilers.agents.store import Store
from reconcilers.agents.tools import BY_FUNCTION, SECRET_TOOLS, ToolHost

MAX_TOOL_ROUNDS = 6
LOCK_RETRY = 2.0             # seconds before a locked task is offered again
BUSY_RETRY = 1.0             # seconds before a run no agent was free for is offered again
REDACTED = "[redacted]"
SYSTEM = "You are the {role} agent of an operations team. Answer concisely; use the tools you are given."


@dataclass(frozen=True, slots=True)
class Outcome:
    """What one execution did (the row written to `executions`)."""

    id: str
    message: str
    task: str
    task_type: str
    role: str
    agent: str = ""
    provider: str = ""
    trigger: str = ""
    started: float = 0.0
    finished: float = 0.0
    outcome: str = "failed"           # succeeded | failed | skipped | blocked | waiting (not recorded)
    tokens_in: int = 0
    tokens_out: int = 0
    cost: float = 0.0
    summary: str = ""
    error: str = ""
    attempt: int = 1
    quality: float = 1.0
    retry: bool = False               # the queue should deliver it again (a transient failure)
    output: str = ""
    rule: str = ""                    # how the agent was chosen (assign.py), and why, for `agent profile`
    explain: str = ""


@dataclass
class Runner:
    """Runs delivered tasks for the declarations in force (`team`, replaced on each admitted revision)."""

    store: Store
    queue: Queue
    team: AgentsDesired
    work_root: Path
    http: httpx.Client = field(default_factory=lambda: httpx.Client())
    secrets: Callable[[str], str] | None = None            # resolve an api_key reference (at call time only)
    tools: ToolHost = field(default_factory=ToolHost)
    context: Callable[[Message], Context] = lambda _msg: Context()
    events: Callable[[str, str], None] = lambda kind, message: None
    webhook: Callable[[str, dict[str, Any]], None] | None = None
    recorded: Callable[[Outcome], None] | None = None       # after each recorded execution (execution nodes)
    metrics: AgentMetrics = field(default_factory=AgentMetrics)
    clock: Callable[[], float] = time.time
    host_env: Mapping[str, str] | None = None
    base_env: Mapping[str, str] = field(default_factory=dict)       # STRATUM_DATA_DIR, STRATUM_BIN (the service)
    _running: dict[str, int] = field(default_factory=dict)
    _locked: set[str] = field(default_factory=set)
    _histories: dict[str, dict[str, deque[Record]]] = field(default_factory=dict)
    _templates: Renderer | None = None
    _guard: threading.Lock = field(default_factory=threading.Lock)

    # -- 1..5 ----------------------------------------------------------------------------------------------
    def handle(self, msg: Message) -> Outcome:
        """Run one delivered message to its end and settle it with the queue."""
        spec, now = msg.spec, self.clock()
        base = Outcome(uuid.uuid4().hex, msg.id, msg.task, str(spec.get("type") or msg.task), msg.role,
                       trigger=msg.trigger, started=now, attempt=msg.attempt)
        done = self.queue.done_result(msg.idem_key) if msg.idem_key else None
        if done is not None:
            out = _with(base, outcome="skipped", summary=f"already done under idempotency key {msg.idem_key}",
                        output=done, finished=self.clock())
            self._record(out)
            self.queue.ack(msg, done)
            self._recorded(out)
            return out
        lock = bool(spec.get("lock", True))
        with self._guard:
            if lock and msg.task in self._locked:
                self.queue.release(msg, LOCK_RETRY)
                return _with(base, outcome="skipped", summary="locked: another run is running", retry=True)
            if lock:
                self._locked.add(msg.task)
        try:
            out = self._assigned(msg, base)
        finally:
            with self._guard:
                self._locked.discard(msg.task)
        if out.outcome == "waiting":
            self.queue.release(msg, BUSY_RETRY)
            return out
        # The record and the settlement commit together when the queue shares the agents' file (the DuckDB
        # queue): one commit instead of two per run, and never a settled run without its record.
        shared = getattr(self.queue, "store", None) is self.store
        with self.store.transaction() if shared else contextlib.nullcontext():
            crossed = self._record(out)
            if out.outcome == "succeeded":
                self.queue.ack(msg, out.output[:4000])
            elif out.retry:
                self.queue.nak(msg, out.error or out.summary)
            else:
                self.queue.term(msg, out.error or out.summary)
        self._notify(out.role, crossed)
        self._recorded(out)
        return out

    def _recorded(self, out: Outcome) -> None:
        if self.recorded is None:
            return
        try:
            self.recorded(out)
        except Exception as err:  # noqa: BLE001 the record stands; a failing follower never ends the worker
            self.events("execution_node", f"execution {out.id} of {out.task}: {type(err).__name__}: {err}")

    def _assigned(self, msg: Message, base: Outcome) -> Outcome:
        agents = self.team.agents_for(msg.role)
        decision = self.decide(msg.role, base.task_type, agents)
        # The decision is recorded with the execution (one write per run, not two).
        base = _with(base, rule=decision.rule, explain=decision.explain()[:4000])
        if decision.winner is None:
            why = f"no agent of role {msg.role} is free" if agents else f"no agent has the role {msg.role}"
            # Busy agents are a wait, not a failure: the run goes back without spending an attempt.
            return _with(base, outcome="waiting" if agents else "failed", summary=why, error=why,
                         retry=bool(agents), finished=self.clock())
        agent = self.team.agents[decision.winner]
        with self._guard:
            self._running[agent.id] = self._running.get(agent.id, 0) + 1
        try:
            if msg.spec.get("command"):
                return self._command(msg, _with(base, agent=agent.id), agent)
            return self._llm(msg, _with(base, agent=agent.id), agent)
        except Exception as err:  # noqa: BLE001 a bug in a runner is a failed execution, never a dead worker
            return _with(base, agent=agent.id, summary="internal error", error=f"{type(err).__name__}: {err}",
                         finished=self.clock())
        finally:
            with self._guard:
                self._running[agent.id] -= 1

    def decide(self, role: str, task_type: str, agents: list[Agent]) -> Decision:
        """The assignment decision for a task type among `agents` (live load, the last 100 records of each)."""
        with self._guard:
            cands = [Candidate(a.id, self._running.get(a.id, 0), a.max_concurrency) for a in agents]
        history = self._history(task_type)
        return choose(cands, {a.id: list(history.get(a.id, ())) for a in agents}, self.clock())

    def _history(self, task_type: str) -> dict[str, deque[Record]]:
        """The last WINDOW records per agent of a task type: read from DuckDB once per process, then kept up to
        date in memory as this runner records executions (a decision reads no table)."""
        with self._guard:
            cached = self._histories.get(task_type)
        if cached is not None:
            return cached
        rows = self.store.query(
            "SELECT agent, finished, outcome, quality FROM (SELECT *, row_number() OVER (PARTITION BY agent "
            "ORDER BY finished DESC) AS n FROM executions WHERE task_type = ? AND outcome IN ('succeeded', "
            "'failed')) WHERE n <= ? ORDER BY finished", [task_type, WINDOW])
        found: dict[str, deque[Record]] = {}
        for agent, finished, outcome, quality in rows:
            found.setdefault(agent, deque(maxlen=WINDOW)).append(
                Record(agent, task_type, float(finished), outcome == "succeeded", float(quality or 0)))
        with self._guard:
            return self._histories.setdefault(task_type, found)

    # -- runners -------------------------------------------------------------------------------------------
    def _command(self, msg: Message, base: Outcome, agent: Agent) -> Outcome:
        spec = msg.spec
        provider = next((p for p in agent.providers if p in self.team.providers
                         and self.team.providers[p].kind == "command"), "command")
        try:
            cwd = workdir(self.work_root, str(spec.get("cwd", "")))
        except ValueError as err:
            return _with(base, provider=provider, summary=str(err), error=str(err), finished=self.clock())
        extra = {**self.base_env, "STRATUM_TASK": msg.task, "STRATUM_TRIGGER": msg.trigger, "STRATUM_RUN": msg.id,
                 "STRATUM_ATTEMPT": str(msg.attempt),
                 "STRATUM_INPUTS": json.dumps(spec.get("inputs", {}))[:16000]}
        r = run_command([str(a) for a in spec["command"]], cwd=cwd, timeout=float(spec.get("timeout", 300)),
                        allow_env=[str(e) for e in spec.get("env", ())], extra_env=extra,
                        max_output=int(spec.get("max_output", 65536)), host_env=self.host_env)
        ok = r.ok
        # A program that could not start is a bad declaration (no retry); an exit code may pass next time.
        return _with(base, provider=provider, outcome="succeeded" if ok else "failed", summary=r.summary(),
                     error="" if ok else (r.error or r.stderr.strip()[-500:] or r.summary()),
                     retry=not ok and not r.error, output=r.stdout, finished=self.clock())

    def _llm(self, msg: Message, base: Outcome, agent: Agent) -> Outcome:
        try:
            with self._guard:
                if self._templates is None:
                    self._templates = bounded_renderer()
                templates = self._templates
            prompt = render(str(msg.spec.get("prompt", "")), self.context(msg), templates)
        except PromptError as err:
            return _with(base, summary=str(err), error=str(err), finished=self.clock())
        budget = self.team.budgets.get(msg.role)
        spend = budgets.Spend(self.store, self.clock)
        usage = spend.usage(msg.role)
        providers, why = budgets.chain(agent.providers, self.team.providers, budget, usage)
        models = [p for p in providers if p.kind in ("openai", "anthropic")]
        if why:
            self.events("budget", f"task {msg.task}: {why}")
        if not models:
            reason = why or f"agent {agent.id} has no model provider"
            return _with(base, outcome="blocked" if why else "failed", summary=reason, error=reason,
                         finished=self.clock())
        errors: list[str] = []
        calls = _Calls()
        for provider in models:
            try:
                tokens_in, tokens_out, text = self._converse(msg, base.id, agent, provider, prompt, calls)
            except ProviderError as err:
                errors.append(scrub(str(err), calls.revealed))
                self.metrics.provider_errors.labels(msg.role, provider.id).inc()
                continue
            charged = cost(provider, tokens_in, tokens_out)
            text = scrub(text, calls.revealed)
            out = _with(base, provider=provider.id, outcome="succeeded", tokens_in=tokens_in,
                        tokens_out=tokens_out, cost=charged, summary=(text.strip().splitlines() or [""])[0][:200],
                        output=text, finished=self.clock(),
                        error="; ".join(errors + calls.errors))
            return out
        return _with(base, summary="every provider failed", error="; ".join(errors + calls.errors)[:2000],
                     retry=True, finished=self.clock())

    def _converse(self, msg: Message, execution: str, agent: Agent, provider: Provider,
                  prompt: str, calls: _Calls) -> tuple[int, int, str]:
        key = self.secrets(provider.api_key) if provider.api_key and self.secrets is not None else ""
        specs = self.tools.specs(agent.tools)
        messages: list[dict[str, Any]] = [{"role": "system", "content": SYSTEM.format(role=msg.role)},
                                          {"role": "user", "content": prompt}]
        tokens_in = tokens_out = 0
        for _ in range(MAX_TOOL_ROUNDS):
            reply = chat(self.http, provider, key, messages, specs)
            tokens_in, tokens_out = tokens_in + reply.tokens_in, tokens_out + reply.tokens_out
            if not reply.tool_calls:
                return tokens_in, tokens_out, reply.text
            messages.append({"role": "assistant", "content": reply.text, "tool_calls": [
                {"id": c.id, "type": "function", "function": {"name": c.name, "arguments": json.dumps(c.arguments)}}
                for c in reply.tool_calls]})
            for call in reply.tool_calls:
                answer = self.tools.call(self.store, execution, agent.id, msg.role, agent.tools, call)
                if answer.startswith("error:"):
                    # A refused or failing call is in the execution's record (the model got the same text).
                    calls.errors.append(f"tool {BY_FUNCTION.get(call.name, call.name)}: {answer[6:].strip()}"[:500])
                elif BY_FUNCTION.get(call.name) in SECRET_TOOLS:
                    calls.revealed.add(answer)  # the model needs the value; no record of this run may hold it
                messages.append({"role": "tool", "tool_call_id": call.id, "content": answer})
        raise ProviderError(f"provider {provider.id}: still calling tools after {MAX_TOOL_ROUNDS} rounds",
                            retryable=False)

    def close(self) -> None:
        """Stop the template worker, if one runs."""
        closer = getattr(self._templates, "close", None)
        if closer is not None:
            closer()
        self._templates = None

    # -- the record ----------------------------------------------------------------------------------------
    def _record(self, out: Outcome) -> list[tuple[int, float, float]]:
        """Write the execution row; the budget thresholds it crossed (to notify after the commit)."""
        budget = self.team.budgets.get(out.role)
        spend = budgets.Spend(self.store, self.clock)
        before = spend.usage(out.role) if budget is not None and out.cost else None
        finished = out.finished or self.clock()
        self.store.execute("INSERT INTO executions VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                           [out.id, out.message, out.task, out.task_type, out.role, out.agent, out.provider,
                            out.trigger, out.started, finished, out.outcome, out.tokens_in,
                            out.tokens_out, out.cost, out.summary[:500], out.error[:2000], out.attempt,
                            out.quality, out.rule, out.explain])
        if out.agent and out.outcome in ("succeeded", "failed"):
            with self._guard:
                history = self._histories.get(out.task_type)
                if history is not None:
                    history.setdefault(out.agent, deque(maxlen=WINDOW)).append(
                        Record(out.agent, out.task_type, finished, out.outcome == "succeeded", out.quality))
        self.metrics.observe(out.role, out.provider or "none", out.outcome, out.tokens_in, out.tokens_out, out.cost,
                             max(0.0, (out.finished or out.started) - out.started))
        if budget is not None and before is not None:
            return spend.crossed(budget, before, spend.usage(out.role))
        return []

    def adopt(self, out: Outcome) -> bool:
        """Record an execution another process ran (a remote worker's, through NATS) as if it ran here: the row,
        the assignment history, metrics, budget thresholds and `recorded`. Once per execution id: a copy
        delivered again changes nothing (False)."""
        with self.store.transaction():
            if self.store.query("SELECT 1 FROM executions WHERE id = ?", [out.id]):
                return False
            crossed = self._record(out)
        self._notify(out.role, crossed)
        self._recorded(out)
        return True

    def _notify(self, role: str, crossed: list[tuple[int, float, float]]) -> None:
        """Events and webhooks of crossed budget thresholds (outside any transaction: a webhook may be slow)."""
        budget = self.team.budgets.get(role)
        for threshold, spent, cap in crossed:
            self.events("budget_threshold", f"budget of {role} crossed {threshold} %: {spent:.2f} of {cap:.2f}")
            if budget is not None and budget.webhook and self.webhook is not None:
                self.webhook(budget.webhook, {"role": role, "threshold": threshold, "spent": spent, "cap": cap})


@dataclass
class _Calls:
    """What the tool calls of one execution left: secret values read, refused or failed calls."""

    revealed: set[str] = field(default_factory=set)
    errors: list[str] = field(default_factory=list)


def scrub(text: str, secrets: set[str]) -> str:
    """`text` with every value of `secrets` replaced (longest first, so a value inside another goes too)."""
    for value in sorted((v for v in secrets if v), key=len, reverse=True):
        text = text.replace(value, REDACTED)
    return text


def _with(base: Outcome, **changes: Any) -> Outcome:
    from dataclasses import replace

    return replace(base, **changes)
