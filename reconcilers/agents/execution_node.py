"""`execution` knowledge nodes: one per task execution (`task_node`), and one per pipeline run, the postmortem
skeleton of an incident (`pipeline_node`).

The nodes follow the knowledge contract's `execution` type (nickel/knowledge.ncl): front matter with the run's
id, times, outcome, the tasks it touched as resources and one line per step, then a body a person completes
(summary, timeline, what the agents found, follow-ups). The service hands it to the daemon's git writer, which
commits it to a side branch (`[agents] executions_branch` in stratumd.toml), never the watched branch.
A task's node carries the record's fields and a bounded, already scrubbed output (runner.py removes the values
of the secrets the run read); a secret is never written here.
"""

from __future__ import annotations

import datetime as dt
import uuid
from typing import Any

import yaml

from reconcilers.agents.pipeline import PipelineRun
from reconcilers.agents.runner import Outcome

_NS = uuid.UUID("0b7d8a1e-51f3-4c1e-a3a0-6a1f0f6e2d13")
OUTCOMES = {"succeeded": "succeeded", "failed": "failed", "compensation_failed": "failed",
            "skipped": "succeeded", "blocked": "rejected"}
MAX_OUTPUT = 1500            # characters of a step's output quoted in the body


def iso(ts: float) -> str:
    """A unix time as ISO 8601 UTC."""
    return dt.datetime.fromtimestamp(ts, dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def pipeline_node(run: PipelineRun, run_id: str, revision: str, started: float, finished: float,
                  inputs: dict[str, Any], prefix: str = "executions/agents") -> tuple[str, str]:
    """(path, markdown) of the execution node of a finished pipeline run."""
    front: dict[str, Any] = {
        "id": str(uuid.uuid5(_NS, run_id)), "type": "execution",
        "title": f"Pipeline {run.pipeline} {run.outcome}", "created": iso(finished), "modified": iso(finished),
        "tags": ["execution", "agents", run.outcome], "status": "active", "run_id": run_id,
        "revision": revision or "unknown", "started": iso(started), "finished": iso(finished),
        "outcome": OUTCOMES.get(run.outcome, "failed"),
        "resources": sorted({f"agents:task:{s.task}" for s in run.steps + run.compensations}),
        "actions": [f"{s.step} {s.task} {s.state}" for s in run.steps]
        + [f"compensate {c.step} {c.task} {c.state}" for c in run.compensations],
    }
    trigger = ", ".join(f"{k}={v}" for k, v in sorted(inputs.items()) if isinstance(v, str | int | float))[:500]
    lines = [f"# {front['title']}", "", "## Summary", "", f"Triggered by {trigger or 'hand'}; outcome "
             f"**{run.outcome}**. _What happened, in two sentences (to complete)._", "", "## Timeline", ""]
    lines += [f"- {s.step}: task `{s.task}` {s.state}" + (f" ({s.error[:200]})" if s.error else "") for s in run.steps]
    lines += [f"- compensation of {c.step}: task `{c.task}` {c.state}" for c in run.compensations]
    lines += ["", "## What the agents found", ""]
    for s in run.steps:
        if s.output.strip():
            lines += [f"### {s.step}", "", "```text", s.output.strip()[:MAX_OUTPUT], "```", ""]
    lines += ["## Follow-ups", "", "- [ ] Root cause (to complete)", "- [ ] Action items (to complete)", ""]
    header = yaml.safe_dump(front, sort_keys=False, allow_unicode=True, width=110).strip()
    day = iso(finished)[:10]
    return f"{prefix}/{day}-{run.pipeline}-{run_id[:12]}.md", f"---\n{header}\n---\n\n" + "\n".join(lines)


def task_node(out: Outcome, revision: str, slot: int, prefix: str = "executions/agents") -> tuple[str, str]:
    """(path, markdown) of the execution node of one recorded task execution. The path is the task's slot
    `slot` (the writer rotates slots, so the tree keeps a bounded number of nodes per task)."""
    finished = out.finished or out.started
    front: dict[str, Any] = {
        "id": str(uuid.uuid5(_NS, out.id)), "type": "execution",
        "title": f"Task {out.task} {out.outcome}", "created": iso(finished), "modified": iso(finished),
        "tags": ["execution", "agents", "task", out.outcome], "status": "active", "run_id": out.id,
        "revision": revision or "unknown", "started": iso(out.started), "finished": iso(finished),
        "outcome": OUTCOMES.get(out.outcome, "failed"),
        "resources": [f"agents:task:{out.task}"] + ([f"agents:agent:{out.agent}"] if out.agent else []),
        "actions": [f"{out.trigger or 'manual'} {out.task} {out.outcome}"],
    }
    record = [("trigger", out.trigger or "manual"), ("role", out.role), ("agent", out.agent or "-"),
              ("provider", out.provider or "-"), ("attempt", str(out.attempt)),
              ("tokens", f"{out.tokens_in} in, {out.tokens_out} out"), ("cost", f"{out.cost:.6f}"),
              ("duration", f"{max(0.0, finished - out.started):.2f} s"), ("outcome", out.outcome),
              ("queue run", out.message)]
    lines = [f"# {front['title']}", "", "## Record", ""]
    lines += [f"- {name}: {value}" for name, value in record]
    lines += ["", "## Summary", "", out.summary.strip()[:500] or "-", ""]
    if out.error.strip():
        lines += ["## Error", "", "```text", out.error.strip()[:MAX_OUTPUT], "```", ""]
    if out.output.strip():
        lines += ["## Output", "", "```text", out.output.strip()[-MAX_OUTPUT:], "```", ""]
    header = yaml.safe_dump(front, sort_keys=False, allow_unicode=True, width=110).strip()
    return f"{prefix}/tasks/{out.task}/{slot:03d}.md", f"---\n{header}\n---\n\n" + "\n".join(lines)
