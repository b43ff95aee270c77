"""Prometheus metrics of agent tasks per role and provider (their own registry, served at /agents/metrics)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest


class AgentMetrics:
    """Executions, tokens, cost and durations per role and provider; provider errors."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.executions = Counter("stratum_agent_executions", "Task executions by outcome",
                                  ["role", "provider", "outcome"], registry=self.registry)
        self.tokens = Counter("stratum_agent_tokens", "Tokens used", ["role", "provider", "direction"],
                              registry=self.registry)
        self.cost = Counter("stratum_agent_cost", "Money spent (provider prices)", ["role", "provider"],
                            registry=self.registry)
        self.duration = Histogram("stratum_agent_execution_seconds", "Execution duration", ["role", "provider"],
                                  buckets=(0.05, 0.25, 1, 5, 30, 120, 600), registry=self.registry)
        self.provider_errors = Counter("stratum_agent_provider_errors", "Failed provider calls (fallback taken)",
                                       ["role", "provider"], registry=self.registry)

    def observe(self, role: str, provider: str, outcome: str, tokens_in: int, tokens_out: int, cost: float,
                seconds: float) -> None:
        """Count one execution."""
        self.executions.labels(role, provider, outcome).inc()
        if tokens_in or tokens_out:
            self.tokens.labels(role, provider, "in").inc(tokens_in)
            self.tokens.labels(role, provider, "out").inc(tokens_out)
        if cost:
            self.cost.labels(role, provider).inc(cost)
        self.duration.labels(role, provider).observe(seconds)

    def render(self) -> bytes:
        """The text exposition format."""
        return generate_latest(self.registry)
