"""Authorization with Cedar: the repo's `vault/policies/*.cedar`, checked against the schema below; deny by default.

    principal  Vault::Token::"<accessor>", member of Vault::Group::"<policy name>" for each policy of the token
    action     Vault::Action::"read" | "create" | "update" | "delete" | "list" | "sudo"
    resource   Vault::Path::"<path>" (below /v1/), member of its Vault::Mount::"<mount>/", with attributes
               path, mount
    context    { time: seconds since the epoch, source: client address, method: HTTP method }

Example:  permit(principal in Vault::Group::"app", action == Vault::Action::"read", resource)
          when { resource.path like "secret/data/app/*" };
Root tokens pass (as Vault's root policy). Any evaluation error denies.
"""

from __future__ import annotations

import functools
import json
import re
import threading
from dataclasses import dataclass
from typing import Any

import cedarpy

SCHEMA = """\
namespace Vault {
  entity Group;
  entity Token in [Group] = { accessor: String, display_name: String };
  entity Mount;
  entity Path in [Mount] = { path: String, mount: String };
  type Ctx = { time: Long, source: String, method: String };
  action read, create, update, delete, list, sudo appliesTo { principal: [Token], resource: [Path], context: Ctx };
}
"""
ACTIONS = ("read", "create", "update", "delete", "list", "sudo")


@dataclass(frozen=True, slots=True)
class PolicyProblem:
    """A policy file that does not parse or fit the schema."""

    file: str
    message: str


def check(files: dict[str, str]) -> list[PolicyProblem]:
    """Problems of the policy files (path -> text): syntax, then the schema. Empty when all is well."""
    problems: list[PolicyProblem] = []
    schema = cedarpy.Schema.from_str(SCHEMA)
    for name, text in sorted(files.items()):
        try:
            cedarpy.PolicySet.from_str(text)
        except (ValueError, RuntimeError) as err:
            problems.append(PolicyProblem(name, f"does not parse as Cedar: {_clean(err)}"))
            continue
        seen: set[str] = set()
        for error in cedarpy.validate_policies(text, schema).errors:
            msg = re.sub(r"^for policy `[^`]*`, ", "", error.error)
            if msg not in seen:
                seen.add(msg)
                problems.append(PolicyProblem(name, f"does not fit the vault schema: {msg}"))
    return problems


def _clean(err: Exception) -> str:
    return re.sub(r"\s+", " ", str(err))[:300]


DECISIONS_MAX = 4096     # decisions kept per policy set (a token x path x action each); cleared when full


@functools.lru_cache(maxsize=1024)
def _entities(accessor: str, display_name: str, groups: tuple[str, ...], path: str, mount: str) -> Any:
    """The parsed entity graph of one request (token, its groups, path, mount): parsing it cost as much as the
    decision itself, and a client reads the same paths with the same token again and again."""
    entities = [
        {"uid": {"type": "Vault::Token", "id": accessor},
         "attrs": {"accessor": accessor, "display_name": display_name},
         "parents": [{"type": "Vault::Group", "id": g} for g in groups]},
        *({"uid": {"type": "Vault::Group", "id": g}, "attrs": {}, "parents": []} for g in groups),
        {"uid": {"type": "Vault::Path", "id": path}, "attrs": {"path": path, "mount": mount},
         "parents": [{"type": "Vault::Mount", "id": mount}]},
        {"uid": {"type": "Vault::Mount", "id": mount}, "attrs": {}, "parents": []},
    ]
    return cedarpy.Entities.from_json_str(json.dumps(entities))


@dataclass(frozen=True, slots=True)
class _InForce:
    """A parsed policy set and what was decided under it. Replaced whole on a change, so a decision never
    outlives the policies it was made under."""

    policy_set: Any
    text: str
    # Decisions depend on the request's context (time, client address, method) only through `context`: when
    # no policy names it (word match, so a comment naming it merely turns the cache off), a decision is a pure
    # function of token, groups, action and path, and is kept.
    cacheable: bool
    decisions: dict[tuple[str, str, tuple[str, ...], str, str, str], bool]


class Authorizer:
    """The policies in force (replaced as a whole when the repo changes them)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._force = _InForce(None, "", False, {})

    @property
    def text(self) -> str:
        """The policy text in force."""
        return self._force.text

    def load(self, files: dict[str, str]) -> None:
        """Put `files` (already checked) in force; an empty dict denies everything but root."""
        text = "\n".join(files[k] for k in sorted(files))
        policy_set = cedarpy.PolicySet.from_str(text) if text.strip() else None
        force = _InForce(policy_set, text, re.search(r"\bcontext\b", text) is None, {})
        with self._lock:
            self._force = force

    def allowed(self, accessor: str, display_name: str, groups: tuple[str, ...], action: str, path: str,
                mount: str, context: dict[str, Any]) -> bool:
        """Whether some permit and no forbid matches; False on any evaluation error."""
        force = self._force
        if force.policy_set is None:
            return False
        key = (accessor, display_name, groups, action, path, mount)
        if force.cacheable:
            known = force.decisions.get(key)
            if known is not None:
                return known
        request = {"principal": f"Vault::Token::{json.dumps(accessor)}",
                   "action": f"Vault::Action::{json.dumps(action)}",
                   "resource": f"Vault::Path::{json.dumps(path)}", "context": context}
        try:
            result = cedarpy.is_authorized(request, force.policy_set,
                                           _entities(accessor, display_name, groups, path, mount))
        except (ValueError, RuntimeError):
            return False                                        # not kept: an error may be passing
        decision = bool(result.allowed) and not result.diagnostics.errors
        if force.cacheable:
            if len(force.decisions) >= DECISIONS_MAX:
                force.decisions.clear()
            force.decisions[key] = decision
        return decision
