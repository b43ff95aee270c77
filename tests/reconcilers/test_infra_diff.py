"""The pure infra diff: creates, changes, drift (corrected or detected), prune from inventory, dependency
edges and compensations, decided from desired state, observed state and inventory alone."""

from __future__ import annotations

import json
from types import MappingProxyType
from typing import Any

from reconcilers.base import InventoryItem, freeze
from reconcilers.infra.diff import expected_link, findings, plan
from reconcilers.infra.local import content_hash
from reconcilers.infra.model import InfraDesired, InfraObserved, ObservedResource, Resource


def res(
    rid: str,
    kind: str,
    *,
    depends_on: tuple[str, ...] = (),
    prune: bool = True,
    drift: str = "correct",
    **spec: Any,
) -> Resource:
    """A desired resource as load_infra builds it."""
    if kind in ("file", "systemd_unit"):
        spec.setdefault("mode", "0644")
    if kind == "directory":
        spec.setdefault("mode", "0755")
    return Resource(
        id=rid,
        kind=kind,
        provider="local",
        spec=freeze(spec),
        depends_on=depends_on,
        prune=prune,
        drift=drift,
        source="infra/a.ncl",
        line=3,
    )


def desired(*resources: Resource) -> InfraDesired:
    """Desired state of these resources."""
    return InfraDesired(resources=MappingProxyType({r.id: r for r in resources}))


def observed(**by_id: ObservedResource) -> InfraObserved:
    """Observed state by resource id."""
    return InfraObserved(resources=MappingProxyType(by_id))


def inv(*resources: Resource) -> list[InventoryItem]:
    """The inventory left by applying these resources."""
    return [InventoryItem("infra", r.id, r.kind, r.inventory_data()) for r in resources]


def file_on_host(content: str, mode: str = "0644") -> ObservedResource:
    """A regular file as the local provider observes it."""
    return ObservedResource(True, "file", content_hash(content), mode)


def by_id(actions: list[Any]) -> dict[str, Any]:
    """Actions keyed by id."""
    return {a.id: a for a in actions}


# -- creates and changes -------------------------------------------------------------------------------------
def test_a_new_resource_is_created_with_its_full_change() -> None:
    """A resource missing on the host and in inventory becomes a create carrying spec and inventory data."""
    motd = res("motd", "file", path="etc/motd", content="hi\n")
    [action] = plan(desired(motd), observed(), [])
    assert (action.id, action.kind, action.target, action.reconciler) == (
        "infra:motd",
        "create",
        "motd",
        "infra",
    )
    assert action.summary == "create file etc/motd (0644)"
    change = action.payload()
    assert change["resource"]["spec"] == {"path": "etc/motd", "content": "hi\n", "mode": "0644"}
    assert change["nature"] == "create" and change["reason"] == "missing"
    assert json.loads(change["inventory"])["spec_hash"] == motd.spec_hash
    assert action.compensation is None


def test_a_host_that_matches_needs_nothing() -> None:
    """Files, directories and links already as desired produce no actions."""
    f = res("f", "file", path="f", content="x")
    d = res("d", "directory", path="d")
    link = res("l", "symlink", path="srv/current", target="srv/app")
    obs = observed(
        f=file_on_host("x"),
        d=ObservedResource(True, "directory", mode="0755"),
        l=ObservedResource(True, "symlink", target="app"),
    )
    assert plan(desired(f, d, link), obs, inv(f, d, link)) == []
    assert plan(desired(f, d, link), obs, []) == []


def test_a_spec_change_is_an_update_even_for_detect_resources() -> None:
    """A changed spec (repo moved) always applies, whatever the drift policy."""
    old = res("f", "file", path="f", content="old", drift="detect")
    new = res("f", "file", path="f", content="new", drift="detect")
    [action] = plan(desired(new), observed(f=file_on_host("old")), inv(old))
    assert action.kind == "update" and action.summary == "update file f (0644)"
    assert action.payload()["nature"] == "change"


