"""Cross-reference and semantic checks of AgentsDesired, each problem at the declaration's file:line.

Refused at validate (the revision is rejected, the last good schedule stays): an unknown role, a task or
pipeline step for a role with no agent, an unknown provider or tool, a cron expression that never fires or
fires more often than `agents.min_cron_interval`, negative budget caps, a prompt template that does not parse,
a task with neither or both of prompt and command, a pipeline step naming an unknown task or step, a cycle,
a policy file under agents/policies/ that does not parse or fit the agents' Cedar schema (policy.py).
"""

from __future__ import annotations

import graphlib
import itertools
import math
import re
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from reconcilers.agents.model import (
    ROLES,
    TOOLS,
    AgentsDesired,
    Check,
    Pipeline,
    Provider,
    Task,
    Trigger,
    Where,
)
from reconcilers.agents.policy import problems as policy_problems
from reconcilers.records import Problem

if TYPE_CHECKING:
    import jinja2

_SECRET_REF = re.compile(r"^secrets/[^#\s]+\.ya?ml#[A-Za-z0-9_.\-/]+$")
_CRON_SAMPLES = 400          # firings looked at to find the shortest gap (covers a day of per-minute crons)


def _p(message: str, where: Where, hint: str = "") -> Problem:
    return Problem(message, where.path, where.line, reconciler="agents", hint=hint)


def cron_problem(expr: str, minimum: float) -> str:
    """Why `expr` is refused ("" when fine): malformed, never fires, or fires more often than `minimum` s.

    Five fields (minute hour day month weekday), or six with seconds first (as APScheduler's CronTrigger)."""
    fields = expr.split()
    if len(fields) not in (5, 6):
        return f"cron expression {expr!r} has {len(fields)} fields; use 5 (minute hour day month weekday) " \
               "or 6 (second first)"
    from croniter import CroniterBadDateError, CroniterError, croniter  # type: ignore[import-untyped]  # no types

    start = datetime(2024, 1, 1, tzinfo=UTC)
    try:
        it = croniter(expr, start, second_at_beginning=True) if len(fields) == 6 else croniter(expr, start)
        first = it.get_next(float)
        gap = _day_gap(it.expanded, len(fields) == 6, minimum)
        if gap is None:
            times = [first, *(it.get_next(float) for _ in range(_CRON_SAMPLES - 1))]
            gap = min(b - a for a, b in itertools.pairwise(times))
    except CroniterBadDateError:
        return f"cron expression {expr!r} never fires (no such date)"
    except (CroniterError, ValueError, KeyError) as err:
        return f"cron expression {expr!r} is not valid: {err}"
    if gap < minimum:
        return f"cron expression {expr!r} fires every {gap:g} s, more often than the minimum of {minimum:g} s"
    return ""


def _day_gap(expanded: list[list[Any]], seconds: bool, minimum: float) -> float | None:
    """The shortest gap between firings when the fields tell it alone, else None (then firings are sampled).

    In UTC every day that fires at all fires at the same times of day (hours x minutes x seconds, in order),
    so the shortest gap within a day is exact, and a gap across midnight is at least a day less the span
    from the day's first firing to its last. Sampling 400 firings with croniter cost ~30 ms of every
    `stratum validate` per cron trigger; this costs microseconds."""
    def values(index: int, full: int) -> list[int] | None:
        field = expanded[index] if index < len(expanded) else [0]
        got = list(range(full)) if field == ["*"] else sorted(set(field))
        return got if got and all(isinstance(v, int) and not isinstance(v, bool) for v in got) else None

    mins, hours, secs = values(0, 60), values(1, 24), values(5, 60) if seconds else [0]
    if mins is None or hours is None or secs is None:
        return None
    within = min([b - a for a, b in itertools.pairwise(secs)]
                 + [(b - a) * 60 + secs[0] - secs[-1] for a, b in itertools.pairwise(mins)]
                 + [(b - a) * 3600 + (mins[0] - mins[-1]) * 60 + secs[0] - secs[-1]
                    for a, b in itertools.pairwise(hours)], default=math.inf)
    across = 86_400 - ((hours[-1] - hours[0]) * 3600 + (mins[-1] - mins[0]) * 60 + secs[-1] - secs[0])
    if min(within, across) >= minimum:
        return min(within, across)    # every gap is at least this: fine (the figure is not reported)
    if within <= across:
        return within                 # too often, and nothing shorter exists: exact
    return None


