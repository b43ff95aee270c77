"""One loader for the engine declarations under `vault/`: every `<prefix><name>.ncl` of a revision (one level,
no sub-folders), evaluated in one batch under its Nickel contract; the file's name names what it declares (a
PKI mount, a database mount, a group of transit keys). `build(name, path, value)` turns one contract-checked
value into a frozen spec and raises a VaultError (what, where inside the file, hint) for what a contract
cannot check; each such error becomes a Problem located at the file. Nothing here touches the vault."""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any, TypeVar

from reconcilers.base import Problem
from reconcilers.vault.errors import VaultError

if TYPE_CHECKING:
    from reconcilers.ports import Evaluator, Snapshot

T = TypeVar("T")
NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$")     # a file's name: it becomes a mount path


def load_files(evaluator: Evaluator | None, snap: Snapshot, prefix: str, contract: str,
               build: Callable[[str, str, Mapping[str, Any]], T], what: str) -> tuple[dict[str, T], list[Problem]]:
    """{name: spec} of every `<prefix>*.ncl` in `snap`, and the located problems of those that do not load.
    `what` names the kind of file in messages ("PKI mount")."""
    entries = [e for e in snap.entries(prefix, (".ncl",)) if "/" not in e.path[len(prefix):]]
    if not entries:
        return {}, []
    if evaluator is None:
        return {}, [Problem(f"no Nickel evaluator to read the {what} files", path=entries[0].path,
                            reconciler="vault", hint="report this bug: the daemon hands one to every reconciler")]
    result = evaluator.evaluate(snap, [e.path for e in entries], contract, entries)
    problems = list(result.problems)
    specs: dict[str, T] = {}
    for path, value in sorted(result.values.items()):
        name = path[len(prefix):-len(".ncl")]
        if not NAME.match(name):
            problems.append(Problem(f"{what} name {name[:80]!r} (the file's name) is not valid", path=path,
                                    reconciler="vault", hint="name the file with letters, digits, _ and - only "
                                                              "(at most 64)"))
            continue
        try:
            specs[name] = build(name, path, value)
        except VaultError as err:
            # `where` is the place inside the file ("vault/pki/ops.ncl: roles.web"): the message says it.
            inside = err.where.removeprefix(path).lstrip(": ") if err.where else ""
            problems.append(Problem(f"{inside}: {err.what}" if inside else err.what, path=path,
                                    reconciler="vault", hint=err.hint))
    return specs, problems
