"""The pure diff: desired resources, what the host has, and inventory in; actions and drift out.

A difference between host and repo is *drift* when inventory shows the same spec was applied before (someone
changed the host); it is a *change* when the spec itself moved (someone changed the repo). Changes always
apply; drift is corrected or only reported, per the resource's `drift` setting.
"""

from __future__ import annotations

import difflib
import hashlib
import json
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from json.encoder import encode_basestring_ascii as json_str
from pathlib import PurePosixPath

from reconcilers.base import Action, ActionKind, InventoryItem, freeze
from reconcilers.infra import secretrefs as refs
from reconcilers.infra.local import content_hash
from reconcilers.infra.model import (
    CLOUD_KINDS,
    InfraDesired,
    InfraObserved,
    ObservedResource,
    Resource,
    applied_spec_hash,
)
from reconcilers.infra.providers import cloud_cascade, cloud_plan

NAME = "infra"


@dataclass(frozen=True, slots=True)
class Finding:
    """How one resource differs from the host: `change` (repo moved) or `drift` (host moved), and why."""

    resource_id: str
    nature: str                               # create | change | drift
    reason: str


def expected_link(path: str, target: str) -> str:
    """The relative link text the local provider writes for a symlink resource."""
    return os.path.relpath("/" + target, "/" + str(PurePosixPath(path).parent))


def _parents(path: str) -> list[str]:
    """"a/b/c" -> ["a/b", "a"] (string work: this runs once per resource per plan)."""
    parts = path.split("/")[:-1]
    return ["/".join(parts[:i]) for i in range(len(parts), 0, -1)]


def _host_differs(r: Resource, o: ObservedResource, expected: Mapping[str, tuple[str, str]]) -> str:
    """'' when the host matches the resource, else why not. A resource holding secrets compares keyed
    fingerprints: the host's against the one recorded when this very spec was applied (`expected`)."""
    if r.kind in CLOUD_KINDS:
        return cloud_plan.how(r, o)[0]
    f = r.fields
    if r.kind in ("file", "systemd_unit"):
        if not o.exists:
            return "missing"
        if o.kind != "file":
            return f"is a {o.kind}, not a file"
        if refs.SECRETS in f:
            applied = expected.get(r.id)
            if applied is None or applied[0] != r.spec_hash:
                return "secret not applied at this version"
            if o.content_hash != applied[1]:
                return "content differs"
        elif o.content_hash != content_hash(f["content"]):
            return "content differs"
        if o.mode != format(int(f["mode"], 8), "04o"):
            return f"mode {o.mode} is not {f['mode']}"
        return ""
    if r.kind == "directory":
        if not o.exists:
            return "missing"
        if o.kind != "directory":
            return f"is a {o.kind}, not a directory"
        if o.mode != format(int(f["mode"], 8), "04o"):
            return f"mode {o.mode} is not {f['mode']}"
        return ""
    if r.kind == "symlink":
        if not o.exists:
            return "missing"
        if o.kind != "symlink":
            return f"is a {o.kind}, not a symlink"
        if o.target != expected_link(f["path"], f["target"]):
            return f"points to {o.target}"
        return ""
    if r.kind == "command" and "creates" in f and not o.exists:
        return f"{f['creates']} is missing"
    return ""


ABSENT = ObservedResource(exists=False)         # what is observed of a path with nothing there


def findings(desired: InfraDesired, observed: InfraObserved,
             inventory: Mapping[str, InventoryItem]) -> list[Finding]:
    """Every desired resource that needs attention, classified (worked out once per observation, desired state
    and inventory: the same three asked again get the same answer, not a second pass over every resource)."""
    memo = observed.memo.get("findings")
    if memo is not None and memo[0] is desired and memo[1] == inventory:
        return list(memo[2])
    out = _findings(desired, observed, inventory)
    observed.memo["findings"] = (desired, dict(inventory), tuple(out))
    return out


