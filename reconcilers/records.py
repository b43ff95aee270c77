"""The records that flow through a run, between the daemon and reconcilers: problems, actions, outcomes,
inventory, run records and what change control sees of a resource. Part of the contract (reconcilers/base.py
re-exports them); plain frozen data, no behaviour beyond rendering.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Literal

_MODE_LINK = 0o120000                         # git's file mode of a symbolic link


@dataclass(frozen=True, slots=True)
class FileEntry:
    """One file in a commit: repo-relative POSIX path, blob id, size and git file mode."""

    path: str
    blob_id: str
    size: int
    mode: int

    @property
    def is_symlink(self) -> bool:
        """True for a symlink entry (its blob holds the link target)."""
        return self.mode == _MODE_LINK


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
    return _FREEZE.encode(value)


def _plain(value: Any) -> Any:
    """JSON for what json does not know: read-only mappings as objects, anything else as text."""
    return dict(value) if isinstance(value, Mapping) else str(value)


# json.dumps(value, sort_keys=True, separators=(",", ":"), default=_plain) with its encoder made once, not per
# call (a 5,000-resource load and plan freezes 15,000 values; the encoder keeps no state between calls).
_FREEZE = json.JSONEncoder(sort_keys=True, separators=(",", ":"), default=_plain)


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


@dataclass(frozen=True, slots=True)
class PolicyResource:
    """What a policy sees of one resource; `digest` (the spec hash) tells a change."""

    reconciler: str
    id: str
    kind: str
    path: str = ""
    provider: str = ""
    labels: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))
    digest: str = ""
    source: str = ""
    line: int = 0

    @property
    def uid(self) -> str:
        """The Cedar entity id: "<reconciler>:<id>"."""
        return f"{self.reconciler}:{self.id}"

    def visible(self) -> tuple[Any, ...]:
        """What a policy can see of the resource besides its uid."""
        return self.kind, self.path, self.provider, self.source, tuple(sorted(self.labels.items()))

    def facts(self) -> tuple[Any, ...]:
        """What tells a change: the digest and everything visible (not `line`: moving a declaration is none)."""
        return self.digest, *self.visible()

    def entity(self) -> dict[str, Any]:
        """The Cedar JSON entity."""
        return {"uid": {"type": "Stratum::Resource", "id": self.uid}, "parents": [],
                "attrs": {"kind": self.kind, "path": self.path, "provider": self.provider,
                          "reconciler": self.reconciler, "source": self.source},
                "tags": {str(k): str(v) for k, v in self.labels.items()}}
