"""Audit (HMAC'd values, hash chain across rotation, fail closed, sys/audit-hash) and Cedar authorization
(deny by default, capabilities per method, schema checks that reject a revision)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import hvac
import pytest
import requests

from reconcilers.vault.service import policy
from reconcilers.vault.service.audit import AuditLog, verify
from reconcilers.vault.service.sync import load_policies
from tests.fixtures import WorkRepo
from tests.reconcilers.vault.service.conftest import Served, start_vault


def test_values_and_tokens_are_hmacd_and_audit_hash_finds_them(vault: Served) -> None:
    """The log never holds the secret or the token; sys/audit-hash gives the digest that stands for them."""
    client = vault.client()
    client.secrets.kv.v2.create_or_update_secret("a", secret={"pw": "s3cr3t-value"})
    text = vault.service.audit.path.read_text()
    assert "s3cr3t-value" not in text and vault.root_token not in text
    digest = client.sys.calculate_hash("file", "s3cr3t-value")["data"]["hash"]
    assert digest.startswith("hmac-sha256:") and digest in text
    entries = [json.loads(line) for line in text.splitlines()]
    assert {e["type"] for e in entries} == {"request", "response"}
    assert all(e["auth"]["client_token"].startswith("hmac-sha256:") for e in entries)


def test_chain_survives_rotation_and_catches_removed_and_reordered_lines(tmp_path: Path) -> None:
    """Rotation by size continues the chain in the next file; a removed or swapped line is named."""
    log = AuditLog(tmp_path / "audit.log", max_bytes=600)
    log.set_salt(b"s")
    for i in range(20):
        log.write({"type": "request", "request": {"path": f"p/{i}"}})
    files = sorted(tmp_path.glob("audit.log*"))
    assert len(files) > 2
    assert verify(tmp_path / "audit.log") == (20, [])
    reopened = AuditLog(tmp_path / "audit.log", max_bytes=600)      # a restart continues the chain
    reopened.write({"type": "request"})
    assert verify(tmp_path / "audit.log") == (21, [])
    first, second = tmp_path / "audit.log.1", tmp_path / "audit.log.2"
    lines = first.read_text().splitlines()
    assert len(lines) >= 2
    first.write_text("\n".join([lines[1], lines[0], *lines[2:]]) + "\n")          # reordered
    problems = verify(tmp_path / "audit.log")[1]
    assert any(p.startswith(f"{first}:1:") for p in problems)
    first.write_text("\n".join(lines) + "\n")
    assert verify(tmp_path / "audit.log")[1] == []
    kept = second.read_text().splitlines()
    second.write_text("\n".join(kept[:1] + kept[2:]) + "\n")                      # one removed
    assert any(p.startswith(f"{second}:2:") for p in verify(tmp_path / "audit.log")[1])


def test_unwritable_audit_log_fails_requests_closed(vault: Served) -> None:
    """When the audit file cannot be written, requests are refused (500) and nothing is served or stored."""
    client = vault.client()
    path = vault.service.audit.path
    path.unlink(missing_ok=True)
    path.mkdir()       # root ignores file modes; a directory in its place cannot be appended to by anyone
    try:
        answer = requests.post(f"{vault.url}/v1/secret/data/x", json={"data": {"a": "b"}},
                               headers={"X-Vault-Token": vault.root_token}, timeout=5)
        assert answer.status_code == 500 and "audit log" in answer.json()["errors"][0]
    finally:
        shutil.rmtree(path)
    with pytest.raises(hvac.exceptions.InvalidPath):
        client.secrets.kv.v2.read_secret_version("x", raise_on_deleted_version=True)


def test_deny_by_default_and_capabilities_per_method(vault: Served) -> None:
    """No policy: a non-root token can do nothing but look itself up. A read-only policy: reads, no writes,
    no deletes; a forbid wins over a permit."""
    client = vault.client()
    client.secrets.kv.v2.create_or_update_secret("team/x", secret={"v": "1"})
    t = client.auth.token.create(policies=["reader"])["auth"]["client_token"]
    reader = vault.client(t)
    assert reader.auth.token.lookup_self()["data"]["policies"] == ["default", "reader"]
    with pytest.raises(hvac.exceptions.Forbidden):
        reader.secrets.kv.v2.read_secret_version("team/x", raise_on_deleted_version=True)
    assert vault.service.set_policies({"r.cedar": """
