"""Budgets per role: which providers of an agent's chain may be used now, and threshold crossings.

    under 80 % of every cap   the chain as declared (preferred first)
    80 % to 100 %             only providers cheaper than the preferred one, in the chain's order
    over 100 %                only free providers (a local model, a command), or nothing when `over = 'block`
The used share is the larger of month-to-date spend / monthly cap and ISO-week-to-date spend / weekly cap.
A cap of 0 allows free providers only. `chain` is pure; `Spend` reads the spend from the executions table.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

from reconcilers.agents.model import Budget, Provider
from reconcilers.agents.store import Store

WARN, LIMIT = 0.8, 1.0


@dataclass(frozen=True, slots=True)
class Usage:
    """A role's spend this month and this week."""

    month: float = 0.0
    week: float = 0.0


def share(budget: Budget | None, usage: Usage) -> float:
    """The used share of the tightest cap (0 without a budget)."""
    if budget is None:
        return 0.0
    out = 0.0
    for cap, spent in ((budget.monthly, usage.month), (budget.weekly, usage.week)):
        if cap is None:
            continue
        out = max(out, float("inf") if cap == 0 else spent / cap)
    return out


def band(used: float) -> int:
    """0 under 80 %, 80 from 80 % to 100 %, 100 at or over 100 %."""
    return 100 if used >= LIMIT else 80 if used >= WARN else 0


def _price(p: Provider) -> float:
    return p.price_in + p.price_out


def chain(preferred: Sequence[str], providers: Mapping[str, Provider], budget: Budget | None,
          usage: Usage) -> tuple[list[Provider], str]:
    """The providers to try, in order, and why the chain was cut ("" when it was not)."""
    declared = [providers[p] for p in preferred if p in providers]
    used = share(budget, usage)
    level = band(used)
    if level == 0 or budget is None:
        return declared, ""
    if level == 80:
        if not declared:
            return [], ""
        top = _price(declared[0])
        cheaper = [p for p in declared[1:] if _price(p) < top]
        # Nothing cheaper declared: keep going with the preferred one rather than stop below the cap.
        return (cheaper or declared[:1]), f"budget of {budget.role} at {used:.0%}: cheaper providers only"
    if budget.over == "block":
        return [], f"budget of {budget.role} spent ({used:.0%}): blocked"
    return [p for p in declared if p.free], f"budget of {budget.role} spent ({used:.0%}): free providers only"


def period_starts(now: float) -> tuple[float, float]:
    """Unix times of the start of this calendar month and this ISO week (UTC)."""
    day = dt.datetime.fromtimestamp(now, dt.UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    month = day.replace(day=1)
    week = day - dt.timedelta(days=day.weekday())
    return month.timestamp(), week.timestamp()


class Spend:
    """Spend per role from the executions table, and threshold crossings recorded once per period."""

    def __init__(self, store: Store, clock: Callable[[], float]) -> None:
        self.store = store
        self.clock = clock

    def usage(self, role: str) -> Usage:
        """This month's and this week's spend of `role`."""
        month, week = period_starts(self.clock())
        row = self.store.query("SELECT coalesce(sum(cost) FILTER (WHERE finished >= ?), 0), "
                               "coalesce(sum(cost) FILTER (WHERE finished >= ?), 0) FROM executions WHERE role = ?",
                               [month, week, role])
        return Usage(float(row[0][0]), float(row[0][1]))

    def crossed(self, budget: Budget, before: Usage, after: Usage) -> list[tuple[int, float, float]]:
        """The thresholds (80, 100) this spend crossed, each recorded once per month: (threshold, spent, cap)."""
        was, now = band(share(budget, before)), band(share(budget, after))
        if now <= was:
            return []
        month, _ = period_starts(self.clock())
        period = dt.datetime.fromtimestamp(month, dt.UTC).strftime("%Y-%m")
        out: list[tuple[int, float, float]] = []
        for threshold in (80, 100):
            if was < threshold <= now:
                seen = self.store.query("SELECT 1 FROM budget_events WHERE role = ? AND period = ? AND threshold = ?",
                                        [budget.role, period, threshold])
                if not seen:
                    cap = budget.monthly if budget.monthly is not None else budget.weekly or 0.0
                    self.store.execute("INSERT INTO budget_events VALUES (?, ?, ?, ?, ?, ?)",
                                       [budget.role, period, threshold, self.clock(), after.month, cap])
                    out.append((threshold, after.month, cap))
        return out
