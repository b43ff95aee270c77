"""Creation rules and trusted signers, written in Nickel in the repo (`secrets/rules.ncl`).

The contract `(import "vault.ncl").Rules` checks the shape; this module checks each key's checksum, compiles
the regexes, and answers: which policy does a path get, is this signer trusted, which recipients are required.
Two ways in: from a commit through the daemon's Evaluator, or from a work tree (CLI, pre-commit) through the
same bounded Nickel worker process.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from daemon.resources import nickel_dir
from reconcilers.vault.envelope import Policy
from reconcilers.vault.errors import KeyFormatError, RulesError
from reconcilers.vault.keys import Recipient, Signer

RULES_PATH = "secrets/rules.ncl"
CONTRACT = '(import "vault.ncl").Rules'
_ANSI = re.compile(r"\x1b\[[0-9;]*m")


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


def load_worktree(repo_root: Path, rules_path: str = RULES_PATH, timeout: float = 10.0) -> Rules | None:
    """Evaluate the work tree's rules file (None when it does not exist) in the bounded Nickel worker."""
    file = repo_root / rules_path
    if not file.is_file():
        return None
    src = f"(import {json.dumps(str(file.resolve()))}) | {CONTRACT}"
    request = json.dumps({"src": src, "paths": [str(file.resolve().parent), str(nickel_dir())]}) + "\n"
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(Path(__file__).resolve().parents[2]), os.environ.get("PYTHONPATH", "")]),
    }
    try:
        proc = subprocess.run(
            [sys.executable, "-m", "daemon.nickel_worker", "1024"],
            input=request,
            capture_output=True,
            text=True,
            timeout=timeout,
            cwd="/",
            env=env,
            check=False,
        )
    except subprocess.TimeoutExpired as err:
        raise RulesError(
            f"evaluating the rules took over {timeout:g} s",
            where=rules_path,
            hint="look for an endless recursion",
        ) from err
    try:
        reply = json.loads(proc.stdout.splitlines()[-1])
    except (IndexError, json.JSONDecodeError) as err:
        raise RulesError("the Nickel worker failed", where=rules_path, hint=proc.stderr[-300:]) from err
    if "error" in reply:
        raise RulesError(
            _ANSI.sub("", reply["error"]).strip(),
            where=rules_path,
            hint="fix the rules file; see nickel/vault.ncl for the contract",
        )
    return from_value(json.loads(reply["ok"]), rules_path)
