"""The reconciler contract: the base class every part of the repo implements, and what the daemon hands it.

A reconciler turns its part of a commit into desired state (`load`, pure), checks it (`validate`), reads the
target (`observe`, read-only I/O through the ports in `ReconcilerEnv`), diffs (`plan`, pure) and changes the
target (`apply`, the only side effects; it raises the error classes of reconcilers/errors.py). Actions from
all reconcilers form one dependency graph (daemon/run/plan.py).

Every hook the daemon calls is declared on `Reconciler` with a default, so the kernel calls hooks directly
and never probes a reconciler with getattr (tests/test_architecture.py checks). A reconciler overrides what
it needs; `load`, `observe`, `plan` and `apply` it must write.
"""

from __future__ import annotations

import abc
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Generic, TypeVar

from reconcilers.ports import (
    Evaluator,
    EventRecorder,
    GitWriter,
    HttpMount,
    Revisions,
    Scheduler,
    SecretsPort,
    Snapshot,
    Tables,
    Workspace,
)
from reconcilers.records import (
    Action,
    ActionKind,
    ApplyContext,
    InventoryItem,
    Outcome,
    PolicyResource,
    Problem,
    RunRecord,
    freeze,
)

__all__ = [
    "Action",
    "ActionKind",
    "AnyReconciler",
    "ApplyContext",
    "InventoryItem",
    "Outcome",
    "PolicyResource",
    "Problem",
    "Reconciler",
    "ReconcilerEnv",
    "ResourceRow",
    "RunRecord",
    "freeze",
]

Desired = TypeVar("Desired")
Observed = TypeVar("Observed")
# (reconciler, resource id, kind, path, spec hash) per desired resource: the index's resources table
ResourceRow = tuple[str, str, str, str, str]


@dataclass(frozen=True, slots=True)
class ReconcilerEnv:
    """What the daemon hands a reconciler when it builds one: host settings, where it may keep state, and the
    ports it may use (None where the caller has none: a CLI command that only validates has no scheduler)."""

    data_dir: Path
    settings: Mapping[str, Any] = field(default_factory=dict)
    repo_settings: Mapping[str, Any] = field(default_factory=dict)
    evaluator: Evaluator | None = None        # the daemon's bounded Nickel worker
    index: Tables | None = None              # the daemon's index: what interfaces serve at start-up (own tables)
    revisions: Revisions | None = None        # read access to other revisions and the staged tree
    events: EventRecorder | None = None       # events recorded under this reconciler's name
    secrets: SecretsPort | None = None        # decrypted values at apply time (the vault reconciler answers)
    scheduler: Scheduler | None = None        # timers, waking the loop
    git_writer: GitWriter | None = None       # commits to side branches as the daemon
    version: str = ""                          # Stratum's version
    workspace: Workspace | None = None        # the repo and index as interfaces outside a run see them (MCP)
    # The kernel's pull-request plan (markdown, as `stratum plan --base B --head H --format markdown` and the PR
    # comments show it) of commit H against B: (B, H) -> markdown; raises StratumError when it cannot be made.
    plans: Callable[[str, str], str] | None = None

    @property
    def source(self) -> Revisions | None:
        """The old name of `revisions` (kept for reconcilers written before the ports)."""
        return self.revisions


