"""Prometheus metrics of one daemon (its own registry, so tests can run several daemons in a process)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest


class Metrics:
    """Runs by outcome, run durations, the last applied revision, drift found."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.runs = Counter("stratum_runs", "Finalized runs by outcome", ["outcome"], registry=self.registry)
        self.duration = Histogram("stratum_run_duration_seconds", "Run duration", ["outcome"],
                                  buckets=(0.01, 0.05, 0.1, 0.3, 1, 3, 10, 30, 120), registry=self.registry)
        self.last_applied = Gauge("stratum_last_applied_timestamp_seconds", "When a revision was last applied",
                                  registry=self.registry)
        self.revision = Gauge("stratum_last_applied_revision_info", "The last applied revision (value 1)",
                              ["revision"], registry=self.registry)
        self.actions = Counter("stratum_actions", "Applied actions by status", ["reconciler", "status"],
                               registry=self.registry)
        self.drift = Gauge("stratum_drifted_resources", "Resources found drifted at the last check",
                           registry=self.registry)
        self.commits = Counter("stratum_commits_seen", "Commits recorded", registry=self.registry)
        self.retries = Counter("stratum_action_retries", "Actions tried again: after a transient error, or "
                               "requeued while a dependency is not ready", ["reconciler", "reason"],
                               registry=self.registry)

    def record_run(self, outcome: str, seconds: float, revision: str | None) -> None:
        """Count a finalized run."""
        self.runs.labels(outcome).inc()
        self.duration.labels(outcome).observe(seconds)
        if outcome == "succeeded" and revision:
            self.revision.clear()
            self.revision.labels(revision).set(1)
            self.last_applied.set_to_current_time()

    def render(self) -> bytes:
        """The text exposition format."""
        return generate_latest(self.registry)
