"""The secret rules (secrets/rules.ncl) of a repository on disk, for `stratum secret`: the kernel opens the
repository and a bounded Nickel evaluator through the VerbHost port (in a throwaway state directory: a git driver
or a pre-commit hook leaves nothing behind), and `load_snapshot` reads the rules exactly as the daemon reads a
commit's."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pygit2

from reconcilers.errors import SourceError
from reconcilers.vault.errors import RulesError
from reconcilers.vault.rules import RULES_PATH, Rules, load_snapshot

if TYPE_CHECKING:
    from reconcilers.ports import Revisions, Snapshot, VerbHost


def _options(root: Path, tmp: str) -> dict[str, Any]:
    # No branch is watched here (only the staged tree and named revisions are read): none is assumed either.
    return {"repo": str(root), "data_dir": tmp, "branch": "HEAD"}


def _staged_or_head(revisions: Revisions) -> Snapshot | None:
    """The tree the next commit would carry ($GIT_INDEX_FILE when a hook runs under `git commit -a`), HEAD's in
    a bare repository or while the index holds unmerged entries (mid-merge); None in an empty repository."""
    try:
        return revisions.staged_snapshot()
    except (SourceError, pygit2.GitError):
        pass
    try:
        return revisions.snapshot("HEAD")
    except SourceError:
        return None


def load_repo(host: VerbHost, root: Path, rules_path: str = RULES_PATH) -> Rules | None:
    """The rules the next commit would carry (the index; HEAD in a bare repo), evaluated exactly as the daemon
    evaluates a commit's; None without a rules file; RulesError naming the file and line when they are bad."""
    with tempfile.TemporaryDirectory(prefix="stratum-rules-") as tmp, host.open("vault", _options(root, tmp)) as env:
        snap = _staged_or_head(env.revisions)
        if snap is None:
            return None
        rules, problems = load_snapshot(snap, env.evaluator, rules_path)
    if problems:
        first = problems[0]
        raise RulesError(
            first.message,
            where=f"{first.path or rules_path}:{first.line}" if first.line else first.path or rules_path,
            hint=first.hint or "fix the rules file (see nickel/vault.ncl for the contract) and `git add` it",
        )
    return rules


def load_revision(host: VerbHost, root: Path, rev: str = "HEAD", rules_path: str = RULES_PATH) -> Rules | None:
    """The rules of a commit (None when it has none, or the revision does not exist yet); bad rules there are
    None too: they could not have trusted anyone."""
    with tempfile.TemporaryDirectory(prefix="stratum-rules-") as tmp, host.open("vault", _options(root, tmp)) as env:
        try:
            snap = env.revisions.snapshot(rev)
        except SourceError:
            return None
        rules, problems = load_snapshot(snap, env.evaluator, rules_path)
    return None if problems else rules