class Reconciler(abc.ABC, Generic[Desired, Observed]):
    """The contract (DESIGN.md). `Desired` and `Observed` are each reconciler's own frozen types."""

    name: ClassVar[str]
    # True when `judge` looks at the base revision: callers load the base only for reconcilers that judge.
    judges_base: ClassVar[bool] = False

    # -- load and validate ------------------------------------------------------------------------------
    def configure(self, section: Mapping[str, Any]) -> None:
        """This reconciler's section of the revision's stratum.ncl (checked by its contract), before `load`."""

    def nickel_inputs(self, snap: Snapshot) -> list[tuple[list[str], str | None]]:
        """The Nickel files `load` will evaluate, as (paths, contract) groups, when known before loading: the
        daemon evaluates every reconciler's groups in one Nickel run ahead of the loads (each run costs its
        own start of the standard library and contracts), and `load`'s evaluations then find the values
        cached. Only a hint: a group left out, or one `load` does not ask for, changes nothing but speed."""
        return []

    @abc.abstractmethod
    def load(self, snap: Snapshot) -> Desired:
        """Read this reconciler's part of the commit into desired state. Pure: no I/O but the snapshot."""

    def validate(self, desired: Desired) -> list[Problem]:
        """Contract and cross-reference checks. Any problem rejects the revision."""
        return []

    def empty(self) -> Desired | None:
        """The desired state of a repo without this part (what a rollback to nothing converges to); None when
        there is nothing to converge (the target is not owned)."""
        return None

    # -- admission --------------------------------------------------------------------------------------
    def policy_resources(self, desired: Desired) -> list[PolicyResource]:
        """What change control sees of the desired state (Cedar resources)."""
        return []

    def judge(self, desired: Desired, base: Desired | None, base_name: str = "") -> list[Problem]:
        """Trust checks of `desired` by the base revision's state (never by itself); set `judges_base`."""
        return []

    # -- index ------------------------------------------------------------------------------------------
    def resource_rows(self, desired: Desired) -> list[ResourceRow]:
        """The rows `stratum status` lists for the desired state."""
        return []

    def index(self, desired: Desired, index: Tables, revision: str) -> None:
        """Write this reconciler's own index tables for an admitted revision (a failure is logged, not fatal)."""

    # -- observe and plan -------------------------------------------------------------------------------
    @abc.abstractmethod
    def observe(self, desired: Desired, inventory: list[InventoryItem]) -> Observed:
        """Read the target's current state (read-only)."""

    def observe_changed(self, desired: Desired, inventory: list[InventoryItem]) -> Observed:
        """Like `observe`, reading only resources whose spec changed since applied (runs a commit triggers)."""
        return self.observe(desired, inventory)

    def simulate(self, desired: Desired) -> Observed | None:
        """The observed state as if `desired` were applied, with no target read (pull-request plans); None
        when this reconciler cannot simulate (it is left out of such plans)."""
        return None

    @abc.abstractmethod
    def plan(self, desired: Desired, observed: Observed, inventory: list[InventoryItem]) -> list[Action]:
        """Pure diff: the actions that bring the target from `observed` to `desired`, prune included."""

    def drift(self, desired: Desired, observed: Observed, inventory: list[InventoryItem]) -> list[Problem]:
        """Differences between target and desired state that the plan would correct or report."""
        return []

    def explain(self, desired: Desired, observed: Observed, inventory: list[InventoryItem],
                before: Desired | None) -> Mapping[str, Mapping[str, Any]]:
        """Expected vs found per changed or drifted resource id, for people reading a plan."""
        return {}

    def inventory_items(self, desired: Desired) -> list[InventoryItem] | None:
        """What this reconciler owns once `desired` is applied; None when its inventory follows the outcomes
        of its actions only (the daemon then leaves it alone when a revision becomes good)."""
        return None

    # -- apply ------------------------------------------------------------------------------------------
    @abc.abstractmethod
    def apply(self, action: Action, ctx: ApplyContext) -> Outcome:
        """Carry out one action. Raises ApplyError (or TerminalError / TransientError / WaitingError)."""

    def compensate(self, action: Action, ctx: ApplyContext) -> None:
        """Undo a completed action that declared a compensation (only such actions are compensated)."""
        from reconcilers.errors import TerminalError

        raise TerminalError(f"the {self.name} reconciler declared a compensation for {action.id} but cannot run it",
                            hint="report this bug")

    # -- after a run, interfaces, shutdown ---------------------------------------------------------------
    def on_run_finished(self, record: RunRecord, index: Tables) -> None:
        """A finalized run (off the run's path; a failure is logged, never changes the outcome)."""

    def secrets(self) -> SecretsPort | None:
        """The secrets this reconciler provides to the others (the vault); None for all but one."""
        return None

    def http_mounts(self) -> list[HttpMount]:
        """Interfaces this reconciler serves on the daemon's HTTP listener."""
        return []

    def close(self) -> None:
        """Release workers and caches (the daemon is stopping)."""


# Any reconciler, whatever its desired and observed types: what the daemon holds in its maps.
AnyReconciler = Reconciler[Any, Any]