def _trigger(owner: str, trigger: Trigger, desired: AgentsDesired, where: Where) -> list[Problem]:
    out: list[Problem] = []
    if trigger.kind == "cron":
        if not trigger.schedule:
            out.append(_p(f"{owner}: a cron trigger needs `schedule`", where, 'schedule = "0 3 * * *"'))
        else:
            why = cron_problem(trigger.schedule, desired.settings.min_cron_interval)
            if why:
                out.append(_p(f"{owner}: {why}", where, "change the schedule, or `agents.min_cron_interval` "
                              "in stratum.ncl"))
    elif trigger.schedule:
        out.append(_p(f"{owner}: `schedule` is only for cron triggers (this one is {trigger.kind})", where))
    if trigger.kind == "on_commit" and not trigger.paths:
        out.append(_p(f"{owner}: an on_commit trigger needs `paths` (globs such as \"infra/**\")", where))
    if trigger.kind == "on_check":
        if not trigger.check:
            out.append(_p(f"{owner}: an on_check trigger needs `check` (a check id)", where))
        elif trigger.check not in desired.checks:
            out.append(_p(f"{owner}: on_check names unknown check {trigger.check!r}", where,
                          f"declared checks: {', '.join(sorted(desired.checks)) or 'none'}"))
    return out


def _role(owner: str, role: str, where: Where) -> list[Problem]:
    if role in ROLES:
        return []
    return [_p(f"{owner}: unknown role {role!r}", where, f"one of: {', '.join(ROLES)}")]


def _task(task: Task, desired: AgentsDesired, env: jinja2.Environment | None) -> list[Problem]:
    owner = f"task {task.id}"
    out = _role(owner, task.role, task.where)
    if task.role in ROLES and not desired.agents_for(task.role):
        out.append(_p(f"{owner}: no agent has the role {task.role!r}", task.where,
                      f"declare an agent with role = \"{task.role}\" under agents/, or change the task's role"))
    if bool(task.prompt) == bool(task.command):
        out.append(_p(f"{owner}: declare exactly one of `prompt` (an LLM task) or `command`", task.where))
    if task.prompt and env is not None:
        import jinja2

        try:
            env.parse(task.prompt)
        except jinja2.TemplateSyntaxError as err:
            line = task.prompt_line + (err.lineno or 1) - 1 if task.prompt_line else task.where.line
            out.append(Problem(f"{owner}: prompt template error: {err.message}", task.where.path, line,
                               reconciler="agents", hint="Jinja2 syntax: {{ value }}, {% if %}...{% endif %}"))
    if task.backoff < 0:
        out.append(_p(f"{owner}: backoff must be at least 0 seconds", task.where))
    if task.cwd.startswith("/") or ".." in task.cwd.split("/"):
        out.append(_p(f"{owner}: cwd {task.cwd!r} must stay inside the agents work directory", task.where))
    return out + _trigger(owner, task.trigger, desired, task.where)


def _provider(p: Provider) -> list[Problem]:
    owner = f"provider {p.id}"
    out: list[Problem] = []
    if p.kind in ("openai", "anthropic"):
        if not p.base_url.startswith(("http://", "https://")):
            out.append(_p(f"{owner}: `base_url` must be an http(s) URL", p.where,
                          "e.g. https://api.openai.com/v1 or http://127.0.0.1:8080/v1"))
        if not p.model:
            out.append(_p(f"{owner}: `model` is required for {p.kind}", p.where))
    if p.api_key and not _SECRET_REF.match(p.api_key):
        # Never echo the value: it may be a real key committed by mistake.
        out.append(_p(f"{owner}: `api_key` must be a secret reference, not a key", p.where,
                      "api_key = \"secrets/llm.yaml#openai_key\"; rotate the key if it was committed"))
    if p.price_in < 0 or p.price_out < 0:
        out.append(_p(f"{owner}: prices must be at least 0", p.where))
    return out