def _findings(desired: InfraDesired, observed: InfraObserved,
              inventory: Mapping[str, InventoryItem]) -> list[Finding]:
    out: list[Finding] = []
    for rid, r in desired.resources.items():
        if rid in observed.assumed:           # applied before with this spec: in place by assumption
            continue
        inv = inventory.get(rid)
        known_hash = applied_spec_hash(inv.data) if inv else None
        if inv is not None and cloud_plan.moved(r, inv):   # applied on another provider: a change, never drift
            known_hash = None
        o = observed.resources.get(rid, ABSENT)
        differs = _host_differs(r, o, observed.expected)
        if r.kind == "command":
            if known_hash != r.spec_hash and not ("creates" in r.fields and o.exists):
                out.append(Finding(rid, "create" if inv is None else "change", "spec changed" if inv else "new"))
            elif differs:
                out.append(Finding(rid, "drift", differs))
            continue
        if not differs:
            continue
        if known_hash == r.spec_hash:
            out.append(Finding(rid, "drift", differs))
        else:
            out.append(Finding(rid, "create" if not o.exists else "change", differs))
    return out


def _change(r: Resource, f: Finding) -> str:
    """The action payload as canonical JSON; the resource's spec is already canonical JSON, so it is spliced
    in rather than decoded and encoded again (this runs once per changed resource)."""
    q = json_str                              # json.dumps of a str, without an encoder made per call
    resource = (f'{{"id":{q(r.id)},"kind":{q(r.kind)},"provider":{q(r.provider)},'
                f'"prune":{"true" if r.prune else "false"},"source":{q(r.source)},"spec":{r.spec}}}')
    return (f'{{"inventory":{q(r.inventory_data())},"nature":{q(f.nature)},'
            f'"reason":{q(f.reason)},"resource":{resource}}}')


def _summary(verb: str, r: Resource) -> str:
    f = r.fields
    if r.kind == "command":
        return f"{verb} command {r.id}: {f['run'][:60]}{_secrets_note(r)}"
    extra = f" ({f['mode']})" if "mode" in f else ""
    if r.kind == "symlink":
        extra = f" -> {f['target']}"
    return f"{verb} {r.kind} {r.path}{extra}{_secrets_note(r)}"


def _secrets_note(r: Resource) -> str:
    """` with secret kv/app/db#password hmac-sha256:...`: the references and their keyed fingerprints."""
    versions = r.fields.get(refs.VERSIONS) or {}
    if not versions:
        return ""
    return " with secret " + ", ".join(f"{ref} {fp}" for ref, fp in sorted(versions.items()))


