"""Tokens: created with policies, a TTL, a use count; stored only as SHA-256 hashes; expiry enforced.

Layout in the token store's view:  id/<sha256 of token>  -> JSON entry
                                    accessor/<accessor>   -> sha256 of the token
                                    parent/<parent hash>/<child hash> -> b""   (revoking a parent revokes children)
A token that is expired, revoked, used up or forged is refused the same way (403 permission denied).
"""

from __future__ import annotations

import hashlib
import json
import secrets
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any

from reconcilers.vault.service.durations import rfc3339, seconds
from reconcilers.vault.service.errors import BadRequest, PermissionDenied
from reconcilers.vault.service.storage.base import KeyValueStore

DEFAULT_TTL = 768 * 3600          # Vault's default max lease TTL (32 days)
CACHE_MAX = 10_000                # token entries kept in memory
_NAME_MAX = 128


@dataclass(frozen=True, slots=True)
class TokenEntry:
    """What is known of a token (never the token itself)."""

    hash: str
    accessor: str
    policies: tuple[str, ...]
    display_name: str
    creation_time: float
    ttl: int                      # seconds from creation or last renewal; 0 = never expires (root)
    expire_time: float            # 0 = never
    explicit_max_ttl: int
    renewable: bool
    num_uses: int                 # 0 = unlimited
    orphan: bool
    parent: str
    meta: dict[str, str] = field(default_factory=dict)

    @property
    def is_root(self) -> bool:
        """Root tokens pass every policy check, as in Vault."""
        return "root" in self.policies

    def describe(self, now: float) -> dict[str, Any]:
        """The `data` of lookup answers."""
        left = max(0, int(self.expire_time - now)) if self.expire_time else 0
        return {"accessor": self.accessor, "creation_time": int(self.creation_time), "creation_ttl": self.ttl,
                "display_name": self.display_name, "entity_id": "", "expire_time":
                rfc3339(self.expire_time) if self.expire_time else None, "explicit_max_ttl": self.explicit_max_ttl,
                "id": "", "issue_time": rfc3339(self.creation_time), "meta": self.meta or None,
                "num_uses": self.num_uses, "orphan": self.orphan, "path": "auth/token/create",
                "policies": list(self.policies), "renewable": self.renewable, "ttl": left, "type": "service"}

    def auth(self, token: str) -> dict[str, Any]:
        """The `auth` block of create answers (the only time the token itself is returned)."""
        return {"client_token": token, "accessor": self.accessor, "policies": list(self.policies),
                "token_policies": list(self.policies), "metadata": self.meta or None, "lease_duration": self.ttl,
                "renewable": self.renewable, "entity_id": "", "token_type": "service", "orphan": self.orphan,
                "num_uses": self.num_uses, "mfa_requirement": None}


def digest(token: str) -> str:
    """What is stored for a token."""
    return hashlib.sha256(token.encode("utf-8", "surrogatepass")).hexdigest()


