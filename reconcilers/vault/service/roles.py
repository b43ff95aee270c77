"""Token roles (`auth/token/roles/<name>`): what a token created through a role may carry. A role's
`allowed_policies` replace the parent-subset rule (as in Vault); `orphan`, `renewable`, `token_period` and
`token_explicit_max_ttl` shape the token. Roles can be declared in the repo (`vault/token_roles.ncl`)."""

from __future__ import annotations

import json
from typing import Any

from reconcilers.vault.service.durations import seconds
from reconcilers.vault.service.errors import BadRequest, NotFound
from reconcilers.vault.service.storage.base import KeyValueStore, check_path

FIELDS = ("allowed_policies", "disallowed_policies", "orphan", "renewable", "token_period",
          "token_explicit_max_ttl", "token_num_uses")


def _names(value: Any, field: str) -> list[str]:
    if value is None:
        return []
    if isinstance(value, str):
        value = [v.strip() for v in value.split(",") if v.strip()]
    if not isinstance(value, list) or not all(isinstance(v, str) and 0 < len(v) <= 128 for v in value):
        raise BadRequest(f"{field}: expected a list of policy names")
    return sorted(set(value))


def normalize(body: dict[str, Any]) -> dict[str, Any]:
    """A role as stored, from a request body (BadRequest naming the bad field)."""
    uses = body.get("token_num_uses", 0)
    if not isinstance(uses, int) or isinstance(uses, bool) or uses < 0:
        raise BadRequest("token_num_uses: expected a whole number >= 0")
    return {"allowed_policies": _names(body.get("allowed_policies"), "allowed_policies"),
            "disallowed_policies": _names(body.get("disallowed_policies"), "disallowed_policies"),
            "orphan": bool(body.get("orphan", False)), "renewable": bool(body.get("renewable", True)),
            "token_period": seconds(body.get("token_period"), "token_period"),
            "token_explicit_max_ttl": seconds(body.get("token_explicit_max_ttl"), "token_explicit_max_ttl"),
            "token_num_uses": uses}


class Roles:
    """Roles in the token store's view, under roles/."""

    def __init__(self, store: KeyValueStore) -> None:
        self.store = store

    def put(self, name: str, body: dict[str, Any]) -> None:
        """Create or replace a role."""
        self.store.put(f"roles/{check_path(name)}", json.dumps(normalize(body)).encode())

    def get(self, name: str) -> dict[str, Any]:
        """A role; NotFound when none."""
        raw = self.store.get(f"roles/{check_path(name)}")
        if raw is None:
            raise NotFound(f"unknown role: {name}")
        return dict(json.loads(raw))

    def delete(self, name: str) -> None:
        """Remove a role (tokens made with it stay)."""
        self.store.delete(f"roles/{check_path(name)}")

    def names(self) -> list[str]:
        """Every role."""
        return self.store.list("roles/")

    def token_body(self, name: str, body: dict[str, Any]) -> dict[str, Any]:
        """The create body for a token through role `name`: its policies checked against the role."""
        role = self.get(name)
        wanted = _names(body.get("policies"), "policies") or role["allowed_policies"]
        allowed, denied = set(role["allowed_policies"]), set(role["disallowed_policies"])
        bad = [p for p in wanted if (allowed and p not in allowed and p != "default") or p in denied]
        if bad:
            raise BadRequest(f"token policies {bad} are not allowed by role {name}")
        out = {**body, "policies": wanted, "no_parent": role["orphan"], "renewable": role["renewable"]}
        if role["token_period"]:
            out["period"] = role["token_period"]
        if role["token_explicit_max_ttl"]:
            out["explicit_max_ttl"] = role["token_explicit_max_ttl"]
        if role["token_num_uses"]:
            out["num_uses"] = role["token_num_uses"]
        return out

    def ensure(self, declared: tuple[tuple[str, str], ...]) -> list[str]:
        """The repo's roles: each written when it differs; roles the repo declared before and no longer does are
        deleted (roles made through the API are never touched). What was done."""
        done: list[str] = []
        raw = self.store.get("roles-declared")
        before = set(json.loads(raw)) if raw else set()
        for name, settings in declared:
            current = self.store.get(f"roles/{name}")
            if current is None or json.loads(current) != json.loads(settings):
                self.store.put(f"roles/{name}", settings.encode())
                done.append(f"{name}: written")
        for name in sorted(before - {n for n, _ in declared}):
            self.delete(name)
            done.append(f"{name}: removed")
        names = sorted(n for n, _ in declared)
        if names != sorted(before):
            self.store.put("roles-declared", json.dumps(names).encode())
        return done

    def describe(self, name: str) -> dict[str, Any]:
        """A role as Vault reads it back."""
        return {"name": name, **self.get(name)}
