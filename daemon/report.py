"""Render runs and plans for people (text, markdown for pull-request comments) and machines (JSON)."""

from __future__ import annotations

from collections import defaultdict
from dataclasses import asdict
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:                      # types only: rendering a daemon's answer needs no pipeline
    from daemon.pipeline import PlanReport, RunResult

MAX_COMMENT = 65_000
_VERBS = {"create": "+", "update": "~", "delete": "-", "run": ">"}


def run_to_dict(result: RunResult) -> dict[str, Any]:
    """JSON-ready run result."""
    d = asdict(result)
    d["problems"] = [p.as_dict() for p in result.problems]
    d["actions"] = [{"id": a, "status": s} for a, s in result.actions]
    return d


def plan_to_dict(report: PlanReport) -> dict[str, Any]:
    """JSON-ready plan."""
    return {
        "revision": report.revision, "base": report.base,
        "actions": [{"id": a.id, "reconciler": a.reconciler, "kind": a.kind, "target": a.target,
                     "summary": a.summary, "depends_on": list(a.depends_on)} for a in report.actions],
        "problems": [p.as_dict() for p in report.problems],
        "drift": [p.as_dict() for p in report.drift],
        "admission": report.admission.as_dict() if report.admission else None,
    }


def _grouped(plan: dict[str, Any]) -> dict[str, list[dict[str, Any]]]:
    groups: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for a in plan["actions"]:
        groups[a["reconciler"]].append(a)
    return groups


def _problem_line(p: dict[str, Any]) -> str:
    where = p["path"] + (f":{p['line']}" if p.get("line") else "") + (f":{p['col']}" if p.get("col") else "")
    text = f"{where}: {p['message']}" if where else p["message"]
    return text + (f" (hint: {p['hint']})" if p.get("hint") else "")


def plan_text(plan: dict[str, Any]) -> str:
    """A terminal rendering of a plan."""
    lines = [f"Plan for {plan['revision'][:12]}" + (f" (base {plan['base'][:12]})" if plan.get("base") else "")]
    if plan["problems"]:
        lines.append(f"REJECTED: {len(plan['problems'])} problem(s)")
        lines += [f"  {_problem_line(p)}" for p in plan["problems"]]
        return "\n".join(lines + _admission_lines(plan.get("admission"), markdown=False))
    if not plan["actions"]:
        lines.append("No changes.")
    for reconciler, actions in sorted(_grouped(plan).items()):
        counts = _counts(actions)
        lines.append(f"{reconciler}: {counts}")
        lines += [f"  {_VERBS.get(a['kind'], '?')} {a['summary']}" for a in actions]
    if plan["drift"]:
        lines.append(f"drift: {len(plan['drift'])}")
        lines += [f"  ! {_problem_line(p)}" for p in plan["drift"]]
    lines += _admission_lines(plan.get("admission"), markdown=False)
    return "\n".join(lines)


def _signature_line(adm: dict[str, Any]) -> str:
    sig = adm.get("signature")
    if sig is None:
        return "signature: not checked (no [signing] on this host)"
    if sig["valid"]:
        return f"signature: {sig['reason']}"
    return f"signature: {'INVALID' if sig['signed'] else 'unsigned'}: {sig['reason']}"


def _admission_lines(adm: dict[str, Any] | None, markdown: bool) -> list[str]:
    """Who made the revision and what change control decided (denials in full, allowed ones counted)."""
    if not adm:
        return []
    decisions = adm["decisions"]
    denied = [d for d in decisions if not d["allowed"]]
    allowed = [d for d in decisions if d["allowed"]]
    if markdown:
        out = ["\n#### Change control\n", f"- principal: `{adm['principal'] or '-'}`",
               f"- {_signature_line(adm)}",
               f"- policies: {'in force' if adm['control'] == 'on' else 'none (change control off)'}; "
               f"{len(allowed)} change(s) allowed, {len(denied)} denied"]
        if decisions:
            out.append("\n| | change | decision |\n|---|---|---|")
            out += [f"| {'✅' if d['allowed'] else '❌'} | {d['action']} `{d['resource']}` | "
                    f"{d['reason'].replace('|', '/')} |" for d in denied + allowed[:200]]
            if len(allowed) > 200:
                out.append(f"| | … | {len(allowed) - 200} more allowed change(s) |")
        return out
    out = [f"principal: {adm['principal'] or '-'}", _signature_line(adm),
           f"change control: {adm['control']}; {len(allowed)} allowed, {len(denied)} denied"]
    out += [f"  DENIED {d['action']} {d['resource']}: {d['reason']}" for d in denied]
    return out


def _counts(actions: list[dict[str, Any]]) -> str:
    n: dict[str, int] = defaultdict(int)
    for a in actions:
        n[a["kind"]] += 1
    return ", ".join(f"{n[k]} to {v}" for k, v in (("create", "create"), ("update", "change"),
                                                       ("delete", "delete"), ("run", "run")) if n[k])


def plan_markdown(plan: dict[str, Any]) -> list[str]:
    """The pull-request comment; split into numbered parts when over 65,000 characters."""
    head = f"### Stratum plan for `{plan['revision'][:12]}`" + (
        f" against `{plan['base'][:12]}`" if plan.get("base") else "")
    body: list[str] = []
    if plan["problems"]:
        body.append(f"**Rejected**: {len(plan['problems'])} problem(s); nothing would be applied.\n")
        body += [f"- `{_problem_line(p)}`" for p in plan["problems"]]
    elif not plan["actions"]:
        body.append("No changes.")
    for reconciler, actions in sorted(_grouped(plan).items()):
        body.append(f"\n#### {reconciler}: {_counts(actions)}\n")
        body.append("| | action | depends on |\n|---|---|---|")
        body += [f"| {_VERBS.get(a['kind'], '?')} | {a['summary'].replace('|', '/')} | "
                 f"{', '.join(d.split(':', 1)[-1] for d in a['depends_on']) or ''} |" for a in actions]
    if plan["drift"]:
        body.append(f"\n#### Drift found: {len(plan['drift'])}\n")
        body += [f"- {_problem_line(p)}" for p in plan["drift"]]
    body += _admission_lines(plan.get("admission"), markdown=True)
    parts: list[str] = []
    current: list[str] = []
    size = len(head)
    for line in body:
        if size + len(line) + 1 > MAX_COMMENT - 200 and current:
            parts.append("\n".join(current))
            current, size = [], len(head)
        current.append(line)
        size += len(line) + 1
    parts.append("\n".join(current))
    # A hidden marker starts every part, so tools (hooks/plan-comment) split and update parts reliably.
    n = len(parts)
    if n == 1:
        return [f"<!-- stratum-plan part 1/1 -->\n{head}\n\n{parts[0]}\n"]
    return [f"<!-- stratum-plan part {i}/{n} -->\n{head} (part {i}/{n})\n\n{p}\n" for i, p in enumerate(parts, 1)]