def test_a_mode_change_alone_is_an_update() -> None:
    """Same content with a different mode differs on the host."""
    f = res("f", "file", path="f", content="x", mode="0600")
    [action] = plan(desired(f), observed(f=file_on_host("x", "0644")), [])
    assert action.payload()["reason"] == "mode 0644 is not 0600"


def test_a_file_where_a_directory_should_be_is_a_change() -> None:
    """A kind mismatch on the host is reported with what is there."""
    d = res("d", "directory", path="d")
    [action] = plan(desired(d), observed(d=file_on_host("x")), [])
    assert action.payload()["reason"] == "is a file, not a directory"


# -- drift ---------------------------------------------------------------------------------------------------
def test_drift_is_corrected_for_correct_and_skipped_for_detect() -> None:
    """With an unchanged spec, host edits are drift: 'correct updates giving the reason, 'detect does not."""
    fixed = res("fixed", "file", path="a", content="repo")
    watched = res("watched", "file", path="b", content="repo", drift="detect")
    obs = observed(fixed=file_on_host("host"), watched=file_on_host("host"))
    found = {
        f.resource_id: (f.nature, f.reason)
        for f in findings(desired(fixed, watched), obs, {i.resource_id: i for i in inv(fixed, watched)})
    }
    assert found == {"fixed": ("drift", "content differs"), "watched": ("drift", "content differs")}
    [action] = plan(desired(fixed, watched), obs, inv(fixed, watched))
    assert action.id == "infra:fixed" and action.kind == "update"
    assert action.summary == "update file a (0644) [content differs]"


def test_a_changed_link_target_on_the_host_is_drift() -> None:
    """A symlink repointed on the host is drift naming where it points now."""
    link = res("l", "symlink", path="srv/current", target="srv/app")
    [f] = findings(
        desired(link),
        observed(l=ObservedResource(True, "symlink", target="/etc")),
        {i.resource_id: i for i in inv(link)},
    )
    assert (f.nature, f.reason) == ("drift", "points to /etc")


# -- commands ------------------------------------------------------------------------------------------------
def test_a_command_runs_once_per_spec() -> None:
    """A command runs when new or changed, not again for the same spec."""
    cmd = res("c", "command", run="echo hi")
    [action] = plan(desired(cmd), observed(c=ObservedResource(False)), [])
    assert action.kind == "run" and action.summary == "run command c: echo hi"
    assert plan(desired(cmd), observed(c=ObservedResource(False)), inv(cmd)) == []
    changed = res("c", "command", run="echo bye")
    [again] = plan(desired(changed), observed(c=ObservedResource(False)), inv(cmd))
    assert again.payload()["nature"] == "change"


def test_a_command_whose_creates_exists_is_skipped_and_rerun_when_it_goes() -> None:
    """`creates` present: nothing to do; `creates` removed on the host after a run: drift, run again."""
    cmd = res("c", "command", run="touch done", creates="done")
    assert plan(desired(cmd), observed(c=ObservedResource(True, "file")), []) == []
    [action] = plan(desired(cmd), observed(c=ObservedResource(False)), inv(cmd))
    assert action.kind == "run" and action.payload()["reason"] == "done is missing"


def test_a_command_compensation_is_carried_with_its_env_and_timeout() -> None:
    """The compensation JSON holds the undo command, the timeout and the env of the resource."""
    cmd = res("c", "command", run="make", compensate="unmake", timeout=30, env={"A": "1"})
    [action] = plan(desired(cmd), observed(), [])
    assert json.loads(action.compensation or "") == {"run": "unmake", "timeout": 30, "env": {"A": "1"}}


