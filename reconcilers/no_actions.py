"""A base for reconcilers whose commits change no target: they load, validate and index a part of the repo
(knowledge, agents) but plan no actions, so there is nothing to observe, apply or undo."""

from __future__ import annotations

from typing import TypeVar

from reconcilers.base import Action, ApplyContext, InventoryItem, Outcome, Reconciler
from reconcilers.errors import ApplyError

Desired = TypeVar("Desired")


class NoActions(Reconciler[Desired, None]):
    """observe: nothing; plan: no actions; apply: never called; compensate: nothing to undo."""

    def observe(self, desired: Desired, inventory: list[InventoryItem]) -> None:
        """Nothing to observe: the part's state is derived from git (and indexed by `index`)."""
        return None

    def plan(self, desired: Desired, observed: None, inventory: list[InventoryItem]) -> list[Action]:
        """No actions: a commit changes what is indexed or scheduled, not a target."""
        return []

    def apply(self, action: Action, ctx: ApplyContext) -> Outcome:
        """Never called: `plan` returns no actions."""
        raise ApplyError(f"the {self.name} reconciler has no actions (got {action.id})", where=action.target)

    def compensate(self, action: Action, ctx: ApplyContext) -> None:
        """Nothing to undo."""
        return None
