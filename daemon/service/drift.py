"""The periodic drift check: compare the host with the last applied revision, report what is new, and correct
what the policy says to correct (unless applying is blocked)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from daemon.run.report import drift_to_list
from daemon.run.runtime import Runtime


class DriftCheck:
    """Drift reports of one daemon; events only for drift not already reported at the last check."""

    def __init__(self, logger: Any) -> None:
        self.logger = logger
        self._last: set[str] = set()

    @staticmethod
    def report(rt: Runtime) -> list[dict[str, Any]]:
        """Drift of the last applied revision, as problem dicts."""
        rev = rt.index.get_state("last_applied_revision")
        return drift_to_list(rt.pipeline.plan(rev)) if rev else []

    def check(self, rt: Runtime, blocked: Callable[[], str]) -> None:
        """One check: metrics, events for new drift, and a correcting run when the policy asks for one."""
        found = self.report(rt)
        rt.pipeline.metrics.drift.set(len(found))
        keys = {f"{p['path']}:{p['message']}" for p in found}
        for p in found:
            if f"{p['path']}:{p['message']}" not in self._last:
                rt.index.event("drift", p["message"], reconciler=p["reconciler"], subject=p["path"])
        self._last = keys
        if not found:
            return
        self.logger.info("drift", resources=len(found))
        rev = rt.index.get_state("last_applied_revision")
        if rev and any("policy correct" in p["message"] for p in found):
            why = blocked()
            if why:
                self.logger.info("drift_correction_deferred", reason=why)
            else:
                rt.pipeline.run(rev, trigger="drift")
