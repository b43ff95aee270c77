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


class Authorizer:
    """The policies in force (replaced as a whole when the repo changes them)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._set: Any = None
        self.text = ""

    def load(self, files: dict[str, str]) -> None:
        """Put `files` (already checked) in force; an empty dict denies everything but root."""
        text = "\n".join(files[k] for k in sorted(files))
        policy_set = cedarpy.PolicySet.from_str(text) if text.strip() else None
        with self._lock:
            self._set, self.text = policy_set, text

    def allowed(self, accessor: str, display_name: str, groups: tuple[str, ...], action: str, path: str,
                mount: str, context: dict[str, Any]) -> bool:
        """Whether some permit and no forbid matches; False on any evaluation error."""
        policy_set = self._set
        if policy_set is None:
            return False
        entities = [
            {"uid": {"type": "Vault::Token", "id": accessor},
             "attrs": {"accessor": accessor, "display_name": display_name},
             "parents": [{"type": "Vault::Group", "id": g} for g in groups]},
            *({"uid": {"type": "Vault::Group", "id": g}, "attrs": {}, "parents": []} for g in groups),
            {"uid": {"type": "Vault::Path", "id": path}, "attrs": {"path": path, "mount": mount},
             "parents": [{"type": "Vault::Mount", "id": mount}]},
            {"uid": {"type": "Vault::Mount", "id": mount}, "attrs": {}, "parents": []},
        ]
        request = {"principal": f"Vault::Token::{json.dumps(accessor)}",
                   "action": f"Vault::Action::{json.dumps(action)}",
                   "resource": f"Vault::Path::{json.dumps(path)}", "context": context}
        try:
            result = cedarpy.is_authorized(request, policy_set, cedarpy.Entities.from_json_str(json.dumps(entities)))
        except (ValueError, RuntimeError):
            return False
        return bool(result.allowed) and not result.diagnostics.errors
