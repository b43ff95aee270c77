"""Which role may read which secret through the `vault.read` tool: Cedar, deny by default.

The repository's `agents/policies/*.cedar` (checked against the schema below at validate) decide; without a
policy file no role reads any secret. The other tools need only the agent's declaration.

    principal  Agents::Role::"<role>"                      (the role of the agent calling the tool)
    action     Agents::Action::"vault.read"
    resource   Agents::Secret::"<reference>" with attributes reference, path (before `#`) and key (after)

Example:  permit(principal == Agents::Role::"devops", action == Agents::Action::"vault.read", resource)
          when { resource.path like "kv/ops/*" };
Any evaluation error denies.
"""

from __future__ import annotations

import json
import re
import threading
from collections.abc import Callable, Mapping
from typing import Any

SCHEMA = """\
namespace Agents {
  entity Role;
  entity Secret = { reference: String, path: String, key: String };
  action "vault.read" appliesTo { principal: [Role], resource: [Secret], context: {} };
}
"""
FOLDER = "agents/policies"
MAX_POLICY_BYTES = 256 * 1024


def problems(files: Mapping[str, str]) -> list[tuple[str, str]]:
    """(file, message) of every policy file that does not parse or fit the schema."""
    out: list[tuple[str, str]] = []
    if not files:
        return out                      # no policy files: cedarpy (~50 ms to import) is not needed
    import cedarpy

    schema = cedarpy.Schema.from_str(SCHEMA)
    for name, text in sorted(files.items()):
        try:
            cedarpy.PolicySet.from_str(text)
        except (ValueError, RuntimeError) as err:
            out.append((name, f"does not parse as Cedar: {_clean(err)}"))
            continue
        seen: set[str] = set()
        for error in cedarpy.validate_policies(text, schema).errors:
            msg = re.sub(r"^for policy `[^`]*`, ", "", error.error)
            if msg not in seen:
                seen.add(msg)
                out.append((name, f"does not fit the agents schema: {msg}"))
    return out


def _clean(err: Exception) -> str:
    return re.sub(r"\s+", " ", str(err))[:300]


class RolePolicy:
    """The authorization a ToolHost asks (`authorize(role, tool, arguments)`), over the policies in force
    (`files()` is read on each call; the parsed set is kept until the text changes)."""

    def __init__(self, files: Callable[[], Mapping[str, str]]) -> None:
        self._files = files
        self._lock = threading.Lock()
        self._text: str | None = None
        self._set: Any = None

    def _policy_set(self) -> Any:
        files = self._files()
        text = "\n".join(files[k] for k in sorted(files))
        with self._lock:
            if text != self._text:
                import cedarpy  # on first use, not at import (~50 ms)

                try:
                    self._set = cedarpy.PolicySet.from_str(text) if text.strip() else None
                except (ValueError, RuntimeError):
                    self._set = None            # validate refused it; deny until a good revision
                self._text = text
            return self._set

    def authorize(self, role: str, tool: str, arguments: Mapping[str, Any]) -> bool:
        """True for a declared tool, but vault.read only where a permit and no forbid matches."""
        if tool != "vault.read":
            return True
        policy_set = self._policy_set()
        if policy_set is None:
            return False
        reference = str(arguments.get("reference", ""))
        path, _, key = reference.partition("#")
        entities = [{"uid": {"type": "Agents::Role", "id": role}, "attrs": {}, "parents": []},
                    {"uid": {"type": "Agents::Secret", "id": reference},
                     "attrs": {"reference": reference, "path": path, "key": key}, "parents": []}]
        request = {"principal": f"Agents::Role::{json.dumps(role)}",
                   "action": 'Agents::Action::"vault.read"',
                   "resource": f"Agents::Secret::{json.dumps(reference)}", "context": {}}
        import cedarpy

        try:
            result = cedarpy.is_authorized(request, policy_set, cedarpy.Entities.from_json_str(json.dumps(entities)))
        except (ValueError, RuntimeError):
            return False
        return bool(result.allowed) and not result.diagnostics.errors
