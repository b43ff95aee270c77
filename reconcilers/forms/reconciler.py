"""The forms reconciler: loads and checks `forms/*.toml` at every revision (so `stratum validate` and the
daemon refuse a broken form), owns nothing on the host, and serves the web backend at /forms/."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from reconcilers.base import (
    Action,
    ApplyContext,
    InventoryItem,
    Outcome,
    Problem,
    Reconciler,
    ReconcilerEnv,
)
from reconcilers.errors import TerminalError
from reconcilers.forms.loader import FormsDesired, load_forms
from reconcilers.ports import HttpMount, Snapshot

__all__ = ["FormsDesired", "FormsReconciler", "load_forms"]

class FormsReconciler(Reconciler[FormsDesired, None]):
    """Forms are checked at every revision; running one happens through `stratum form` or the web backend."""

    name = "forms"

    def __init__(self, env: ReconcilerEnv) -> None:
        self.env = env
        self.settings: Mapping[str, Any] = dict(env.settings.get("forms", {}))

    def load(self, snap: Snapshot) -> FormsDesired:
        """The forms of the commit."""
        return load_forms(snap)

    def validate(self, desired: FormsDesired) -> list[Problem]:
        """Every problem of every form file (shape, conditions, cycles, defaults)."""
        return list(desired.problems)

    def observe(self, desired: FormsDesired, inventory: list[InventoryItem]) -> None:
        """Forms own nothing on the host."""
        return None

    def plan(self, desired: FormsDesired, observed: None, inventory: list[InventoryItem]) -> list[Action]:
        """Nothing to apply: a form's output is a branch for review, never an action."""
        return []

    def apply(self, action: Action, ctx: ApplyContext) -> Outcome:
        """Never called (no actions)."""
        raise TerminalError("the forms reconciler has no actions", hint="report this bug")

    def http_mounts(self) -> list[HttpMount]:
        """/forms/: the web backend, built on the first request."""
        return [HttpMount("/forms", self._web_app)]

    def _web_app(self) -> Any:
        from reconcilers.forms.web import web_app

        return web_app(self.env)