# -- dependencies --------------------------------------------------------------------------------------------
def test_dependencies_come_from_depends_on_parent_directories_and_link_targets() -> None:
    """An action waits for its declared dependencies, managed parent directories and a managed link target."""
    srv = res("srv", "directory", path="srv")
    app = res("app", "directory", path="srv/app")
    cfg = res("cfg", "file", path="srv/app/cfg", content="x")
    link = res("cur", "symlink", path="current", target="srv/app")
    cmd = res("init", "command", run="x", depends_on=("cfg",))
    acts = by_id(plan(desired(srv, app, cfg, link, cmd), observed(), []))
    assert acts["infra:cfg"].depends_on == ("infra:app", "infra:srv")
    assert acts["infra:app"].depends_on == ("infra:srv",)
    assert acts["infra:cur"].depends_on == ("infra:app",)
    assert acts["infra:init"].depends_on == ("infra:cfg",)
    assert acts["infra:srv"].depends_on == ()


def test_dependencies_on_resources_already_applied_do_not_block() -> None:
    """Only actions in the plan can be waited on: the executor drops edges to ids with no action."""
    srv = res("srv", "directory", path="srv")
    cfg = res("cfg", "file", path="srv/cfg", content="x", depends_on=("srv",))
    [action] = plan(
        desired(srv, cfg), observed(srv=ObservedResource(True, "directory", mode="0755")), inv(srv)
    )
    assert action.id == "infra:cfg" and action.depends_on == ("infra:srv",)


# -- prune ---------------------------------------------------------------------------------------------------
def test_resources_gone_from_the_repo_are_deleted_unless_prune_is_false() -> None:
    """Inventory items not desired any more are deleted; `prune = false` ones are left alone."""
    gone = res("gone", "file", path="old.txt", content="x")
    kept = res("kept", "file", path="keep.txt", content="x", prune=False)
    [action] = plan(desired(), observed(), inv(gone, kept))
    assert (action.id, action.kind, action.summary) == ("infra:gone", "delete", "delete file old.txt")
    assert action.payload()["inventory"]["path"] == "old.txt"


def test_children_are_deleted_before_their_directory() -> None:
    """Deleting a directory waits for the deletes of what was inside it."""
    d = res("d", "directory", path="d")
    f = res("f", "file", path="d/f", content="x")
    acts = by_id(plan(desired(), observed(), inv(d, f)))
    assert acts["infra:d"].depends_on == ("infra:f",)
    assert acts["infra:f"].depends_on == ()


def test_a_path_taken_over_by_a_new_resource_waits_for_the_old_delete() -> None:
    """When a new id manages the path of a removed one, the create runs after the delete."""
    old = res("old", "file", path="etc/motd", content="x")
    new = res("new", "file", path="etc/motd", content="y")
    acts = by_id(plan(desired(new), observed(new=file_on_host("x")), inv(old)))
    assert acts["infra:new"].depends_on == ("infra:old",)


def test_a_removed_command_is_only_forgotten() -> None:
    """A command has nothing on the host to remove: its delete says so."""
    cmd = res("c", "command", run="x")
    [action] = plan(desired(), observed(), inv(cmd))
    assert action.summary == "delete command c (forget; nothing to remove)"


def test_other_reconcilers_inventory_is_ignored() -> None:
    """Inventory of another reconciler is never pruned by infra."""
    foreign = InventoryItem("vault", "kv", "secret", freeze({"path": "x", "kind": "file"}))
    assert plan(desired(), observed(), [foreign]) == []


def test_expected_link_is_relative_to_the_link_directory() -> None:
    """Link text is the target relative to the link's own directory."""
    assert expected_link("srv/current", "srv/app") == "app"
    assert expected_link("etc/app", "srv/app") == "../srv/app"
    assert expected_link("top", "a/b") == "a/b"


# ---- texts written without the JSON encoder (plan5k): the same bytes as `freeze` ----------------------
_AWKWARD = ["plain", "", 'quo"te', "back\\slash", "new\nline", "tab\t", "\x00\x1f", "é ü \u017f", "日本",
            "\u2028", "emoji 🙂", "</script>"]