def _check(c: Check) -> list[Problem]:
    need = {"http": ("url",), "prometheus": ("url", "query"), "tcp": ("host", "port"), "command": ("command",)}
    out = [_p(f"check {c.id}: a {c.kind} check needs `{f}`", c.where) for f in need[c.kind] if not getattr(c, f)]
    if c.kind == "prometheus" and c.above is None and c.below is None:
        out.append(_p(f"check {c.id}: a prometheus check needs `above` or `below`", c.where))
    return out


def _pipeline(pl: Pipeline, desired: AgentsDesired) -> list[Problem]:
    owner = f"pipeline {pl.id}"
    out: list[Problem] = []
    ids = [s.id for s in pl.steps]
    if not pl.steps:
        out.append(_p(f"{owner}: has no steps", pl.where))
    for dup in sorted({i for i in ids if ids.count(i) > 1}):
        out.append(_p(f"{owner}: step id {dup!r} is used twice", pl.where))
    sorter: graphlib.TopologicalSorter[str] = graphlib.TopologicalSorter()
    for s in pl.steps:
        for name, what in ((s.task, "task"), (s.compensate, "compensation task")):
            if name and name not in desired.tasks:
                out.append(_p(f"{owner}: step {s.id} names unknown {what} {name!r}", pl.where))
        for dep in s.after:
            if dep not in ids:
                out.append(_p(f"{owner}: step {s.id} waits for unknown step {dep!r}", pl.where))
        sorter.add(s.id, *[d for d in s.after if d in ids])
    try:
        sorter.prepare()
    except graphlib.CycleError as err:
        out.append(_p(f"{owner}: steps form a cycle: {' -> '.join(err.args[1])}", pl.where))
    return out + _trigger(owner, pl.trigger, desired, pl.where)


def validate(desired: AgentsDesired) -> list[Problem]:
    """Every problem of the declarations (load problems first)."""
    out = list(desired.problems)
    env: jinja2.Environment | None = None
    if any(t.prompt for t in desired.tasks.values()):
        # Jinja2 only for a revision with prompt templates: a daemon whose repo has none never imports it.
        from reconcilers.agents.prompts import sandbox

        env = sandbox()
    for p in desired.providers.values():
        out += _provider(p)
    for a in desired.agents.values():
        out += _role(f"agent {a.id}", a.role, a.where)
        if not a.providers:
            out.append(_p(f"agent {a.id}: `providers` is empty", a.where, "name at least one provider"))
        for pid in a.providers:
            if pid not in desired.providers:
                out.append(_p(f"agent {a.id}: unknown provider {pid!r}", a.where,
                              f"declared providers: {', '.join(sorted(desired.providers)) or 'none'}"))
        for tool in a.tools:
            if tool not in TOOLS:
                out.append(_p(f"agent {a.id}: unknown tool {tool!r}", a.where, f"one of: {', '.join(TOOLS)}"))
    for b in desired.budgets.values():
        out += _role(f"budget {b.role}", b.role, b.where)
        for name, cap in (("monthly", b.monthly), ("weekly", b.weekly)):
            if cap is not None and cap < 0:
                out.append(_p(f"budget {b.role}: the {name} cap is negative ({cap:g})", b.where,
                              "a cap is money, at least 0 (0 allows only free providers)"))
    for t in desired.tasks.values():
        out += _task(t, desired, env)
    for c in desired.checks.values():
        out += _check(c)
    for pl in desired.pipelines.values():
        out += _pipeline(pl, desired)
    if desired.policies:
        out += [Problem(f"policy {path}: {message}", path, reconciler="agents",
                        hint="see `agents/policies` in README: principal Agents::Role, action "
                             "Agents::Action::\"vault.read\", resource Agents::Secret")
                for path, message in policy_problems(desired.policies)]
    return out
