"""Pipelines: ordered or DAG steps, each a task for a role, outputs passed forward; on a failed step the
declared compensations of the completed steps run in reverse order (the saga of the apply spine).

1. order      graphlib orders the steps (validate refused cycles); ready steps are queued together
2. run        each step's task is queued with `inputs` = the trigger's inputs + `steps.<id>` outputs of the
              steps before it, and waited for (bounded: the task's timeout x attempts + a margin)
3. settle     all done: succeeded. A step dead, cancelled or past its bound: the completed steps that declare
              `compensate` get their compensation task queued, newest first, each waited for; the pipeline
              is failed (or `compensation_failed` when an undo failed too, which a person must look at)
"""

from __future__ import annotations

import graphlib
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from reconcilers.agents.model import AgentsDesired, Pipeline, Task
from reconcilers.agents.queue import CANCELLED, DEAD, DONE

MARGIN = 30.0                # seconds a step may wait in the queue beyond its own time


class Results(Protocol):
    """What a pipeline needs of a queue: queue a run, and read how it ended."""

    def outcome(self, mid: str) -> tuple[str, str, str] | None:
        """(state, result, last error) of a run, or None when unknown."""
        ...


@dataclass
class StepRun:
    """One step's run: its queue id, state and output."""

    step: str
    task: str
    run: str = ""
    state: str = "pending"
    output: str = ""
    error: str = ""


@dataclass
class PipelineRun:
    """A pipeline's outcome, its steps and compensations in the order they ran."""

    pipeline: str
    outcome: str = "running"                 # succeeded | failed | compensation_failed
    steps: list[StepRun] = field(default_factory=list)
    compensations: list[StepRun] = field(default_factory=list)

    def outputs(self) -> dict[str, str]:
        """Step id -> output of the completed steps."""
        return {s.step: s.output for s in self.steps if s.state == DONE}


# enqueue(task, trigger, inputs) -> run id
Enqueue = Callable[[Task, str, Mapping[str, Any]], str]


def run_pipeline(pl: Pipeline, team: AgentsDesired, enqueue: Enqueue, results: Results,
                 inputs: Mapping[str, Any] | None = None, *, poll: float = 0.05,
                 clock: Callable[[], float] = time.monotonic) -> PipelineRun:
    """Run `pl` to its end (blocking; the service runs it on its own thread)."""
    out = PipelineRun(pl.id)
    base = dict(inputs or {})
    sorter: graphlib.TopologicalSorter[str] = graphlib.TopologicalSorter({s.id: set(s.after) for s in pl.steps})
    sorter.prepare()
    steps = {s.id: s for s in pl.steps}
    failed = False
    while sorter.is_active() and not failed:
        ready = list(sorter.get_ready())
        batch: list[StepRun] = []
        for sid in ready:
            task = team.tasks[steps[sid].task]
            run = StepRun(sid, task.id)
            run.run = enqueue(task, f"pipeline:{pl.id}", {**base, "steps": out.outputs(), "step": sid})
            batch.append(run)
            out.steps.append(run)
        for run in batch:
            _wait(run, team.tasks[run.task], results, poll, clock)
            if run.state == DONE:
                sorter.done(run.step)
            else:
                failed = True
    if not failed:
        out.outcome = "succeeded"
        return out
    out.outcome = "failed"
    for run in reversed([s for s in out.steps if s.state == DONE]):
        undo = steps[run.step].compensate
        if not undo:
            continue
        task = team.tasks[undo]
        comp = StepRun(run.step, task.id)
        comp.run = enqueue(task, f"compensate:{pl.id}", {**base, "steps": out.outputs(), "step": run.step,
                                                        "compensating": run.step})
        out.compensations.append(comp)
        _wait(comp, task, results, poll, clock)
        if comp.state != DONE:
            out.outcome = "compensation_failed"
    return out


def _wait(run: StepRun, task: Task, results: Results, poll: float, clock: Callable[[], float]) -> None:
    """Wait for a step's run to end, bounded by its task's time and attempts."""
    deadline = clock() + task.timeout * (task.retries + 1) + task.backoff * (2 ** task.retries) + MARGIN
    while True:
        found = results.outcome(run.run)
        if found is not None and found[0] in (DONE, DEAD, CANCELLED):
            run.state, run.output, run.error = found
            return
        if clock() >= deadline:
            run.state, run.error = "timed_out", f"step {run.step} did not finish in time"
            return
        time.sleep(poll)