def plan(desired: InfraDesired, observed: InfraObserved, inventory_items: list[InventoryItem]) -> list[Action]:
    """Actions that bring the host to `desired`, prune included. Pure."""
    inventory = {i.resource_id: i for i in inventory_items if i.reconciler == NAME}
    actions: dict[str, Action] = {}
    dirs: dict[str, str] = {}
    by_path: dict[str, str] = {}
    cloud: list[str] = []
    for r in desired.resources.values():       # one pass: this runs over every resource of every run
        if r.path:
            by_path[r.path] = r.id
        if r.kind == "directory":
            dirs[r.path] = r.id
        elif r.kind in CLOUD_KINDS:
            cloud.append(r.id)
    removed_paths: dict[str, str] = {}
    deletes: list[tuple[str, dict[str, object]]] = []
    for rid in sorted(inventory.keys() - desired.resources.keys()):
        item = inventory[rid]
        data = json.loads(item.data)
        if not data.get("prune", True):
            continue
        deletes.append((rid, data))
        if data.get("path"):
            removed_paths[str(data["path"])] = f"{NAME}:{rid}"
    resources = desired.resources
    for f in findings(desired, observed, inventory):
        r = resources[f.resource_id]
        if f.nature == "drift" and r.drift != "correct":
            continue
        fields = r.fields                     # (one lookup: this loop runs for every changed resource)
        action_id = f"{NAME}:{r.id}"
        deps = [f"{NAME}:{d}" for d in r.depends_on]
        if dirs:                              # (most plans manage no directory: no parents to walk)
            deps += [f"{NAME}:{dirs[p]}" for p in _parents(r.path) if p in dirs]
        deps += fields.get(refs.AFTER, ())    # the manifests it reads load first (one graph)
        if r.path in removed_paths:
            deps.append(removed_paths[r.path])
        if r.kind == "symlink" and fields["target"] in by_path:
            deps.append(f"{NAME}:{by_path[fields['target']]}")
        kind: ActionKind = "run" if r.kind == "command" else ("create" if f.nature == "create" else "update")
        text = ""
        cloud_kind = r.kind in CLOUD_KINDS
        if cloud_kind:                        # a cloud object gone behind our back is created again
            o = observed.resources.get(r.id, ABSENT)
            kind = "update" if o.exists else "create"
            text = cloud_plan.summary(kind, r, o) + (f" [drift: {f.reason}]" if f.nature == "drift" else "")
        text = text or _summary(kind, r)      # the verb is the action's kind
        compensation = None
        if r.kind == "command" and "compensate" in fields:
            comp = {"run": fields["compensate"], "timeout": fields.get("timeout", 300),
                    "env": fields.get("env", {})}
            if refs.SECRETS in fields:                # tokens in env: resolved when the compensation runs
                comp[refs.SECRETS] = fields[refs.SECRETS]
            compensation = freeze(comp)
        actions[r.id] = Action(
            id=action_id, reconciler=NAME, kind=kind, target=r.id,
            summary=f"{text} [{f.reason}]" if f.nature == "drift" and not cloud_kind else text,
            change=_change(r, f),
            depends_on=tuple(sorted({d for d in deps if d != action_id})) if deps else (),
            compensation=compensation)
    # A removed folder goes after everything removed beneath it (one walk up per removed path).
    deleted_at = {str(data["path"]): rid for rid, data in deletes if data.get("path")}
    children: dict[str, list[str]] = {}
    for rid, data in deletes:
        for parent in _parents(str(data.get("path", ""))):
            if parent in deleted_at:
                children.setdefault(deleted_at[parent], []).append(f"{NAME}:{rid}")
    for rid, data in deletes:
        path = str(data.get("path", ""))
        what = f"{data.get('kind')} {path}" if path else f"command {rid} (forget; nothing to remove)"
        if data.get("kind") in CLOUD_KINDS:
            what = f"{data.get('kind')} {rid} on {data.get('provider')}"
        actions[f"-{rid}"] = Action(
            id=f"{NAME}:{rid}", reconciler=NAME, kind="delete", target=rid, summary=f"delete {what}",
            change=freeze({"inventory": data}), depends_on=tuple(sorted(children.get(rid, ()))))
    # Cloud: deletes after what depended on them; moves between providers; objects tagged ours, unclaimed.
    planned = {a.target for a in actions.values() if a.kind != "delete"}
    # Only a cloud resource can have moved between providers: the others' entries are not looked at.
    extra = cloud_plan.moves(desired, {rid: inventory[rid] for rid in cloud if rid in inventory}, planned) \
        + cloud_plan.orphans(observed)
    ordered = cloud_plan.delete_order([a for a in actions.values() if a.kind == "delete"] + extra)
    for a in ordered:
        actions[a.id if a.id.startswith(f"{NAME}:~") or "@" in a.id else f"-{a.target}"] = a
    # A replaced cloud object takes what names it along (old ones deleted first, in reverse order).
    cloud_cascade.cascade(desired, observed, actions)
    # Debris of an interrupted apply (a temporary file never renamed): removed, whatever else happens.
    for stray in observed.strays:
        actions[f"~{stray}"] = Action(
            id=f"{NAME}:~tmp:{stray}", reconciler=NAME, kind="delete", target=stray,
            summary=f"remove stray temporary file {stray} (an interrupted apply left it)",
            change=freeze({"stray": stray}))
    return list(actions.values())