permit(principal in Vault::Group::"reader", action == Vault::Action::"read", resource in Vault::Mount::"secret/");
forbid(principal, action, resource) when { resource.path like "secret/data/team/private*" };
"""}) == []
    assert reader.secrets.kv.v2.read_secret_version("team/x", raise_on_deleted_version=True)["data"]["data"] == {
        "v": "1"}
    client.secrets.kv.v2.create_or_update_secret("team/private", secret={"v": "2"})
    for denied in (lambda: reader.secrets.kv.v2.create_or_update_secret("team/x", secret={"v": "2"}),
                   lambda: reader.secrets.kv.v2.delete_latest_version_of_secret("team/x"),
                   lambda: reader.secrets.kv.v2.list_secrets("team"),
                   lambda: reader.secrets.kv.v2.read_secret_version("team/private", raise_on_deleted_version=True),
                   lambda: reader.sys.rotate_encryption_key()):
        with pytest.raises(hvac.exceptions.Forbidden):
            denied()


def test_create_and_update_are_told_apart(tmp_path: Path) -> None:
    """A policy granting `create` only lets a token write a new secret but not overwrite one."""
    served = start_vault(tmp_path)
    try:
        root = served.client()
        root.secrets.kv.v2.create_or_update_secret("exists", secret={"v": "1"})
        maker = served.client(served.token_under("maker", 'permit(principal in Vault::Group::"maker", '
                                                          'action == Vault::Action::"create", resource);'))
        maker.secrets.kv.v2.create_or_update_secret("fresh", secret={"v": "1"})
        with pytest.raises(hvac.exceptions.Forbidden):
            maker.secrets.kv.v2.create_or_update_secret("exists", secret={"v": "2"})
    finally:
        served.server.stop()


def test_policy_files_that_do_not_fit_the_schema_are_located_problems(tmp_path: Path) -> None:
    """A syntax error and an unknown entity type each name their file; a good file has no problem."""
    repo = WorkRepo(tmp_path / "ops")
    repo.commit({"vault/policies/good.cedar": 'permit(principal in Vault::Group::"a", action, resource);',
                 "vault/policies/syntax.cedar": "permit(principal, action resource);",
                 "vault/policies/schema.cedar": 'permit(principal in Vault::Team::"a", action, resource);'})
    from daemon.git.source import GitSource

    snap = GitSource(str(repo.path), "main", tmp_path / "data").snapshot("main")
    files, problems = load_policies(snap)
    assert [p for p, _ in files] == ["vault/policies/good.cedar", "vault/policies/schema.cedar",
                                     "vault/policies/syntax.cedar"]
    where = sorted({p.path for p in problems})
    assert where == ["vault/policies/schema.cedar", "vault/policies/syntax.cedar"], problems
    assert policy.check({"ok.cedar": 'permit(principal, action == Vault::Action::"list", resource);'}) == []


def test_mounts_declared_in_nickel_are_mounted_and_never_remounted(vault: Served, tmp_path: Path) -> None:
    """vault/mounts.ncl under the contract: its engines are mounted; a mount of another kind is kept (data
    stays); a bad type or path is a located problem."""
    from daemon.git.source import GitSource
    from daemon.nickel.evaluator import Evaluator
    from reconcilers.vault.service.sync import load_mounts

    repo = WorkRepo(tmp_path / "ops")
    repo.commit({"vault/mounts.ncl": '{ legacy = { type = \'kv, version = 1 }, "team/kv" = { type = \'kv } }'})
    evaluator = Evaluator(tmp_path / "cache", timeout=30.0)
    try:
        snap = GitSource(str(repo.path), "main", tmp_path / "data").snapshot("main")
        mounts, problems = load_mounts(snap, evaluator)
        assert problems == [] and mounts == (("legacy/", "kv", 1, ""), ("team/kv/", "kv", 2, ""))
        assert vault.service.ensure_mounts(mounts) == ["legacy/: mounted", "team/kv/: mounted"]
        listed = vault.client().sys.list_mounted_secrets_engines()["data"]
        assert listed["legacy/"]["options"] == {"version": "1"} and listed["team/kv/"]["options"] == {"version": "2"}
        assert "kept as kv v1" in vault.service.ensure_mounts((("legacy/", "kv", 2, ""),))[0]
        repo.commit({"vault/mounts.ncl": "{ sys = { type = 'kv }, x = { type = 'nope } }"})
        snap = GitSource(str(repo.path), "main", tmp_path / "data").snapshot("main")
        mounts, problems = load_mounts(snap, evaluator)
        assert mounts == () and problems and all(p.path == "vault/mounts.ncl" for p in problems)
    finally:
        evaluator.close()


def test_token_roles_declared_in_nickel(vault: Served, tmp_path: Path) -> None:
    """vault/token_roles.ncl: roles written (and usable by hvac's role_name), a role dropped from the file is
    removed, a role made through the API is left alone, a bad duration is a located problem."""
    from daemon.git.source import GitSource
    from daemon.nickel.evaluator import Evaluator
    from reconcilers.vault.service.sync import load_roles

    root = vault.client()
    root.auth.token.create_or_update_role("by-hand", allowed_policies=["x"])
    repo = WorkRepo(tmp_path / "ops")
    repo.commit({"vault/token_roles.ncl": '{ ci = { allowed_policies = ["deploy"], orphan = true, '
                                          'token_explicit_max_ttl = "1h" }, ops = {} }'})
    evaluator = Evaluator(tmp_path / "cache", timeout=30.0)
    try:
        source = GitSource(str(repo.path), "main", tmp_path / "data")
        roles, problems = load_roles(source.snapshot("main"), evaluator)
        assert problems == [] and [n for n, _ in roles] == ["ci", "ops"]
        assert vault.service.ensure_roles(roles) == ["ci: written", "ops: written"]
        assert vault.service.ensure_roles(roles) == []
        made = root.auth.token.create(role_name="ci")["auth"]
        assert made["policies"] == ["default", "deploy"] and made["orphan"] is True
        repo.commit({"vault/token_roles.ncl": '{ ci = { allowed_policies = ["deploy"], orphan = true } }'})
        roles, problems = load_roles(source.snapshot("main"), evaluator)
        assert vault.service.ensure_roles(roles) == ["ci: written", "ops: removed"]
        assert sorted(root.auth.token.list_roles()["data"]["keys"]) == ["by-hand", "ci"]
        repo.commit({"vault/token_roles.ncl": '{ bad = { token_period = "soon" } }'})
        roles, problems = load_roles(source.snapshot("main"), evaluator)
        assert roles == () and [p.path for p in problems] == ["vault/token_roles.ncl"]
        assert "token_period" in problems[0].message
    finally:
        evaluator.close()
