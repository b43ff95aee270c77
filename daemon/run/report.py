"""Render runs and plans for people (text, markdown for pull-request comments) and machines (JSON)."""

from __future__ import annotations

import hashlib
import json
from collections import defaultdict
from dataclasses import asdict
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:                      # types only: rendering a daemon's answer needs no pipeline
    from daemon.run.pipeline import PlanReport, RunResult

MAX_COMMENT = 65_000
MAX_DETAILS = 30_000                          # characters of diffs in one pull-request comment
_VERBS = {"create": "+", "update": "~", "delete": "-", "run": ">"}
# json.dumps(found, sort_keys=True, default=str), with one encoder for every resource instead of a new one each
# (a third of a 5,000-action plan's fingerprint); the same text, so saved plans keep their fingerprints.
_FOUND = json.JSONEncoder(sort_keys=True, default=str)


def run_to_dict(result: RunResult) -> dict[str, Any]:
    """JSON-ready run result."""
    d = asdict(result)
    d["problems"] = [p.as_dict() for p in result.problems]
    d["actions"] = [{"id": a, "status": s} for a, s in result.actions]
    return d


def plan_fingerprint(report: PlanReport) -> str:
    """What a saved plan (`stratum plan -o FILE`) must still match to be applied: every action with its full
    change, and the found side of every resource that differs (the observed state the plan was made from)."""
    parts = [[a.id, a.kind, hashlib.sha256(a.change.encode()).hexdigest(), list(a.depends_on)]
             for a in report.actions]
    found = sorted((k, _FOUND.encode(v.get("found"))) for k, v in report.details.items())
    drift = sorted(p.message for p in report.drift)
    blob = json.dumps([report.revision, parts, found, drift], sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(blob.encode()).hexdigest()


def plan_to_dict(report: PlanReport) -> dict[str, Any]:
    """JSON-ready plan."""
    return {
        "fingerprint": plan_fingerprint(report),
        "revision": report.revision, "base": report.base,
        "actions": [{"id": a.id, "reconciler": a.reconciler, "kind": a.kind, "target": a.target,
                     "summary": a.summary, "depends_on": list(a.depends_on)} for a in report.actions],
        "problems": [p.as_dict() for p in report.problems],
        "drift": [p.as_dict() for p in report.drift],
        "admission": report.admission.as_dict() if report.admission else None,
        "details": {k: dict(v) for k, v in report.details.items()},
    }


def drift_to_list(report: PlanReport) -> list[dict[str, Any]]:
    """The drift of a plan as JSON: each problem with both sides (`resource`, `expected`, `found`, `diff`)."""
    drifted = [d for d in report.details.values() if d.get("nature") == "drift"]
    out = []
    for p in report.drift:
        row = p.as_dict()
        for d in drifted:
            if f" {d['resource']} (" in p.message:
                row |= {k: d[k] for k in ("resource", "kind", "expected", "found", "diff", "sensitive")}
                row["differences"] = list(d.get("differences") or ())
                break
        out.append(row)
    return out


def _detail_for(plan: dict[str, Any], action_id: str) -> dict[str, Any] | None:
    details: dict[str, Any] = plan.get("details") or {}
    return details.get(action_id)


def detail_lines(detail: dict[str, Any] | None) -> list[str]:
    """Expected-vs-found lines and the diff of one resource, for a terminal (unindented)."""
    if not detail:
        return []
    lines = [str(line) for line in detail.get("differences") or ()]
    if detail.get("diff"):
        lines += str(detail["diff"]).splitlines()
    return lines


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
        for a in actions:
            lines.append(f"  {_VERBS.get(a['kind'], '?')} {a['summary']}")
            if a["kind"] != "create":  # a new file's content is in the commit itself (and in --format json)
                lines += [f"      {line}" for line in detail_lines(_detail_for(plan, a["id"]))]
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


def _markdown_detail(action: dict[str, Any], detail: dict[str, Any] | None) -> str:
    """A collapsed block with the resource's differences and diff; one body entry, so a comment split into
    parts never cuts a code fence."""
    if not detail or not (detail.get("diff") or detail.get("found", {}).get("exists")):
        return ""
    diffs = [str(line) for line in detail.get("differences") or ()]
    text = str(detail.get("diff") or "")
    if not diffs and not text:
        return ""
    fence = "````" if "```" in text else "```"
    out = [f"\n<details><summary>{action['summary'].replace('<', '&lt;')}</summary>\n"]
    out += [f"- {line}" for line in diffs]
    if text:
        out += ["", f"{fence}diff", text, fence]
    out.append("</details>")
    return "\n".join(out)


def _tally_lines(plan: dict[str, Any]) -> list[str]:
    """Tables of the `tally` fields of action details, summed by title and key: a reconciler adds up what its
    actions change (the infra reconciler: price per provider) without the report knowing what it is."""
    tables: dict[str, dict[str, dict[str, float]]] = {}
    for detail in (plan.get("details") or {}).values():
        tally = detail.get("tally") if isinstance(detail, dict) else None
        if not isinstance(tally, dict):
            continue
        row = tables.setdefault(str(tally.get("title", "")), {}).setdefault(str(tally.get("key", "")), {})
        for column, value in dict(tally.get("values") or {}).items():
            row[str(column)] = row.get(str(column), 0.0) + float(value)
    lines: list[str] = []
    for title, rows in sorted(tables.items()):
        columns = sorted({c for r in rows.values() for c in r}, key=lambda c: (not c.startswith("per hour"), c))
        lines += [f"\n#### {title}\n", "| | " + " | ".join(columns) + " |", "|---|" + "---|" * len(columns)]
        lines += [f"| {key} | " + " | ".join(f"{r.get(c, 0.0):+.4f}" for c in columns) + " |"
                  for key, r in sorted(rows.items())]
    return lines


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
        blocks = [block for a in actions
                  if a["kind"] != "create" and (block := _markdown_detail(a, _detail_for(plan, a["id"])))]
        shown = 0
        for i, block in enumerate(blocks):
            if shown + len(block) > MAX_DETAILS:  # a comment stays readable: the rest is one `stratum plan` away
                body.append(f"\n_Diffs of {len(blocks) - i} more resource(s) not shown: run `stratum plan`._")
                break
            body.append(block)
            shown += len(block)
    body += _tally_lines(plan)
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
