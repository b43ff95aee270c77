"""Tokens through hvac: create with policies/TTL/uses, lookup, renew, revoke, accessors; stored as hashes only."""

from __future__ import annotations

import hvac
import pytest

from reconcilers.vault.service.errors import PermissionDenied
from reconcilers.vault.service.request import ApiRequest
from reconcilers.vault.service.storage.base import MemoryStore
from reconcilers.vault.service.storage.file import FileStore
from reconcilers.vault.service.tokens import TokenStore, digest
from tests.reconcilers.vault.service.conftest import Served


def test_create_lookup_renew_revoke(vault: Served) -> None:
    """A child token sees itself, renews, and is gone after revoke (403 like any unknown token)."""
    root = vault.client()
    made = root.auth.token.create(policies=["app"], ttl="1h", renewable=True)["auth"]
    child = vault.client(made["client_token"])
    me = child.auth.token.lookup_self()["data"]
    assert me["policies"] == ["app", "default"] and 3500 < me["ttl"] <= 3600 and me["accessor"] == made["accessor"]
    assert child.auth.token.renew_self(increment="2h")["auth"]["lease_duration"] > 3600
    assert root.auth.token.lookup_accessor(made["accessor"])["data"]["policies"] == ["app", "default"]
    assert made["accessor"] in root.auth.token.list_accessors()["data"]["keys"]
    with pytest.raises(hvac.exceptions.Forbidden):
        child.auth.token.list_accessors()
    root.auth.token.revoke(made["client_token"])
    with pytest.raises(hvac.exceptions.Forbidden):
        child.auth.token.lookup_self()


def test_revoking_a_parent_revokes_its_children_but_not_orphans(vault: Served) -> None:
    """Children go with their parent; an orphan stays."""
    root = vault.client()
    vault.service.set_policies({"t.cedar": 'permit(principal in Vault::Group::"a", action, resource) '
                                           'when { resource.path == "auth/token/create" };'})
    parent = root.auth.token.create(policies=["a"])["auth"]["client_token"]
    child = vault.client(parent).auth.token.create(policies=["a"])["auth"]["client_token"]
    orphan = root.auth.token.create_orphan(policies=["a"])["auth"]["client_token"]
    root.auth.token.revoke_accessor(root.auth.token.lookup(parent)["data"]["accessor"])
    with pytest.raises(hvac.exceptions.Forbidden):
        vault.client(child).auth.token.lookup_self()
    assert vault.client(orphan).auth.token.lookup_self()["data"]["orphan"] is True


def test_child_cannot_get_policies_its_parent_lacks(vault: Served) -> None:
    """A non-root token creating a child with more policies is refused."""
    parent = vault.client().auth.token.create(policies=["a"])["auth"]["client_token"]
    vault.service.set_policies({"p.cedar": 'permit(principal, action, resource) '
                                           'when { resource.path like "auth/token/create*" };'})
    with pytest.raises(hvac.exceptions.InvalidRequest, match="subset of parent"):
        vault.client(parent).auth.token.create(policies=["admin"])


def test_num_uses_and_expiry(vault: Served) -> None:
    """A token with num_uses=2 works twice; an expired token is refused and removed."""
    t = vault.client().auth.token.create(policies=["x"], num_uses=2)["auth"]["client_token"]
    c = vault.client(t)
    c.auth.token.lookup_self()
    c.auth.token.lookup_self()
    with pytest.raises(hvac.exceptions.Forbidden):
        c.auth.token.lookup_self()
    now = [1000.0]
    store = TokenStore(vault.service.barrier.view("sys/token/"), clock=lambda: now[0])
    token, entry = store.create(None, {"policies": ["x"], "ttl": "10s"})
    assert store.lookup(token) == entry
    now[0] += 11
    with pytest.raises(PermissionDenied):
        store.lookup(token)
    assert store.store.get(f"id/{entry.hash}") is None


def test_forged_and_missing_tokens_get_403(vault: Served) -> None:
    """No token, a made-up token, a token of the right shape: the same 403 permission denied."""
    for token in ("", "hvs.forged", "hvs." + "A" * 43):
        with pytest.raises(hvac.exceptions.Forbidden):
            vault.client(token).secrets.kv.v2.read_secret_version("x", raise_on_deleted_version=True)


