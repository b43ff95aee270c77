"""Creation rules and trusted signers, written in Nickel in the repo (`secrets/rules.ncl`).

The contract `(import "vault.ncl").Rules` checks the shape; this module checks each key's checksum, compiles
the regexes, and answers: which policy does a path get, is this signer trusted, which recipients are required.
One way in, `load_snapshot`, for the daemon (a commit) and the CLI (`load_repo`: the git index, what
`git commit` would record, or HEAD in a bare repo): the same Evaluator, imports confined to the snapshot, in
the same bounded Nickel worker process. The work tree is never read, so an unstaged edit of the rules does not
count until it is staged (`unstaged_rules` lets the CLI say so).
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from reconcilers.base import Problem
from reconcilers.vault.envelope import Policy
from reconcilers.vault.errors import KeyFormatError, RulesError, VaultError
from reconcilers.vault.keys import Recipient, Signer

if TYPE_CHECKING:
    import pygit2

    from reconcilers.ports import Evaluator, Snapshot

RULES_PATH = "secrets/rules.ncl"
CONTRACT = '(import "vault.ncl").Rules'


@dataclass(frozen=True, slots=True)
class Rule:
    """One creation rule: a path regex and the policy it gives."""

    path_regex: str
    policy: Policy


@dataclass(frozen=True, slots=True)
class Rules:
    """The repo's creation rules and trusted signers."""

    rules: tuple[Rule, ...] = ()
    signers: tuple[tuple[str, Signer], ...] = ()
    source: str = RULES_PATH

    def policy_for(self, path: str) -> Policy:
        """The policy of the first rule matching the repo-relative `path`; RulesError when none does."""
        for rule in self.rules:
            if re.search(rule.path_regex, path):
                return rule.policy
        raise RulesError(
            "no creation rule matches this path",
            where=f"{self.source} (for {path})",
            hint="add a rule whose path_regex matches it, or pass --recipient",
        )

    def trusted(self, signer: Signer) -> str | None:
        """The name of `signer` among the trusted signers, or None."""
        for name, known in self.signers:
            if known.fingerprint == signer.fingerprint:
                return name
        return None


def from_value(value: Any, source: str = RULES_PATH) -> Rules:
    """Rules from the contract-checked JSON value; RulesError naming the rule and field when a key is bad."""
    if not isinstance(value, dict):
        raise RulesError("rules must be a record", where=source)

    def recipient(text: str, at: str) -> Recipient:
        try:
            return Recipient.parse(text)
        except KeyFormatError as err:
            raise RulesError(f"{at}: {err.what}", where=source, hint=err.hint or "copy the recipient again") from err

    rules: list[Rule] = []
    for i, raw in enumerate(value.get("creation_rules", [])):
        at = f"creation_rules[{i}]"
        try:
            re.compile(raw.get("path_regex", ""))
        except re.error as err:
            raise RulesError(f"{at}.path_regex is not a valid regular expression: {err}", where=source) from err
        groups = [
            [recipient(t, f"{at}.key_groups[{g}][{j}]") for j, t in enumerate(group)]
            for g, group in enumerate(raw.get("key_groups", []))
        ]
        if raw.get("recipients"):
            groups.insert(0, [recipient(t, f"{at}.recipients[{j}]") for j, t in enumerate(raw["recipients"])])
        groups = [g for g in groups if g]
        threshold = int(raw.get("shamir_threshold", 1))
        if not groups:
            raise RulesError(f"{at} names no recipients", where=source, hint="add recipients or key_groups")
        if threshold > len(groups):
            raise RulesError(f"{at}.shamir_threshold {threshold} exceeds its {len(groups)} key group(s)", where=source)
        rules.append(Rule(raw.get("path_regex", ""), Policy(tuple(tuple(g) for g in groups), threshold)))
    signers: list[tuple[str, Signer]] = []
    for i, raw in enumerate(value.get("trusted_signers", [])):
        try:
            signers.append((str(raw["name"]), Signer.parse(raw["key"])))
        except KeyFormatError as err:
            raise RulesError(
                f"trusted_signers[{i}] ({raw.get('name')}): {err.what}",
                where=source,
                hint="copy the signer key again from `stratum secret keygen`",
            ) from err
    return Rules(tuple(rules), tuple(signers), source)


def load_snapshot(
    snap: Snapshot, evaluator: Evaluator, rules_path: str = RULES_PATH
) -> tuple[Rules | None, list[Problem]]:
    """The rules of a snapshot (None when it has no rules file), and the problems evaluating them."""
    if snap.entry(rules_path) is None:
        return None, []
    result = evaluator.evaluate(snap, [rules_path], CONTRACT)
    problems = list(result.problems)
    rules: Rules | None = None
    if rules_path in result.values:
        try:
            rules = from_value(result.values[rules_path], rules_path)
        except VaultError as err:
            problems.append(Problem(err.what, path=rules_path, reconciler="vault", hint=err.hint))
    return rules, problems


def staged_index(repo: pygit2.Repository) -> pygit2.Index:
    """The index `git commit` is about to record: $GIT_INDEX_FILE when git set it (the hooks of `git commit -a`
    and `git commit PATHS` run against a temporary index, which libgit2 does not look at), else the repo's."""
    import pygit2

    env = os.environ.get("GIT_INDEX_FILE")
    if env and not repo.is_bare:
        path = Path(env) if Path(env).is_absolute() else Path(repo.workdir) / env
        return pygit2.Index(str(path))
    index: pygit2.Index = repo.index
    return index


def unstaged_rules(root: Path, rules_path: str = RULES_PATH) -> bool:
    """True when the work tree's rules file differs from the staged one (the CLI warns: it uses the staged)."""
    import pygit2

    file = root / rules_path
    try:
        repo = pygit2.Repository(str(root))
        if repo.is_bare:
            return False
        try:
            staged: str | None = str(staged_index(repo)[rules_path].id)
        except KeyError:  # not staged at all
            staged = None
        on_disk = str(pygit2.hash(file.read_bytes())) if file.is_file() else None
    except (OSError, pygit2.GitError):
        return False
    return on_disk != staged
