"""The errors a Stratum user can see. They are defined in the reconciler contract (reconcilers/errors.py, whose
docstring draws the tree) so reconcilers raise them without importing the daemon; the kernel imports them here."""

from __future__ import annotations

from reconcilers.errors import (
    ApplyError,
    CycleError,
    IndexError_,
    InputError,
    LockError,
    NickelError,
    PathEscapeError,
    SettingsError,
    SourceError,
    StratumError,
    TerminalError,
    TransientError,
    WaitingError,
)

__all__ = ["ApplyError", "CycleError", "IndexError_", "InputError", "LockError", "NickelError", "PathEscapeError",
           "SettingsError", "SourceError", "StratumError", "TerminalError", "TransientError", "WaitingError"]