def test_tokens_are_stored_only_as_hashes(vault: Served) -> None:
    """The token's hash names its entry; the token itself is nowhere in storage, even decrypted."""
    t = vault.client().auth.token.create(policies=["x"])["auth"]["client_token"]
    store = vault.service.store
    assert isinstance(store, FileStore)
    view = vault.service.barrier.view("sys/token/")
    assert view.get(f"id/{digest(t)}") is not None
    ids = view.list("id/")
    plain = b"".join(view.get(f"id/{i}") or b"" for i in ids)
    assert t.encode() not in plain and len(ids) == 2
    status, _ = vault.service.handle(ApiRequest("GET", "auth/token/lookup-self", token=t))
    assert status == 200


def test_hvac_sys_calls(vault: Served) -> None:
    """The sys calls hvac has for a single node: health, leader, key status after a rotation, mounts, auth."""
    client = vault.client()
    assert client.is_authenticated() is True
    assert client.sys.read_health_status(method="GET")["sealed"] is False
    assert client.sys.read_leader_status()["is_self"] is True
    client.sys.rotate_encryption_key()
    assert client.sys.get_encryption_key_status()["data"]["term"] == 2
    client.sys.enable_secrets_engine("kv", path="tmp-kv", options={"version": "2"})
    assert "tmp-kv/" in client.sys.list_mounted_secrets_engines()["data"]
    client.sys.disable_secrets_engine("tmp-kv")
    assert "tmp-kv/" not in client.sys.list_mounted_secrets_engines()["data"]
    assert vault.client("hvs.nope").is_authenticated() is False


def test_token_roles(vault: Served) -> None:
    """A role decides a token's policies (within allowed_policies, never a disallowed one), orphan-ness and max
    TTL; a non-root parent may use it where it could not grant the policies itself; roles list and delete."""
    root = vault.client()
    root.auth.token.create_or_update_role("ci", allowed_policies=["deploy", "read"], disallowed_policies=["admin"],
                                          orphan=True, token_explicit_max_ttl="1h")
    assert root.auth.token.read_role("ci")["data"]["allowed_policies"] == ["deploy", "read"]
    assert root.auth.token.list_roles()["data"]["keys"] == ["ci"]
    made = root.auth.token.create(role_name="ci", policies=["deploy"])["auth"]
    me = vault.client(made["client_token"]).auth.token.lookup_self()["data"]
    assert me["policies"] == ["default", "deploy"] and me["orphan"] is True and 0 < me["ttl"] <= 3600
    with pytest.raises(hvac.exceptions.InvalidRequest, match="not allowed by role ci"):
        root.auth.token.create(role_name="ci", policies=["admin"])
    vault.service.set_policies({"r.cedar": 'permit(principal in Vault::Group::"x", action, resource) '
                                           'when { resource.path == "auth/token/create/ci" };'})
    parent = vault.client(root.auth.token.create(policies=["x"])["auth"]["client_token"])
    assert parent.auth.token.create(role_name="ci")["auth"]["policies"] == ["default", "deploy", "read"]
    with pytest.raises(hvac.exceptions.Forbidden):
        parent.auth.token.create(policies=["deploy"])        # no role: Cedar has no permit for auth/token/create
    root.auth.token.delete_role("ci")
    with pytest.raises(hvac.exceptions.InvalidPath):
        root.auth.token.read_role("ci")


def test_renewal_is_capped_and_deep_chains_revoke(vault: Served) -> None:
    """Renewing a token without explicit_max_ttl never passes 768 h from its creation; revoking the top of a
    chain of 1,500 children revokes them all (a recursive revoke exhausted the stack)."""
    now = [1000.0]
    store = TokenStore(vault.service.barrier.view("sys/token/"), clock=lambda: now[0])
    _, entry = store.create(None, {"policies": ["x"], "ttl": "700h"})
    now[0] += 600 * 3600
    renewed = store.renew(entry, "700h")
    assert renewed.expire_time == entry.creation_time + 768 * 3600
    store = TokenStore(MemoryStore())
    top_token, top = store.create(None, {"policies": ["x"]})
    parent, tokens = top, []
    for _ in range(1500):
        token, parent = store.create(parent, {"policies": ["x"]})
        tokens.append(token)
    store.revoke(top)
    for token in (top_token, *tokens[::100], tokens[-1]):
        with pytest.raises(PermissionDenied):
            store.lookup(token)
