"""The secret rules (secrets/rules.ncl) of a repository on disk, for `stratum secret`: the kernel opens the
repository and a bounded Nickel evaluator, and the vault reconciler's `load_snapshot` reads the rules exactly as the
daemon reads a commit's."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pygit2

from daemon.errors import SourceError
from daemon.git.source import GitSource, Snapshot
from daemon.nickel.evaluator import Evaluator
from reconcilers.vault.errors import RulesError
from reconcilers.vault.rules import RULES_PATH, Rules, load_snapshot, staged_index


def _repo_snapshot(root: Path, data_dir: Path) -> Snapshot | None:
    # No branch is watched here (only the staged tree and HEAD are read): no branch name is assumed either.
    source = GitSource(str(root), "HEAD", data_dir)
    if not source.repo.is_bare:
        try:
            if os.environ.get("GIT_INDEX_FILE"):
                tree = source.repo[staged_index(source.repo).write_tree(source.repo)]
                assert isinstance(tree, pygit2.Tree)
                return Snapshot(source.repo, None, tree)
            return source.staged_snapshot()
        except pygit2.GitError:  # an index with unmerged entries (mid-merge) has no tree: use HEAD's rules
            pass
    if source.repo.head_is_unborn:
        return None
    return source.snapshot("HEAD")


def load_repo(root: Path, rules_path: str = RULES_PATH) -> Rules | None:
    """The rules the next commit would carry (the index; HEAD in a bare repo), evaluated exactly as the daemon
    evaluates a commit's; None without a rules file; RulesError naming the file and line when they are bad."""
    with tempfile.TemporaryDirectory(prefix="stratum-rules-") as tmp:
        snap = _repo_snapshot(root, Path(tmp))
        if snap is None:
            return None
        evaluator = Evaluator(Path(tmp) / "nickel")
        try:
            rules, problems = load_snapshot(snap, evaluator, rules_path)
        finally:
            evaluator.close()
    if problems:
        first = problems[0]
        raise RulesError(
            first.message,
            where=f"{first.path or rules_path}:{first.line}" if first.line else first.path or rules_path,
            hint=first.hint or "fix the rules file (see nickel/vault.ncl for the contract) and `git add` it",
        )
    return rules


def load_revision(root: Path, rev: str = "HEAD", rules_path: str = RULES_PATH) -> Rules | None:
    """The rules of a commit (None when it has none, or the revision does not exist yet); bad rules there are
    None too: they could not have trusted anyone."""
    with tempfile.TemporaryDirectory(prefix="stratum-rules-") as tmp:
        try:
            snap = GitSource(str(root), "HEAD", Path(tmp)).snapshot(rev)   # an explicit revision: no branch
        except SourceError:
            return None
        evaluator = Evaluator(Path(tmp) / "nickel")
        try:
            rules, problems = load_snapshot(snap, evaluator, rules_path)
        finally:
            evaluator.close()
    return None if problems else rules
