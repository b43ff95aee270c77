"""Tools an LLM agent may call: Stratum's own capabilities, each authorized per call and audited.

    knowledge.search {query}   runbooks, decisions and notes matching the query (knowledge search)
    knowledge.get {id}         one knowledge node
    plan.read {}               the kernel's plan of the watched branch, read-only (`stratum plan`)
    vault.read {reference}     a secret's value through the secrets port, only where the repository's Cedar
                               policies (agents/policies/*.cedar, policy.py) allow the role

A call is allowed when the agent declares the tool AND the host's `authorize(role, tool, arguments)` agrees
(vault.read is refused unless the host wires a policy that allows it). Every call, allowed or not, is written
to the `tool_calls` table with the reason; never the arguments' secret values or results. A refused call
answers the model `error: ...`; the runner removes every value a vault.read returned from the run's record.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from reconcilers.agents.llm import ToolCall, ToolSpec
from reconcilers.agents.store import Store

MAX_RESULT = 4000

SPECS = {
    "knowledge.search": ToolSpec("knowledge_search", "Search runbooks, decisions and notes.",
                                 {"type": "object", "properties": {"query": {"type": "string"}},
                                  "required": ["query"]}),
    "knowledge.get": ToolSpec("knowledge_get", "Read one knowledge node by id.",
                              {"type": "object", "properties": {"id": {"type": "string"}}, "required": ["id"]}),
    "plan.read": ToolSpec("plan_read", "The current plan of the ops repository (read-only)."),
    "vault.read": ToolSpec("vault_read", "Read a secret by reference (only where policy allows the role).",
                           {"type": "object", "properties": {"reference": {"type": "string"}},
                            "required": ["reference"]}),
}
BY_FUNCTION = {spec.name: tool for tool, spec in SPECS.items()}
SECRET_TOOLS = ("vault.read",)          # tools whose answers are secret values (scrubbed from records)


def _deny_vault(role: str, tool: str, args: Mapping[str, Any]) -> bool:
    """The default policy: every declared tool but vault.read, which needs a host policy."""
    return tool != "vault.read"


@dataclass(frozen=True, slots=True)
class ToolHost:
    """The handlers of the tools (each answers text) and the host's authorization."""

    handlers: Mapping[str, Callable[[Mapping[str, Any]], str]] = field(default_factory=dict)
    authorize: Callable[[str, str, Mapping[str, Any]], bool] = _deny_vault

    def specs(self, declared: tuple[str, ...]) -> list[ToolSpec]:
        """What to offer a model: the agent's declared tools this host can answer."""
        return [SPECS[t] for t in declared if t in SPECS and t in self.handlers]

    def call(self, store: Store | None, execution: str, agent: str, role: str, declared: tuple[str, ...],
             call: ToolCall) -> str:
        """Run one tool call if allowed; the text for the model either way; audited."""
        tool = BY_FUNCTION.get(call.name, call.name)
        if tool not in declared:
            allowed, reason = False, f"agent {agent} does not declare the tool {tool}"
        elif tool not in self.handlers:
            allowed, reason = False, f"this host does not provide {tool}"
        elif not self.authorize(role, tool, call.arguments):
            allowed, reason = False, f"policy does not allow the {role} role to call {tool}"
        else:
            allowed, reason = True, "allowed"
        if store is not None:
            store.execute("INSERT INTO tool_calls VALUES (?, ?, ?, ?, ?, ?, ?)",
                          [execution, agent, role, tool, allowed, reason, time.time()])
        if not allowed:
            return f"error: {reason}"
        try:
            return str(self.handlers[tool](call.arguments))[:MAX_RESULT]
        except Exception as err:  # noqa: BLE001 a failing tool is an answer to the model, not a crash of the run
            return f"error: {tool} failed: {type(err).__name__}: {err}"[:MAX_RESULT]
