"""Load `agents/**/*.ncl` and `tasks/**/*.ncl` from a snapshot into AgentsDesired (pure but for the evaluator).

1. Evaluate every file in one Nickel call with the `agents.ncl` Config contract (structure, types, kinds).
2. Build frozen declarations, each with the file and line of its `id =` field.
3. Refuse an id declared twice across files (both places named).
4. Read `agents/policies/*.cedar` (who may vault.read what; policy.py), bounded like every snapshot read.
Cross-reference and semantic checks (roles, cron, templates, budgets) are validate.py's.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from types import MappingProxyType
from typing import Any, TypeVar

from reconcilers.agents.model import (
    Agent,
    AgentsDesired,
    AgentSettings,
    Budget,
    Check,
    Pipeline,
    Provider,
    Step,
    Task,
    Trigger,
    Where,
)
from reconcilers.agents.policy import FOLDER as POLICY_FOLDER
from reconcilers.agents.policy import MAX_POLICY_BYTES
from reconcilers.errors import StratumError
from reconcilers.ports import Evaluator, Snapshot
from reconcilers.records import Problem

CONTRACT = '(import "agents.ncl").Config'
SECTIONS = ("providers", "agents", "budgets", "tasks", "pipelines", "checks")
FOLDERS = ("agents", "tasks")
_FIELD = re.compile(r'^\s*(?:"([^"\n]+)"|([A-Za-z0-9_][A-Za-z0-9_.\'-]*))\s*=', re.MULTILINE)

T = TypeVar("T")


def field_lines(text: str) -> dict[str, list[int]]:
    """Every line where a `name =` field appears, per name (a name may be a section, an id, a field)."""
    out: dict[str, list[int]] = {}
    line, pos = 1, 0
    for m in _FIELD.finditer(text):
        line += text.count("\n", pos, m.start())
        pos = m.start()
        out.setdefault(m.group(1) or m.group(2), []).append(line)
    return out


def _line(lines: Mapping[str, list[int]], name: str, after: int = 0) -> int:
    """The first line of `name =` at or after line `after` (0 when not found)."""
    return next((n for n in lines.get(name, ()) if n >= after), 0)


def _trigger(raw: Mapping[str, Any]) -> Trigger:
    return Trigger(kind=str(raw.get("kind", "manual")), schedule=str(raw.get("schedule", "")),
                   paths=tuple(raw.get("paths", ())), check=str(raw.get("check", "")))


def _provider(pid: str, raw: Mapping[str, Any], where: Where) -> Provider:
    return Provider(id=pid, kind=str(raw["kind"]), base_url=str(raw.get("base_url", "")),
                    model=str(raw.get("model", "")), api_key=str(raw.get("api_key", "")),
                    price_in=float(raw.get("price_in", 0)), price_out=float(raw.get("price_out", 0)),
                    timeout=float(raw.get("timeout", 60)), max_tokens=int(raw.get("max_tokens", 1024)),
                    where=where)


def _agent(aid: str, raw: Mapping[str, Any], where: Where) -> Agent:
    return Agent(id=aid, role=str(raw["role"]), providers=tuple(raw.get("providers", ())),
                 max_concurrency=int(raw.get("max_concurrency", 1)), tools=tuple(raw.get("tools", ())),
                 where=where)


def _budget(role: str, raw: Mapping[str, Any], where: Where) -> Budget:
    monthly, weekly = raw.get("monthly"), raw.get("weekly")
    return Budget(role=role, monthly=None if monthly is None else float(monthly),
                  weekly=None if weekly is None else float(weekly), over=str(raw.get("over", "fallback")),
                  webhook=str(raw.get("webhook", "")), where=where)


def _task(tid: str, raw: Mapping[str, Any], where: Where, prompt_line: int = 0) -> Task:
    return Task(id=tid, title=str(raw["title"]), role=str(raw["role"]), trigger=_trigger(raw.get("trigger", {})),
                type=str(raw.get("type", "")), prompt=str(raw.get("prompt", "")),
                command=tuple(str(a) for a in raw.get("command", ())), cwd=str(raw.get("cwd", "")),
                env=tuple(raw.get("env", ())), timeout=float(raw.get("timeout", 300)),
                retries=int(raw.get("retries", 0)), backoff=float(raw.get("backoff", 5)),
                idempotency_key=str(raw.get("idempotency_key", "")), lock=bool(raw.get("lock", True)),
                approval=bool(raw.get("approval", False)), max_output=int(raw.get("max_output", 65536)),
                where=where, prompt_line=prompt_line)


def _pipeline(pid: str, raw: Mapping[str, Any], where: Where) -> Pipeline:
    raw_steps = list(raw.get("steps", ()))
    steps: list[Step] = []
    for i, s in enumerate(raw_steps):
        # An ordered pipeline by default: a step that names no `after` follows the step before it; `after = []`
        # makes it a root of a DAG.
        after = tuple(s["after"]) if "after" in s else ((str(raw_steps[i - 1]["id"]),) if i else ())
        steps.append(Step(id=str(s["id"]), task=str(s["task"]), after=after, compensate=str(s.get("compensate", ""))))
    return Pipeline(id=pid, title=str(raw.get("title", "")), trigger=_trigger(raw.get("trigger", {})),
                    steps=tuple(steps), where=where)


def _check(cid: str, raw: Mapping[str, Any], where: Where) -> Check:
    above, below = raw.get("above"), raw.get("below")
    return Check(id=cid, kind=str(raw["kind"]), url=str(raw.get("url", "")), host=str(raw.get("host", "")),
                 port=int(raw.get("port", 0)), command=tuple(str(a) for a in raw.get("command", ())),
                 query=str(raw.get("query", "")), above=None if above is None else float(above),
                 below=None if below is None else float(below), expect_status=int(raw.get("expect_status", 200)),
                 interval=float(raw.get("interval", 60)), timeout=float(raw.get("timeout", 10)),
                 failures=int(raw.get("failures", 3)), recovery=int(raw.get("recovery", 1)), where=where)


def _prompt_line(text: str, lines: Mapping[str, list[int]], after: int) -> int:
    """The line of a task's template's first line: `prompt = "..."` on its own line, or the line after a
    multiline string's opener (`prompt = m%"`, whose first line Nickel drops)."""
    line = _line(lines, "prompt", after)
    if not line:
        return 0
    opener = text.split("\n")[line - 1]
    return line + 1 if re.search(r'm%+"\s*$', opener) else line


