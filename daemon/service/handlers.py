"""The control socket's operations (`stratum status`, `apply`, `plan`, ...), answered by a running daemon.

Reads answer on the socket's threads; anything that runs the pipeline or writes the index is submitted to the
loop thread (the index has a single writer) and waited for.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from typing import Any, Protocol

from daemon.git.watch import Wakeup
from daemon.index.read_models import events, runs
from daemon.run.report import plan_to_dict, run_to_dict
from daemon.run.runtime import Runtime
from daemon.service.commits import Commits
from daemon.settings import Settings, effective

Handler = Callable[[dict[str, Any]], dict[str, Any]]


class Host(Protocol):
    """What the handlers use of the daemon."""

    settings: Settings
    commits: Commits
    wake: Wakeup

    @property
    def rt(self) -> Runtime: ...

    def submit(self, fn: Callable[[], Any], timeout: float = 3600) -> Any: ...

    def refuse_manual(self) -> None: ...

    def set_suspended(self, on: bool, reason: str, by: str) -> dict[str, Any]: ...

    def status(self) -> dict[str, Any]: ...

    def drift_report(self) -> list[dict[str, Any]]: ...

    def gate_dict(self) -> dict[str, Any]: ...


def control_handlers(d: Host) -> dict[str, Handler]:
    """Operation name -> handler, for the control socket."""

    def apply(req: dict[str, Any]) -> dict[str, Any]:
        rev = req.get("revision") or d.settings.branch

        def job() -> Any:
            # Checked when the run starts (on the loop), not when queued: a run in flight may outlast a window.
            if not req.get("force"):
                d.refuse_manual()
            result = d.rt.pipeline.run(rev, trigger=req.get("trigger", "cli"))
            d.commits.ran(result.revision, result.status)
            return result
        return {"run": run_to_dict(d.submit(job))}

    def plan(req: dict[str, Any]) -> dict[str, Any]:
        rev = req.get("revision") or d.settings.branch
        return {"plan": plan_to_dict(d.submit(lambda: d.rt.pipeline.plan(rev)))}

    def notify(req: dict[str, Any]) -> dict[str, Any]:
        d.wake.ring(str(req.get("reason", "hook")))
        return {}

    def suspend(req: dict[str, Any]) -> dict[str, Any]:
        return dict(d.submit(lambda: d.set_suspended(True, str(req.get("reason") or ""), str(req.get("by") or ""))))

    def resume(req: dict[str, Any]) -> dict[str, Any]:
        return dict(d.submit(lambda: d.set_suspended(False, "", str(req.get("by") or ""))))

    return {
        "ping": lambda req: {"pid": os.getpid()},
        "notify": notify,
        "status": lambda req: {"status": d.status()},
        "log": lambda req: {"runs": runs(d.rt.index, int(req.get("limit", 20)), bool(req.get("actions")))},
        "events": lambda req: {"events": events(d.rt.index, int(req.get("limit", 50)))},
        "apply": apply,
        "rollback": lambda req: apply({**req, "trigger": "rollback"}),
        "plan": plan,
        "drift": lambda req: {"drift": d.submit(d.drift_report)},
        "suspend": suspend,
        "resume": resume,
        "windows": lambda req: {"gate": d.gate_dict()},
        "settings": lambda req: {"settings": effective(d.settings)},
        # Which modules this process has imported: shows (and tests check) that an idle daemon keeps the
        # interfaces nobody queried unloaded. Names only; the socket is the daemon owner's (0600).
        "modules": lambda req: {"modules": sorted(sys.modules)},
    }