class TokenStore:
    """Create, look up, use, renew and revoke tokens in a (barrier-encrypted) store."""

    def __init__(self, store: KeyValueStore, clock: Any = time.time) -> None:
        self.store = store
        self.clock = clock
        self._lock = threading.Lock()
        # Entries read by hash, kept in memory: every request looks its token up. Every change goes through
        # _save/revoke here, so the cache is exact in one process; another node's changes (HA) are seen after
        # `forget()`, which a node calls when it becomes active.
        self._cache: OrderedDict[str, TokenEntry | None] = OrderedDict()

    def forget(self) -> None:
        """Drop the in-memory entries (another node may have changed tokens)."""
        with self._lock:
            self._cache.clear()

    def create(self, parent: TokenEntry | None, body: dict[str, Any], by_role: bool = False) -> tuple[str, TokenEntry]:
        """A new token as `body` asks (hvac's create_token fields); children get at most their parent's
        policies unless the parent is root or a role (`by_role`, already checked against it) decides them."""
        policies = body.get("policies") or (list(parent.policies) if parent else ["default"])
        if isinstance(policies, str):
            policies = [p.strip() for p in policies.split(",") if p.strip()]
        if not isinstance(policies, list) or not all(isinstance(p, str) and 0 < len(p) <= _NAME_MAX
                                                      for p in policies):
            raise BadRequest("policies: expected a list of policy names")
        if (parent is not None and not parent.is_root and not by_role
                and not set(policies) <= set(parent.policies) | {"default"}):
            raise BadRequest("child policies must be subset of parent")
        if not body.get("no_default_policy") and "default" not in policies and "root" not in policies:
            policies = [*policies, "default"]
        ttl = seconds(body.get("ttl") or body.get("period"), "ttl") or (0 if "root" in policies else DEFAULT_TTL)
        max_ttl = seconds(body.get("explicit_max_ttl"), "explicit_max_ttl")
        if max_ttl:
            ttl = min(ttl, max_ttl) if ttl else max_ttl
        uses = body.get("num_uses", 0)
        if not isinstance(uses, int) or isinstance(uses, bool) or uses < 0:
            raise BadRequest("num_uses: expected a whole number >= 0")
        meta = body.get("meta") or {}
        if not isinstance(meta, dict) or not all(isinstance(v, str) for v in meta.values()):
            raise BadRequest("meta: expected a map of strings")
        now = self.clock()
        token = "hvs." + secrets.token_urlsafe(32)
        orphan = bool(body.get("no_parent")) or parent is None
        entry = TokenEntry(digest(token), secrets.token_urlsafe(18), tuple(dict.fromkeys(sorted(policies))),
                           "token-" + str(body.get("display_name") or "")[:_NAME_MAX] if body.get("display_name")
                           else ("root" if parent is None else "token"), now, ttl, now + ttl if ttl else 0.0,
                           max_ttl, bool(body.get("renewable", True)), uses, orphan,
                           "" if orphan or parent is None else parent.hash, dict(meta))
        self._save(entry)
        self.store.put(f"accessor/{entry.accessor}", entry.hash.encode())
        if entry.parent:
            self.store.put(f"parent/{entry.parent}/{entry.hash}", b"")
        return token, entry

    def _save(self, entry: TokenEntry) -> None:
        doc = {k: getattr(entry, k) for k in TokenEntry.__slots__}
        self.store.put(f"id/{entry.hash}", json.dumps(doc).encode())
        self._remember(entry.hash, entry)

    def _remember(self, token_hash: str, entry: TokenEntry | None) -> None:
        self._cache[token_hash] = entry
        self._cache.move_to_end(token_hash)
        while len(self._cache) > CACHE_MAX:
            self._cache.popitem(last=False)

    def _load(self, token_hash: str) -> TokenEntry | None:
        if token_hash in self._cache:
            return self._cache[token_hash]
        raw = self.store.get(f"id/{token_hash}")
        if raw is None:
            return None           # not remembered: a forged token must not fill the cache
        doc = json.loads(raw)
        doc["policies"] = tuple(doc["policies"])
        entry = TokenEntry(**doc)
        self._remember(token_hash, entry)
        return entry

    def lookup(self, token: str) -> TokenEntry:
        """The live entry of `token`, or PermissionDenied (missing, forged, expired: the same answer)."""
        if not token or len(token) > 512:
            raise PermissionDenied()
        entry = self._load(digest(token))
        if entry is None:
            raise PermissionDenied()
        if entry.expire_time and entry.expire_time <= self.clock():
            self.revoke(entry)
            raise PermissionDenied()
        return entry

    def use(self, token: str) -> TokenEntry:
        """Look up `token` and count one use (a token with num_uses is revoked after its last)."""
        with self._lock:
            entry = self.lookup(token)
            if entry.num_uses:
                left = entry.num_uses - 1
                if left == 0:
                    self.revoke(entry)
                    # The entry in hand still authorizes this request: its last use.
                    return _replace(entry, num_uses=-1)
                self._save(_replace(entry, num_uses=left))
            return entry

    def by_accessor(self, accessor: str) -> TokenEntry:
        """The entry an accessor names; BadRequest when none (as Vault: "invalid accessor")."""
        if not accessor or "/" in accessor or len(accessor) > 128:
            raise BadRequest("invalid accessor")
        raw = self.store.get(f"accessor/{accessor}")
        entry = self._load(raw.decode()) if raw else None
        if entry is None:
            raise BadRequest("invalid accessor")
        return entry

    def renew(self, entry: TokenEntry, increment: Any) -> TokenEntry:
        """Extend the TTL (capped by explicit_max_ttl from creation); BadRequest when not renewable."""
        if not entry.renewable or not entry.expire_time:
            raise BadRequest("lease is not renewable")
        now = self.clock()
        ttl = seconds(increment, "increment") or entry.ttl
        # Capped by the token's explicit max TTL, else by the system max (768 h from creation), as Vault does:
        # renewing forever is not a way to make a token that never expires.
        expire = min(now + ttl, entry.creation_time + (entry.explicit_max_ttl or DEFAULT_TTL))
        renewed = _replace(entry, ttl=int(expire - now), expire_time=expire)
        self._save(renewed)
        return renewed

    def revoke(self, entry: TokenEntry) -> None:
        """Revoke the token and, unless orphans, its descendants (iteratively: a deep chain of children cannot
        exhaust the stack; children before parents, so an interrupted revoke leaves no orphaned child usable)."""
        order: list[TokenEntry] = []
        stack = [entry]
        while stack:
            current = stack.pop()
            order.append(current)
            for child in self.store.list(f"parent/{current.hash}/"):
                sub = self._load(child)
                if sub is not None:
                    stack.append(sub)
                else:
                    self.store.delete(f"parent/{current.hash}/{child}")
        for gone in reversed(order):
            self._cache.pop(gone.hash, None)      # first: a failing delete below must not leave it usable here
            self.store.delete(f"id/{gone.hash}")
            self.store.delete(f"accessor/{gone.accessor}")
            if gone.parent:
                self.store.delete(f"parent/{gone.parent}/{gone.hash}")


def _replace(entry: TokenEntry, **changes: Any) -> TokenEntry:
    doc = {k: getattr(entry, k) for k in TokenEntry.__slots__}
    doc.update(changes)
    return TokenEntry(**doc)