def test_action_payload_and_inventory_text_equal_freeze_of_their_fields() -> None:
    """An action's change and a resource's inventory entry are canonical JSON, byte for byte what `freeze` makes
    of the same fields, whatever the strings hold (quotes, control and non-ASCII characters, surrogates)."""
    for i, text in enumerate(_AWKWARD):
        r = Resource(id=f"r{i}", kind="file", provider=text or "local", spec=freeze({"path": f"a/{text}x",
                     "content": text, "mode": "0644"}), prune=bool(i % 2), source=f"infra/{text}.ncl", line=1)
        data = {"kind": "file", "path": f"a/{text}x", "prune": bool(i % 2), "spec_hash": r.spec_hash,
                "provider": text or "local", "source": f"infra/{text}.ncl"}
        assert r.inventory_data() == freeze(data)
        [action] = plan(desired(r), observed(), [])
        assert action.change == freeze({
            "inventory": freeze(data), "nature": "create", "reason": "missing",
            "resource": {"id": r.id, "kind": "file", "provider": r.provider, "prune": r.prune, "source": r.source,
                         "spec": json.loads(r.spec)}})


def test_secret_name_shortcut_agrees_with_the_pattern() -> None:
    """Whether a path looks secret is what the pattern says, for paths the ASCII shortcut answers and for those
    it leaves to the pattern (Unicode case folding: the long s is an s, the Kelvin sign a K)."""
    from reconcilers.infra.diff import _SECRET_NAME, _secret_name

    stems = ["etc/app.conf", "etc/.env", "etc/.ENV.local", "x.env", "a/.env/b", "db.KEY", "db.key\n", "db.key\n\n",
             "k.pem.bak", "my-Token.txt", "passwd", "PassWord", "x/htpasswd", "shadow", "etc/\u017fecret",
             "srv.\u212aey",
             "tls/server.p12", "a.keystore", "a.jks ", "creds", "credential", "PRIVATE/x", "notes/secretary.md",
             "", "/", "env", "a.envy", "dir.env/x", "x.Pfx", "tokenizer.json", "K.pem", "İ/x", "pass"]
    for p in stems + [f"deep/{s}" for s in stems] + [s.upper() for s in stems]:
        assert _secret_name(p) == (_SECRET_NAME.search(p) is not None), repr(p)


def test_findings_of_one_observation_follow_the_inventory_and_desired_state_asked_with() -> None:
    """A plan asks for one observation's findings three times; the answer kept for it is given only for the same
    desired state and inventory: another inventory (the spec applied before: drift) or desired state gets its own."""
    fixed = res("fixed", "file", path="a", content="repo")
    other = res("other", "file", path="b", content="repo")
    obs = observed(fixed=file_on_host("host"), other=file_on_host("host"))
    d = desired(fixed)
    first = findings(d, obs, {})
    assert [(f.resource_id, f.nature) for f in first] == [("fixed", "change")]
    first.clear()                                     # a caller's list is its own
    assert [(f.resource_id, f.nature) for f in findings(d, obs, {})] == [("fixed", "change")]
    applied = {i.resource_id: i for i in inv(fixed)}
    assert [(f.resource_id, f.nature) for f in findings(d, obs, applied)] == [("fixed", "drift")]
    assert [(f.resource_id, f.nature) for f in findings(desired(fixed, other), obs, applied)] == [
        ("fixed", "drift"), ("other", "change")]
    assert [(f.resource_id, f.nature) for f in findings(d, obs, {})] == [("fixed", "change")]


def test_policy_text_equals_freeze_of_what_a_commit_can_change() -> None:
    """Change control's digest covers the text `freeze` makes of spec, labels, prune, drift and dependencies,
    byte for byte, with or without labels and dependencies and whatever the strings hold."""
    from reconcilers.infra.model import policy_text

    for i, text in enumerate(_AWKWARD):
        r = Resource(id=f"r{i}", kind="file", provider="local", spec=freeze({"path": "a", "content": text}),
                     depends_on=(f"d{text}", "b") if i % 2 else (), prune=bool(i % 3), drift=text or "detect",
                     labels=MappingProxyType({"team": text, "a": "1"} if i % 2 else {}))
        assert policy_text(r) == freeze([r.spec, dict(r.labels), r.prune, r.drift, r.depends_on])
