"""The reconciler contract every part of the repo implements, and the records that flow through a run.

A reconciler turns its part of a commit into desired state (`load`, pure), checks it (`validate`), reads the
target (`observe`, read-only I/O through injected adapters), diffs (`plan`, pure) and changes the target
(`apply`, the only side effects). Actions from all reconcilers form one dependency graph (daemon/run/plan.py).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, Protocol, runtime_checkable

if TYPE_CHECKING:
    from daemon.git.source import Snapshot

ActionKind = Literal["create", "update", "delete", "run"]


@dataclass(frozen=True, slots=True)
class Problem:
    """One located problem in the repo content: rendered as `path:line:col: message`."""

    message: str
    path: str = ""
    line: int = 0
    col: int = 0
    reconciler: str = ""
    hint: str = ""

    def __str__(self) -> str:
        where = self.path
        if where and self.line:
            where += f":{self.line}"
            if self.col:
                where += f":{self.col}"
        text = f"{where}: {self.message}" if where else self.message
        return f"{text} (hint: {self.hint})" if self.hint else text

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        return {"path": self.path, "line": self.line, "col": self.col, "message": self.message,
                "reconciler": self.reconciler, "hint": self.hint}


def freeze(value: Any) -> str:
    """Canonical JSON of a JSON-like value: the frozen, hashable form of an action's change payload."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), default=_plain)


def _plain(value: Any) -> Any:
    """JSON for what json does not know: read-only mappings as objects, anything else as text."""
    return dict(value) if isinstance(value, Mapping) else str(value)


@dataclass(frozen=True, slots=True)
class Action:
    """One change to one target. `change` and `compensation` are canonical JSON (see `freeze`)."""

    id: str                                   # globally unique: "<reconciler>:<resource id>"
    reconciler: str
    kind: ActionKind
    target: str                               # the resource id within its reconciler
    summary: str                              # one human line: "create file etc/motd (0644)"
    change: str = "{}"                        # what apply needs, canonical JSON
    depends_on: tuple[str, ...] = ()          # ids of actions that must complete first
    compensation: str | None = None           # JSON the reconciler understands, when the action can be undone

    def payload(self) -> dict[str, Any]:
        """The decoded change."""
        return dict(json.loads(self.change))


@dataclass(frozen=True, slots=True)
class Outcome:
    """What applying one action did. `inventory` is the resource's new inventory entry (None = removed)."""

    action_id: str
    ok: bool
    message: str = ""
    inventory: Mapping[str, Any] | None = None
    removed: bool = False


@dataclass(frozen=True, slots=True)
class ApplyContext:
    """What an apply step may use: the run and revision it belongs to, and whether it is a dry run."""

    run_id: str
    revision: str
    dry_run: bool = False


@dataclass(frozen=True, slots=True)
class InventoryItem:
    """A resource Stratum created and therefore owns (what prune may delete)."""

    reconciler: str
    resource_id: str
    kind: str
    data: str = "{}"                          # canonical JSON: what the reconciler needs to remove it


@dataclass(frozen=True, slots=True)
class ReconcilerEnv:
    """What the daemon hands a reconciler when it builds one: host settings and where it may keep state."""

    data_dir: Path
    settings: Mapping[str, Any] = field(default_factory=dict)
    repo_settings: Mapping[str, Any] = field(default_factory=dict)
    evaluator: Any = None                     # the shared daemon.nickel.evaluator.Evaluator, when the daemon made one
    index: Any = None                         # the daemon's daemon.index.store.Index: what interfaces serve at start-up
    source: Any = None                        # the daemon's daemon.git.source.GitSource (read access to revisions)


@runtime_checkable
class Reconciler(Protocol):
    """The contract (DESIGN.md). `Desired` and `Observed` are each reconciler's own frozen types."""

    name: str

    def load(self, snap: Snapshot) -> Any:
        """Read this reconciler's part of the commit into desired state. Pure: no I/O but the snapshot."""

    def validate(self, desired: Any) -> list[Problem]:
        """Contract and cross-reference checks. Any problem rejects the revision."""

    def observe(self, desired: Any, inventory: list[InventoryItem]) -> Any:
        """Read the target's current state (read-only)."""

    def plan(self, desired: Any, observed: Any, inventory: list[InventoryItem]) -> list[Action]:
        """Pure diff: the actions that bring the target from `observed` to `desired`, prune included."""

    def apply(self, action: Action, ctx: ApplyContext) -> Outcome:
        """Carry out one action. Raises ApplyError on failure."""

    def compensate(self, action: Action, ctx: ApplyContext) -> None:
        """Undo a completed action that declared a compensation."""

    def drift(self, desired: Any, observed: Any) -> list[Problem]:
        """Differences between target and desired state that the plan would correct or report."""


@dataclass(frozen=True, slots=True)
class RunRecord:
    """A finalized run, handed to reconcilers that record it (the knowledge graph's execution nodes)."""

    run_id: str
    revision: str
    status: str                               # succeeded | failed | rolled_back | rejected
    started: float                            # unix seconds
    finished: float
    actions: tuple[tuple[str, str, str], ...] = ()   # (action id, kind, status)
    resources: tuple[str, ...] = ()           # "infra:web-1", ... touched by the run
    message: str = ""
