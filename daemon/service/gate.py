"""Whether applying may happen now: a suspension (kept in the index) or a sync window (host settings).

The windows' verdict is cached until the next instant it can change: working out when a block ends walks many cron
steps, and the loop asks on every wake.
"""

from __future__ import annotations

from datetime import UTC, datetime

from daemon.control.host_controls import HostControls
from daemon.control.windows import Gate, gate, next_change
from daemon.index.store import Index


class ApplyGate:
    """The windows' verdict for the current host controls, and the suspension flag, as one answer."""

    def __init__(self) -> None:
        self._cache: tuple[HostControls, Gate, datetime | None] | None = None

    def windows(self, controls: HostControls) -> Gate:
        """The windows' verdict now (cached until it can flip, or until the controls are reloaded)."""
        now = datetime.now(UTC)
        cached = self._cache
        if cached is not None and cached[0] is controls and (cached[2] is None or now < cached[2]):
            return cached[1]
        verdict = gate(controls.windows, now)
        flip = next_change(controls.windows, now) if controls.windows else None
        self._cache = (controls, verdict, flip)
        return verdict

    def next_flip(self, controls: HostControls) -> datetime | None:
        """When the windows' verdict may change next (None: no window, or none within reach)."""
        self.windows(controls)
        return self._cache[2] if self._cache else None

    def blocked(self, index: Index, controls: HostControls) -> str:
        """Why applying is blocked now (suspended, a window), or ""."""
        if index.get_state("suspended") == "true":
            reason = index.get_state("suspended_reason") or ""
            return "applying is suspended" + (f" ({reason})" if reason else "") + "; `stratum resume` runs it"
        verdict = self.windows(controls)
        return verdict.reason if verdict.blocked else ""