# ---- rendering: expected vs found, for people reading a plan or a drift report --------------------------
# Plans and checkpoints keep no file contents: what a change does to a file is worked out here, at plan time,
# from the desired spec and the host (or the base revision, for a pull request's plan).

MAX_DIFF_BYTES = 64 * 1024        # larger files are compared by fingerprint only
MAX_DIFF_LINES = 120              # lines of unified diff shown per resource
MAX_DIFF_CHARS = 8_000            # and characters (a PR comment holds 65,000 in all)
MAX_LINE_CHARS = 300
_SECRET_NAME = re.compile(r"(^|/)(\.env(\..*)?|.*\.(key|pem|p12|pfx|jks|keystore)|"
                          r".*(secret|token|passw|credential|private|htpasswd|shadow).*)$", re.IGNORECASE)
_SECRET_CONTENT = (b"PRIVATE KEY-----", b"BEGIN OPENSSH PRIVATE", b"BEGIN PGP PRIVATE")
# What _SECRET_NAME needs in an ASCII path (lowercased): one of the words, or one of the endings (`$` also
# matches before a final newline). A path with none cannot match, and the regex (~25 us a path, run for every
# changed file of a plan) is skipped; a non-ASCII path always meets the regex (Unicode case folding: U+017F is 's').
_SECRET_WORDS = (".env", "secret", "token", "passw", "credential", "private", "htpasswd", "shadow")
_SECRET_WORD = re.compile("|".join(map(re.escape, _SECRET_WORDS)))     # any of them, as a substring
_SECRET_ENDS = (".key", ".pem", ".p12", ".pfx", ".jks", ".keystore")


def _secret_name(path: str) -> bool:
    """`_SECRET_NAME.search(path)`, with the paths that cannot match answered without the regex."""
    if path.isascii():
        low = path.lower()
        if _SECRET_WORD.search(low) is None and not low.removesuffix("\n").endswith(_SECRET_ENDS):
            return False
    return _SECRET_NAME.search(path) is not None


def fingerprint(data: bytes) -> str:
    """A short content fingerprint (`sha256:` and 12 hex digits): enough to tell versions apart."""
    return "sha256:" + hashlib.sha256(data).hexdigest()[:12]


def sensitive(path: str, mode: str, *contents: bytes | None) -> bool:
    """True when a file may carry a secret, so only fingerprints are shown: not readable by others (0600,
    0640, ...), a secret-like name (.env, *.key, *token*, ...), or a private key inside."""
    if mode and not int(mode, 8) & 0o004:
        return True
    if _secret_name(path):
        return True
    for c in contents:                        # (loops: this runs for every changed file of a plan)
        if c is not None:
            for marker in _SECRET_CONTENT:
                if marker in c:
                    return True
    return False


def unified(path: str, found: bytes, expected: bytes, found_label: str, expected_label: str) -> str:
    """A bounded unified diff of two text contents, or a one-line reason why none is shown."""
    if len(found) > MAX_DIFF_BYTES or len(expected) > MAX_DIFF_BYTES:
        return f"(not shown: over {MAX_DIFF_BYTES // 1024} KiB; compare the fingerprints)"
    try:
        old, new = found.decode(), expected.decode()
    except UnicodeDecodeError:
        return "(binary content differs; compare the fingerprints)"
    if "\x00" in old or "\x00" in new:
        return "(binary content differs; compare the fingerprints)"
    lines = list(difflib.unified_diff(old.splitlines(), new.splitlines(), f"{path} ({found_label})",
                                      f"{path} ({expected_label})", lineterm="", n=2))
    if not lines:
        return "(only line endings or a final newline differ)"
    out: list[str] = []
    size = 0
    for i, line in enumerate(lines):
        line = line if len(line) <= MAX_LINE_CHARS else line[:MAX_LINE_CHARS] + " …"
        if i >= MAX_DIFF_LINES or size + len(line) > MAX_DIFF_CHARS:
            out.append(f"… {len(lines) - i} more diff line(s) not shown")
            break
        out.append(line)
        size += len(line) + 1
    return "\n".join(out)


