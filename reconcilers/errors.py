"""The errors a Stratum user can see, and the three classes a reconciler's apply raises (part of the contract,
so reconcilers raise them without importing the daemon; daemon/errors.py re-exports every one).

    StratumError                  what, where, what to do; maps to exit code 1 (2 for usage)
     +-- InputError               the repo content is wrong: stalls the revision, no retry
     |    +-- NickelError         Nickel syntax or contract errors (carries Problems with file:line:col)
     |    +-- PathEscapeError     a path leaves the allowed root (../, absolute, symlink out)
     |    +-- CycleError          a dependency cycle between actions (names the cycle)
     +-- SourceError              the git source cannot be opened, fetched or resolved
     +-- IndexError_             the DuckDB index is corrupt or locked
     +-- LockError                another process applies right now
     +-- ApplyError               an action failed on the target (no retry: the run rolls back)
     |    +-- TerminalError       the revision is wrong for the target: reject, stall until a new commit
     |    +-- TransientError      the target failed or timed out: retried with capped backoff, then rolled back
     |    +-- WaitingError        a dependency is not ready yet: requeued after `after` seconds, not a failure
     +-- SettingsError            host settings are wrong

Like Flux's terminal vs requeue errors: the executor (daemon/run/plan.py) reads the class, never the message.
"""

from __future__ import annotations


class StratumError(Exception):
    """Base of every user-facing error: `what` went wrong, `where` (file:line, resource id), `hint` (what to do)."""

    exit_code = 1

    def __init__(self, what: str, *, where: str = "", hint: str = "") -> None:
        self.what = what
        self.where = where
        self.hint = hint
        super().__init__(self.render())

    def render(self) -> str:
        """One readable message: `where: what (hint)`."""
        text = f"{self.where}: {self.what}" if self.where else self.what
        return f"{text}\n  hint: {self.hint}" if self.hint else text


class InputError(StratumError):
    """The repository content is invalid; the revision is rejected and not retried."""


class NickelError(InputError):
    """Nickel evaluation failed; `problems` holds every located error."""

    def __init__(self, what: str, *, where: str = "", hint: str = "", problems: tuple[object, ...] = ()) -> None:
        self.problems = problems
        super().__init__(what, where=where, hint=hint)


class PathEscapeError(InputError):
    """A path would leave the root it must stay in."""


class CycleError(InputError):
    """Actions depend on each other in a cycle."""


class SourceError(StratumError):
    """The git source cannot be opened, fetched or read."""


class IndexError_(StratumError):
    """The DuckDB index cannot be opened or is corrupt."""


class LockError(StratumError):
    """Another Stratum process holds the apply lock."""


class ApplyError(StratumError):
    """An action failed against its target."""


class SettingsError(StratumError):
    """Host settings (stratumd.toml, flags, environment) are invalid."""


class TerminalError(ApplyError):
    """The revision itself is wrong for the target (a bad value the target refuses): no retry, the run rolls
    back and the revision stalls until a new commit."""


class TransientError(ApplyError):
    """The target failed or timed out in a way that may pass: the action is retried with capped exponential
    backoff and jitter, then the run rolls back. `after` (seconds) is the target's own hint, when it gave one."""

    def __init__(self, what: str, *, where: str = "", hint: str = "", after: float | None = None) -> None:
        self.after = after
        super().__init__(what, where=where, hint=hint)


class WaitingError(ApplyError):
    """A dependency is not ready yet (a volume still attaching, a DNS record not propagated): the action is
    requeued after `after` seconds; waiting is not a failure until the executor's waiting budget is spent.

    `defer`: the dependency comes only by an act outside the run (a person enables or unseals the vault), so
    waiting within the run is pointless. A reconciler that can leave its target as it was ends the action at
    once as a waiting outcome (ok=False, the run goes on and succeeds); whoever owns the dependency asks for a
    run when it is ready (Scheduler.rerun). Elsewhere it is requeued like any WaitingError."""

    def __init__(self, what: str, *, where: str = "", hint: str = "", after: float = 5.0,
                 defer: bool = False) -> None:
        self.after = after
        self.defer = defer
        super().__init__(what, where=where, hint=hint)
