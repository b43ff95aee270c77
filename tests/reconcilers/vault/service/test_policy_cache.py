"""The Cedar decisions kept between requests (service/policy.py) never outlive what they were made under."""

from __future__ import annotations

from reconcilers.vault.service.policy import Authorizer

READ = 'permit(principal in Vault::Group::"app", action == Vault::Action::"read", resource);'
FORBID = 'forbid(principal, action, resource) when { resource.path like "secret/data/app/*" };'
DAYTIME = ('permit(principal in Vault::Group::"app", action == Vault::Action::"read", resource) '
           'when { context.time < 1000 };')


def _ask(authz: Authorizer, groups: tuple[str, ...] = ("app",), time: int = 0) -> bool:
    return authz.allowed("acc1", "token", groups, "read", "secret/data/app/db", "secret/",
                         {"time": time, "source": "127.0.0.1", "method": "GET"})


def test_a_new_policy_set_takes_effect_at_once() -> None:
    """A decision made and kept under one policy set is not reused after the policies change."""
    authz = Authorizer()
    authz.load({"a.cedar": READ})
    assert _ask(authz) and _ask(authz)                    # the second answer comes from the kept decision
    authz.load({"a.cedar": READ, "b.cedar": FORBID})
    assert not _ask(authz)
    authz.load({})
    assert not _ask(authz)


def test_the_token_groups_are_part_of_the_decision() -> None:
    """The same token with other policies (groups) is decided again."""
    authz = Authorizer()
    authz.load({"a.cedar": READ})
    assert _ask(authz, ("app",))
    assert not _ask(authz, ("other",))


def test_policies_reading_the_context_are_decided_every_time() -> None:
    """A policy that names `context` (time, client, method) is evaluated per request: no decision is kept."""
    authz = Authorizer()
    authz.load({"a.cedar": DAYTIME})
    assert _ask(authz, time=10)
    assert not _ask(authz, time=5000)
    assert _ask(authz, time=10)
