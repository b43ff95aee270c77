"""Checks, the monitor role's eyes: HTTP probe, TCP connect, command exit code, Prometheus instant query.

A probe answers (ok, message). `CheckStates.observe` keeps consecutive counts in DuckDB and reports a
transition only when one happens: healthy -> failing after `failures` consecutive failed probes, failing ->
healthy after `recovery` consecutive good ones (what `on_check` triggers fire on). Every probe is bounded by
the check's timeout; a probe never raises.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import httpx

from reconcilers.agents.command import run_command
from reconcilers.agents.model import Check
from reconcilers.agents.store import Store


def probe(check: Check, http: httpx.Client, work: Path) -> tuple[bool, str]:
    """Run one probe: (healthy, what was seen)."""
    try:
        if check.kind == "http":
            r = http.get(check.url, timeout=check.timeout)
            return r.status_code == check.expect_status, f"HTTP {r.status_code}"
        if check.kind == "tcp":
            with socket.create_connection((check.host, check.port), timeout=check.timeout):
                return True, f"connected to {check.host}:{check.port}"
        if check.kind == "command":
            res = run_command(check.command, cwd=work, timeout=check.timeout, max_output=4096)
            return res.ok, res.summary()
        if check.kind == "prometheus":
            return _prometheus(check, http)
    except (OSError, httpx.HTTPError) as err:
        return False, f"{type(err).__name__}: {err}"
    return False, f"unknown check kind {check.kind}"


def _prometheus(check: Check, http: httpx.Client) -> tuple[bool, str]:
    r = http.get(check.url.rstrip("/") + "/api/v1/query", params={"query": check.query}, timeout=check.timeout)
    if r.status_code != 200:
        return False, f"prometheus answered HTTP {r.status_code}"
    try:
        result = r.json()["data"]["result"]
        value = float(result[0]["value"][1])
    except (ValueError, KeyError, IndexError, TypeError):
        return False, "prometheus returned no sample for the query"
    if check.above is not None and value > check.above:
        return False, f"value {value:g} is above {check.above:g}"
    if check.below is not None and value < check.below:
        return False, f"value {value:g} is below {check.below:g}"
    return True, f"value {value:g}"


@dataclass(frozen=True, slots=True)
class State:
    """A check's recorded state."""

    check_id: str
    healthy: bool
    failures: int
    successes: int
    last_at: float
    message: str


class CheckStates:
    """Consecutive counts per check in DuckDB; transitions reported once."""

    def __init__(self, store: Store, clock: Callable[[], float] = time.time) -> None:
        self.store = store
        self.clock = clock

    def get(self, check_id: str) -> State:
        """The recorded state (healthy with no history when never probed)."""
        rows = self.store.query("SELECT check_id, healthy, failures, successes, last_at, message FROM check_state "
                                "WHERE check_id = ?", [check_id])
        if not rows:
            return State(check_id, True, 0, 0, 0.0, "not probed yet")
        r = rows[0]
        return State(str(r[0]), bool(r[1]), int(r[2]), int(r[3]), float(r[4]), str(r[5]))

    def observe(self, check: Check, ok: bool, message: str) -> str:
        """Record one probe; "failing" or "recovered" on a transition, "" otherwise."""
        s = self.get(check.id)
        failures, successes = (0, s.successes + 1) if ok else (s.failures + 1, 0)
        healthy, transition = s.healthy, ""
        if s.healthy and failures >= check.failures:
            healthy, transition = False, "failing"
        elif not s.healthy and successes >= check.recovery:
            healthy, transition = True, "recovered"
        self.store.execute("INSERT OR REPLACE INTO check_state VALUES (?, ?, ?, ?, ?, ?)",
                           [check.id, healthy, failures, successes, self.clock(), message[:500]])
        return transition

    def all(self) -> list[State]:
        """Every recorded check state."""
        return [self.get(str(r[0])) for r in self.store.query("SELECT check_id FROM check_state ORDER BY 1")]
