"""Assignment: which agent of a role takes a task (the Vapora rule), as pure functions of their inputs.

    score      = 0.3 x (1 - load) + 0.5 x expertise + 0.2 x confidence
    load       = running / max_concurrency (0..1)
    confidence = min(1, executions / 20)
    expertise  = the weighted success-and-quality rate of the agent on this task type over its last 100
                 records: a record scores `quality` (0..1) when it succeeded and 0 when it failed, weighted
                 3 x e^(-days/7) inside the last 7 days and e^(-days/7) after
An agent at its concurrency cap is not eligible. When no eligible agent has any history for the task type the
least-loaded one wins (ties by id), so a new team spreads work before it has learnt anything. Every decision
carries each candidate's parts, which `stratum agent profile` shows.
"""

from __future__ import annotations

import math
import operator
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

W_LOAD, W_EXPERTISE, W_CONFIDENCE = 0.3, 0.5, 0.2
WINDOW = 100                 # records per (agent, task type) that count
RECENT_DAYS = 7.0
RECENT_BOOST = 3.0
CONFIDENT_AT = 20            # executions for full confidence
DAY = 86_400.0
_FINISHED = operator.attrgetter("finished")


@dataclass(frozen=True, slots=True)
class Record:
    """One finished execution: who, which task type, when it finished, whether it succeeded, how well."""

    agent: str
    task_type: str
    finished: float                           # unix seconds
    succeeded: bool
    quality: float = 1.0                      # 0..1, from a review; 1 when nobody graded it


@dataclass(frozen=True, slots=True)
class Candidate:
    """An agent of the task's role, with its current load."""

    agent: str
    running: int = 0
    max_concurrency: int = 1

    @property
    def load(self) -> float:
        """The share of its concurrency in use, 0..1."""
        return min(1.0, max(0.0, self.running / max(1, self.max_concurrency)))

    @property
    def full(self) -> bool:
        """At its concurrency cap: not eligible."""
        return self.running >= max(1, self.max_concurrency)


@dataclass(frozen=True, slots=True)
class Score:
    """One candidate's parts and total."""

    agent: str
    load: float
    expertise: float
    confidence: float
    executions: int
    total: float
    eligible: bool = True


@dataclass(frozen=True, slots=True)
class Decision:
    """The winner (None when every candidate is at its cap), the rule that chose it, and every score."""

    winner: str | None
    rule: str                                 # "score" | "least-loaded" | "none-free" | "no-agents"
    scores: tuple[Score, ...]

    def explain(self) -> str:
        """One line per candidate, the winner first: why it won."""
        rows = sorted(self.scores, key=lambda s: (s.agent != self.winner, -s.total, s.agent))
        head = f"winner: {self.winner or 'none'} (by {self.rule})"
        return "\n".join([head] + [
            f"  {s.agent}: total {s.total:.3f} = 0.3 x (1 - load {s.load:.2f}) + 0.5 x expertise "
            f"{s.expertise:.3f} + 0.2 x confidence {s.confidence:.2f} ({s.executions} executions)"
            + ("" if s.eligible else " [at its concurrency cap]") for s in rows])


def weight(age_days: float) -> float:
    """A record's weight by its age: 3 x e^(-days/7) inside the last 7 days, e^(-days/7) after."""
    age = max(0.0, age_days)
    w = math.exp(-age / RECENT_DAYS)
    return RECENT_BOOST * w if age < RECENT_DAYS else w


def expertise(records: Sequence[Record], now: float) -> float:
    """The weighted success-and-quality rate of `records` (one agent, one type; the newest WINDOW count)."""
    # The sums do not depend on order: sort only to find the newest WINDOW, and only when there are more.
    recent = records if len(records) <= WINDOW else sorted(records, key=_FINISHED, reverse=True)[:WINDOW]
    total = value = 0.0
    exp = math.exp
    for r in recent:
        # weight() inlined (same arithmetic): this loop runs for every record of every candidate per decision.
        age = (now - r.finished) / DAY
        if age < 0.0:
            age = 0.0
        w = exp(-age / RECENT_DAYS)
        if age < RECENT_DAYS:
            w *= RECENT_BOOST
        total += w
        if r.succeeded:
            q = r.quality
            value += w * (1.0 if q > 1.0 else q if q > 0.0 else 0.0)
    return value / total if total > 0 else 0.0


def score(candidate: Candidate, records: Sequence[Record], now: float) -> Score:
    """A candidate's score for a task type, from its records of that type."""
    executions = min(len(records), WINDOW)
    exp = expertise(records, now)
    conf = min(1.0, executions / CONFIDENT_AT)
    load = candidate.load
    total = W_LOAD * (1.0 - load) + W_EXPERTISE * exp + W_CONFIDENCE * conf
    return Score(candidate.agent, load, exp, conf, executions, total, not candidate.full)


def choose(candidates: Sequence[Candidate], history: Mapping[str, Sequence[Record]], now: float) -> Decision:
    """The agent that takes the task. `history` maps agent id -> its records of this task type."""
    if not candidates:
        return Decision(None, "no-agents", ())
    scores = tuple(score(c, history.get(c.agent, ()), now) for c in candidates)
    eligible = [s for s in scores if s.eligible]
    if not eligible:
        return Decision(None, "none-free", scores)
    if all(s.executions == 0 for s in eligible):
        best = min(eligible, key=lambda s: (s.load, s.agent))
        return Decision(best.agent, "least-loaded", scores)
    # Ties on the score go to the less loaded agent, then the smaller id: a decision is reproducible.
    best = min(eligible, key=lambda s: (-s.total, s.load, s.agent))
    return Decision(best.agent, "score", scores)


def by_agent(records: Iterable[Record], task_type: str) -> dict[str, list[Record]]:
    """Records of one task type grouped per agent (what `choose` takes)."""
    out: dict[str, list[Record]] = {}
    for r in records:
        if r.task_type == task_type:
            out.setdefault(r.agent, []).append(r)
    return out
