"""A test reconciler: the infra reconciler, except that `observe` raises while <data_dir>/fail-observe exists.

Registered in a real daemon process in place of `infra` (see tests/daemon/test_recovery.py), so a test can make
a reconciler raise during start-up recovery, which reads the target through `observe` when it rolls back."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from reconcilers.base import InventoryItem, ReconcilerEnv
from reconcilers.infra.reconciler import InfraReconciler


class FailingInfra(InfraReconciler):
    """InfraReconciler whose `observe` raises on demand."""

    def __init__(self, env: ReconcilerEnv) -> None:
        super().__init__(env)
        self.marker = Path(env.data_dir) / "fail-observe"

    def observe(self, desired: Any, inventory: list[InventoryItem]) -> Any:
        """Raise while the marker file exists, else observe as the infra reconciler does."""
        if self.marker.exists():
            raise RuntimeError("injected: observe failed (tests/daemon/failing_reconciler.py)")
        return super().observe(desired, inventory)