BUILDERS: dict[str, Callable[[str, Mapping[str, Any], Where], Any]] = {
    "providers": _provider, "agents": _agent, "budgets": _budget, "tasks": _task, "pipelines": _pipeline,
    "checks": _check,
}


def load_policies(snap: Snapshot) -> tuple[dict[str, str], list[Problem]]:
    """The Cedar policy files of `agents/policies/` (path -> text), and the files that could not be read."""
    found: dict[str, str] = {}
    problems: list[Problem] = []
    for entry in snap.entries(POLICY_FOLDER, suffixes=(".cedar",)):
        try:
            found[entry.path] = snap.text(entry, limit=MAX_POLICY_BYTES)
        except StratumError as err:
            problems.append(Problem(err.what, entry.path, reconciler="agents",
                                    hint=f"policies are UTF-8 Cedar text under {MAX_POLICY_BYTES} bytes"))
    return found, problems


def load_agents(snap: Snapshot, evaluator: Evaluator, settings: AgentSettings | None = None) -> AgentsDesired:
    """The agent declarations of a commit, with every problem found loading them."""
    entries = [e for folder in FOLDERS for e in snap.entries(folder, suffixes=(".ncl",))]
    policies, problems = load_policies(snap)
    if not entries:
        return AgentsDesired(revision=snap.revision, settings=settings or AgentSettings(),
                             problems=tuple(problems), policies=MappingProxyType(policies))
    result = evaluator.evaluate(snap, [e.path for e in entries], CONTRACT, entries)
    problems += [Problem(p.message, p.path, p.line, p.col, "agents", p.hint) for p in result.problems]
    found: dict[str, dict[str, Any]] = {s: {} for s in SECTIONS}
    for path, value in sorted(result.values.items()):
        entry = snap.entry(path)
        text = snap.text(entry) if entry is not None else ""
        lines = field_lines(text)
        for section in SECTIONS:
            start = _line(lines, section)
            for key, raw in sorted((value.get(section) or {}).items()):
                where = Where(path, _line(lines, key, start) or start)
                first = found[section].get(key)
                if first is not None:
                    problems.append(Problem(
                        f"{section[:-1]} {key!r} is declared twice: also in {first.where.path}:{first.where.line}",
                        path, where.line, reconciler="agents", hint=f"{section} ids are unique across agents/ "
                        "and tasks/"))
                    continue
                try:
                    if section == "tasks":
                        found[section][key] = _task(key, raw, where, _prompt_line(text, lines, where.line))
                    else:
                        found[section][key] = BUILDERS[section](key, raw, where)
                except (KeyError, TypeError, ValueError) as err:   # the contract lets nothing like this through
                    problems.append(Problem(f"{section[:-1]} {key!r}: {err}", path, where.line,
                                            reconciler="agents"))
    return AgentsDesired(revision=snap.revision, settings=settings or AgentSettings(),
                         problems=tuple(problems), policies=MappingProxyType(policies),
                         **{s: MappingProxyType(found[s]) for s in SECTIONS})
