"""An `execution` knowledge node for a pipeline run: the postmortem skeleton of an incident.

The node follows the knowledge contract's `execution` type (nickel/knowledge.ncl): front matter with the run's
id, times, outcome, the tasks it touched as resources and one line per step, then a body a person completes
(summary, timeline, what the agents found, follow-ups). The service hands it to the daemon's git writer, which
commits it to a side branch (`[agents] executions_branch` in stratumd.toml), never the watched branch.
"""

from __future__ import annotations

import datetime as dt
import uuid
from typing import Any

import yaml

from reconcilers.agents.pipeline import PipelineRun

_NS = uuid.UUID("0b7d8a1e-51f3-4c1e-a3a0-6a1f0f6e2d13")
OUTCOMES = {"succeeded": "succeeded", "failed": "failed", "compensation_failed": "failed"}
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