def _state(r_kind: str, o: ObservedResource, content: bytes | None) -> dict[str, object]:
    """The found side as JSON."""
    if not o.exists:
        return {"exists": False}
    out: dict[str, object] = {"exists": True, "type": o.kind}
    if o.kind in ("file", "directory") and o.mode:
        out["mode"] = o.mode
    if o.kind == "symlink":
        out["target"] = o.target
    if o.kind == "file" and content is not None:
        out |= {"content": fingerprint(content), "size": len(content)}
    elif o.kind == "file" and o.content_hash.startswith("hmac-"):
        out["content"] = o.content_hash        # a keyed fingerprint (the file holds a secret)
    return out


def explain(r: Resource, o: ObservedResource, f: Finding, found: bytes | None, *,
            found_label: str = "host", expected_label: str = "revision") -> dict[str, object]:
    """Expected vs found for one resource that needs attention, with a bounded unified diff of text content
    (a fingerprint only when the file may carry a secret). `found` is the current content, when read."""
    spec = r.fields
    expected: dict[str, object] = {"exists": True}
    diff_text = ""
    secret = False
    if r.kind in ("file", "systemd_unit") and refs.SECRETS in spec:
        # The bytes are known only at apply: the references and keyed fingerprints of their values stand in.
        expected |= {"type": "file", "mode": format(int(spec["mode"], 8), "04o"),
                     "secrets": dict(spec.get(refs.VERSIONS) or {})}
        secret = True
        found = None
    elif r.kind in ("file", "systemd_unit"):
        data = str(spec["content"]).encode()
        mode = format(int(spec["mode"], 8), "04o")
        expected |= {"type": "file", "mode": mode, "content": fingerprint(data), "size": len(data)}
        secret = sensitive(r.path, mode, data, found) or (o.kind == "file" and sensitive("", o.mode))
        if found is not None and o.kind == "file" and found != data:
            diff_text = ("(content may carry a secret: compare the fingerprints)" if secret
                         else unified(r.path, found, data, found_label, expected_label))
        # A new file has no diff: its whole content is in the commit (expected: fingerprint and size). A diff of
        # every line of every new file cost a fifth of a 5,000-resource plan and was shown nowhere.
    elif r.kind == "directory":
        expected |= {"type": "directory", "mode": format(int(spec["mode"], 8), "04o")}
    elif r.kind == "symlink":
        expected |= {"type": "symlink", "target": expected_link(spec["path"], spec["target"])}
    elif r.kind == "command":
        expected = {"creates": spec["creates"]} if "creates" in spec else {"runs": True}
    detail: dict[str, object] = {
        "resource": r.id, "kind": r.kind, "path": r.path, "source": r.source, "line": r.line,
        "nature": f.nature, "reason": f.reason, "sensitive": secret, "expected": expected,
        "found": _state(r.kind, o, found), "diff": diff_text}
    # Rendered here, so the kernel's reports show the lines without knowing this reconciler's detail shape.
    detail["differences"] = differences(detail)
    return detail


def differences(detail: dict[str, object]) -> list[str]:
    """`what: expected X, found Y` lines for the attributes that differ (the diff is rendered separately)."""
    exp, got = detail["expected"], detail["found"]
    assert isinstance(exp, dict) and isinstance(got, dict)
    if not got.get("exists"):
        return [f"absent on the host (expected a {exp.get('type', detail['kind'])})"] if "type" in exp else []
    out = []
    if exp.get("type") and got.get("type") != exp["type"]:
        out.append(f"type: expected {exp['type']}, found {got.get('type')}")
    for key in ("mode", "target", "content"):
        if key in exp and key in got and exp[key] != got[key]:
            out.append(f"{key}: expected {exp[key]}, found {got[key]}")
    return out
