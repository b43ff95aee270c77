"""Desired state of agent tasks: providers, agents, budgets, tasks, pipelines and checks of one revision.

Plain frozen data built by load.py from the Nickel values; every declaration keeps the file and line it came
from so a problem found later (validate, a run) points at it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from reconcilers.records import Problem

NAME = "agents"

ROLES = ("architect", "developer", "code-reviewer", "tester", "documenter", "marketer", "presenter",
         "devops", "monitor", "security", "project-manager", "decision-maker")

TRIGGERS = ("cron", "on_commit", "on_drift", "on_run_failed", "on_check", "manual", "webhook")

TOOLS = ("knowledge.search", "knowledge.get", "plan.read", "vault.read")



def _empty() -> Mapping[str, Any]:
    return MappingProxyType({})


@dataclass(frozen=True, slots=True)
class Where:
    """The declaration's file and line."""

    path: str = ""
    line: int = 0


@dataclass(frozen=True, slots=True)
class Provider:
    """An LLM endpoint or the local command runner."""

    id: str
    kind: str                                 # openai | anthropic | command
    base_url: str = ""
    model: str = ""
    api_key: str = ""                         # a secret reference, resolved at run time
    price_in: float = 0.0                     # per 1,000 input tokens
    price_out: float = 0.0
    timeout: float = 60.0
    max_tokens: int = 1024
    where: Where = field(default_factory=Where)

    @property
    def free(self) -> bool:
        """A provider that costs nothing (a local model, the command runner): what is left over budget."""
        return self.price_in == 0 and self.price_out == 0


@dataclass(frozen=True, slots=True)
class Agent:
    """Who does the work: a role, a provider preference chain, a concurrency cap and its tools."""

    id: str
    role: str
    providers: tuple[str, ...] = ()
    max_concurrency: int = 1
    tools: tuple[str, ...] = ()
    where: Where = field(default_factory=Where)


@dataclass(frozen=True, slots=True)
class Budget:
    """Money caps of one role; `over` says what happens past 100 %: free providers only, or block."""

    role: str
    monthly: float | None = None
    weekly: float | None = None
    over: str = "fallback"
    webhook: str = ""
    where: Where = field(default_factory=Where)


@dataclass(frozen=True, slots=True)
class Trigger:
    """When a task or pipeline runs."""

    kind: str = "manual"
    schedule: str = ""
    paths: tuple[str, ...] = ()
    check: str = ""


@dataclass(frozen=True, slots=True)
class Task:
    """One unit of work for a role: a prompt template (LLM) or a command."""

    id: str
    title: str
    role: str
    trigger: Trigger = field(default_factory=Trigger)
    type: str = ""
    prompt: str = ""
    command: tuple[str, ...] = ()
    cwd: str = ""
    env: tuple[str, ...] = ()
    timeout: float = 300.0
    retries: int = 0
    backoff: float = 5.0
    idempotency_key: str = ""
    lock: bool = True
    approval: bool = False
    max_output: int = 65536
    where: Where = field(default_factory=Where)
    prompt_line: int = 0                      # the line of the template's first line (0: unknown)

    @property
    def task_type(self) -> str:
        """What assignment learns from: the declared type, else the task id."""
        return self.type or self.id

    def spec(self) -> dict[str, Any]:
        """What a queued run carries (JSON-ready): enough for a worker with no checkout of the repo."""
        return {"id": self.id, "title": self.title, "role": self.role, "type": self.task_type,
                "prompt": self.prompt, "command": list(self.command), "cwd": self.cwd, "env": list(self.env),
                "timeout": self.timeout, "retries": self.retries, "backoff": self.backoff,
                "idempotency_key": self.idempotency_key, "lock": self.lock, "approval": self.approval,
                "max_output": self.max_output}


@dataclass(frozen=True, slots=True)
class Step:
    """A pipeline step: a task, the steps it waits for, and the task that undoes it."""

    id: str
    task: str
    after: tuple[str, ...] = ()
    compensate: str = ""


@dataclass(frozen=True, slots=True)
class Pipeline:
    """Ordered or DAG steps (a step without `after` follows the previous one)."""

    id: str
    title: str = ""
    trigger: Trigger = field(default_factory=Trigger)
    steps: tuple[Step, ...] = ()
    where: Where = field(default_factory=Where)


@dataclass(frozen=True, slots=True)
class Check:
    """A probe the monitor role runs on an interval."""

    id: str
    kind: str                                 # http | tcp | command | prometheus
    url: str = ""
    host: str = ""
    port: int = 0
    command: tuple[str, ...] = ()
    query: str = ""
    above: float | None = None
    below: float | None = None
    expect_status: int = 200
    interval: float = 60.0
    timeout: float = 10.0
    failures: int = 3
    recovery: int = 1
    where: Where = field(default_factory=Where)


@dataclass(frozen=True, slots=True)
class AgentSettings:
    """The `agents` section of the repo's stratum.ncl."""

    queue: str = "duckdb"
    min_cron_interval: float = 60.0
    retention_days: int = 90
    retention_count: int = 100_000
    visibility: float = 300.0                 # seconds a worker holds a run before it is redelivered

    @classmethod
    def from_mapping(cls, raw: Mapping[str, Any]) -> AgentSettings:
        """Settings from the (contract-checked) section; unknown keys are the contract's business."""
        return cls(queue=str(raw.get("queue", "duckdb")),
                   min_cron_interval=float(raw.get("min_cron_interval", 60)),
                   retention_days=int(raw.get("retention_days", 90)),
                   retention_count=int(raw.get("retention_count", 100_000)),
                   visibility=float(raw.get("visibility", 300)))


@dataclass(frozen=True, slots=True)
class AgentsDesired:
    """Everything declared under agents/ and tasks/ of one revision, with the problems found loading it."""

    revision: str = ""
    providers: Mapping[str, Provider] = field(default_factory=_empty)
    agents: Mapping[str, Agent] = field(default_factory=_empty)
    budgets: Mapping[str, Budget] = field(default_factory=_empty)
    tasks: Mapping[str, Task] = field(default_factory=_empty)
    pipelines: Mapping[str, Pipeline] = field(default_factory=_empty)
    checks: Mapping[str, Check] = field(default_factory=_empty)
    settings: AgentSettings = field(default_factory=AgentSettings)
    problems: tuple[Problem, ...] = ()
    files: Mapping[str, str] = field(default_factory=_empty)     # path -> blob id (only with on_commit triggers)
    policies: Mapping[str, str] = field(default_factory=_empty)  # agents/policies/*.cedar: path -> text (vault.read)

    def agents_for(self, role: str) -> list[Agent]:
        """The agents of `role`, by id."""
        return sorted((a for a in self.agents.values() if a.role == role), key=lambda a: a.id)
