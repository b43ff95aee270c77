"""Cedar change control: may this signer create, change or delete these resources?

Teams commit `policies/**/*.cedar`. Before a revision is applied, every changed resource is authorized with
cedarpy against those policies and Stratum's schema (nickel/stratum.cedarschema); the caller judges changes to
`policies/` itself with the policies of the last good revision (no self-approval). A repo without policy files
has change control off. Everything here is pure except reading the snapshot.

cedarpy reports errors without a source span, so `daemon.control.cedar_locate` finds where they point. Policy ids
are the `@id` annotation or "<file>:<line>" of the `permit`/`forbid` keyword, so every decision points into the
repo."""

from __future__ import annotations

import functools
import json
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, Literal

from daemon.control.cedar_locate import Lines, Token, effect_offset, quoted_offset, statements, syntax_error_offset
from daemon.errors import InputError
from daemon.package_data import nickel_dir
from reconcilers.base import PolicyResource as PolicyResource  # re-exported: policies judge the contract's records
from reconcilers.base import Problem

if TYPE_CHECKING:
    import cedarpy  # imported when used (_cedar below)

    from daemon.git.source import Snapshot

POLICY_DIR = "policies"
SCHEMA_FILE = "stratum.cedarschema"
MAX_POLICY_FILES = 1000
MAX_POLICY_BYTES = 1024 * 1024

ChangeAction = Literal["create", "change", "delete"]
_STATUS: Mapping[str, ChangeAction] = {"added": "create", "renamed": "create", "copied": "create",
                                       "deleted": "delete"}  # anything else (modified, typechange) is a change
_NO_TEAMS: Mapping[str, Sequence[str]] = MappingProxyType({})
_ERRED = re.compile(r"^error while evaluating policy `([^`]*)`")
_SYNTAX_HINT = "fix the Cedar syntax at this position; every policy ends with `;`"
_SCHEMA_HINT = ("resources have kind, path, provider, reconciler and source; labels are tags "
                '(resource.hasTag("env") && resource.getTag("env") == "prod"); context has branch, signed, '
                "changed_paths; see nickel/stratum.cedarschema")


@dataclass(frozen=True, slots=True)
class Change:
    """One resource a revision creates, changes or deletes. `before` is the old state of a changed resource:
    a change is allowed only when the policies allow it on both sides (so dropping a `prod` label in the same
    commit does not dodge a forbid)."""

    action: ChangeAction
    resource: PolicyResource
    before: PolicyResource | None = None


@dataclass(frozen=True, slots=True)
class ChangeContext:
    """The Cedar request context: the branch, whether the commit is signed, and every path it changes."""

    branch: str
    signed: bool
    changed_paths: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class PolicyInfo:
    """Where one loaded policy lives."""

    id: str
    effect: str                               # "permit" | "forbid"
    path: str
    line: int

    def describe(self) -> str:
        """`prod-freeze (policies/base.cedar:12)`, or just the location when the id is the location."""
        where = f"{self.path}:{self.line}"
        return where if self.id == where else f"{self.id} ({where})"


@dataclass(frozen=True, slots=True)
class Decision:
    """The verdict on one change: allowed or not, the policies that determined it, and one human sentence."""

    change: Change
    allowed: bool
    policies: tuple[str, ...]
    reason: str

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        r = self.change.resource
        return {"action": self.change.action, "resource": r.uid, "kind": r.kind, "path": r.path,
                "source": r.source, "line": r.line, "allowed": self.allowed, "policies": list(self.policies),
                "reason": self.reason}


class Policies:
    """A loaded, validated policy set. `bool()` is False when the repo has no policy files (change control off);
    `complete` is False when some file failed to load, and then `authorize` denies everything rather than judge
    with part of the rules.

    Cedar evaluates every policy of a set for every request (~3 µs each), so `for_request` hands out the subset
    whose principal and action scopes can match, parsed once per (principal, teams, action) and cached: a policy
    whose scope cannot match is never satisfied and never fails, so leaving it out changes no decision."""

    __slots__ = ("_bodies", "_info", "_subsets", "complete", "files", "ids")

    def __init__(self, files: Sequence[str] = (), policies: Mapping[str, tuple[PolicyInfo, Any]] | None = None,
                 complete: bool = True) -> None:
        policies = policies or {}
        self.files: tuple[str, ...] = tuple(files)
        self.ids: tuple[str, ...] = tuple(policies)
        self.complete = complete
        self._info = {pid: info for pid, (info, _) in policies.items()}
        self._bodies: dict[str, Any] = {pid: body for pid, (_, body) in policies.items()}
        self._subsets: dict[tuple[str, frozenset[str], str], tuple[cedarpy.PolicySet, bool]] = {}

    def __bool__(self) -> bool:
        return bool(self.files)

    def __len__(self) -> int:
        return len(self.ids)

    @property
    def reads_changed_paths(self) -> bool:
        """True when some policy may read `context.changed_paths` (what makes a request cost ~4 µs a path)."""
        return any(_reads_paths(body) for body in self._bodies.values())

    def info(self, policy_id: str) -> PolicyInfo | None:
        """Where a policy lives, by id."""
        return self._info.get(policy_id)

    def describe(self, policy_id: str) -> str:
        """A policy id with its file:line, for reasons."""
        info = self._info.get(policy_id)
        return info.describe() if info else policy_id

    def for_request(self, principal: str, teams: frozenset[str], action: str) -> tuple[cedarpy.PolicySet, bool]:
        """The parsed policies that can apply to `principal` (a member of `teams`) doing `action`, and whether
        any of them reads `context.changed_paths` (Cedar parses the context once per request, ~4 µs a path)."""
        key = (principal, teams, action)
        found = self._subsets.get(key)
        if found is None:
            user = ("Stratum::User", principal)
            groups = frozenset(("Stratum::Team", t) for t in teams)
            chosen = {pid: body for pid, body in self._bodies.items()
                      if _scope_can_match(body.get("principal", {}), user, groups)
                      and _scope_can_match(body.get("action", {}), ("Stratum::Action", action), frozenset())}
            est = {"staticPolicies": chosen, "templates": {}, "templateLinks": []}
            found = (_cedar().PolicySet.from_json_str(json.dumps(est)), any(map(_reads_paths, chosen.values())))
            if len(self._subsets) >= 256:
                self._subsets.clear()  # many principals in one revision's life: start over rather than grow
            self._subsets[key] = found
        return found


def _euid(value: Any) -> tuple[str, str] | None:
    return (str(value["type"]), str(value["id"])) if isinstance(value, Mapping) and "id" in value else None


def _scope_can_match(scope: Mapping[str, Any], uid: tuple[str, str], parents: frozenset[tuple[str, str]]) -> bool:
    """False only when a principal or action scope (Cedar JSON) can never match `uid`; unknown forms match."""
    op = scope.get("op")
    if op == "==" and "entity" in scope:
        return _euid(scope["entity"]) == uid
    if op == "in" and ("entity" in scope or "entities" in scope):
        targets = [_euid(t) for t in ([scope["entity"]] if "entity" in scope else scope["entities"])]
        return any(t == uid or t in parents for t in targets)
    if op == "is" and "entity_type" in scope:
        inner = scope.get("in")
        return scope["entity_type"] == uid[0] and (
            not isinstance(inner, Mapping) or _scope_can_match({"op": "in", **inner}, uid, parents))
    return True


def _reads_paths(body: Any) -> bool:
    """True when a policy (Cedar JSON) may read `context.changed_paths`: it names it, or uses `context` other
    than through one attribute (`context.branch`, `context has signed`)."""
    if "changed_paths" in json.dumps(body):
        return True

    def bare(node: Any) -> bool:
        if isinstance(node, list):
            return any(bare(v) for v in node)
        if not isinstance(node, dict):
            return False
        for key, value in node.items():
            if key in (".", "has") and isinstance(value, dict) and value.get("left") == {"Var": "context"}:
                continue
            if (key == "Var" and value == "context") or bare(value):
                return True
        return False

    return bare(body.get("conditions", []))


@functools.cache
def _cedar() -> Any:
    """cedarpy, imported when a policy is parsed or judged: a repository without policies/ (and a verb that
    judges none) does not load its 16 MB library and typed node classes (~50 ms of every `stratum apply`)."""
    import cedarpy

    return cedarpy


@functools.cache
def schema() -> cedarpy.Schema:
    """Stratum's Cedar schema (nickel/stratum.cedarschema), parsed once per process."""
    parsed: cedarpy.Schema = _cedar().Schema.from_str((nickel_dir() / SCHEMA_FILE).read_text(encoding="utf-8"))
    return parsed


# -- changes --------------------------------------------------------------------------------------------------
def diff_resources(old: Iterable[PolicyResource], new: Iterable[PolicyResource]) -> list[Change]:
    """The changes from `old` to `new`, by uid: create (new), change (new, with `before`), delete (old)."""
    old, new = list(old), list(new)
    # The very same (frozen) object on both sides is unchanged: reconcilers hand out one object per unchanged
    # resource from one revision to the next, so a one-file commit among 20,000 diffs one resource, not 20,000.
    # Uids are unique on each side, so what is left pairs up exactly as the whole would (order kept).
    kept = set(map(id, old)) & set(map(id, new))
    if kept:
        old = [r for r in old if id(r) not in kept]
        new = [r for r in new if id(r) not in kept]
    before = {r.uid: r for r in old}
    after = {r.uid: r for r in new}
    out: list[Change] = []
    for uid, r in after.items():
        prev = before.get(uid)
        if prev is None:
            out.append(Change("create", r))
        elif prev.facts() != r.facts():
            out.append(Change("change", r, before=prev))
    out.extend(Change("delete", r) for uid, r in before.items() if uid not in after)
    return out


def policy_file_changes(changed: Iterable[tuple[str, str] | tuple[str, str, str]]) -> list[Change]:
    """Changes to files under `policies/`, from (path, status) pairs or `GitSource.changes` triples
    (path, blob id, status); statuses are added, modified, deleted or renamed (the new path)."""
    out: list[Change] = []
    for item in changed:
        path, status = item[0], item[-1]
        if not path.startswith(POLICY_DIR + "/"):
            continue
        digest = item[1] if len(item) == 3 else ""
        res = PolicyResource("policy", path, "policy", path=path, digest=digest, source=path)
        out.append(Change(_STATUS.get(status, "change"), res))
    return out


# -- loading --------------------------------------------------------------------------------------------------
def load_policies(snap: Snapshot) -> tuple[Policies, list[Problem]]:
    """Read, parse and validate every `policies/**/*.cedar` of the commit; problems carry file:line:col."""
    entries = snap.entries(POLICY_DIR, suffixes=(".cedar",))
    files = [e.path for e in entries]
    if len(entries) > MAX_POLICY_FILES:
        return Policies(files, complete=False), [Problem(
            f"{len(entries)} policy files, over the limit of {MAX_POLICY_FILES}", path=POLICY_DIR,
            reconciler="policy", hint="merge policies into fewer files")]
    texts: dict[str, str] = {}
    problems: list[Problem] = []
    for entry in entries:
        if entry.size > MAX_POLICY_BYTES:
            problems.append(Problem(f"policy file is {entry.size} bytes, over the {MAX_POLICY_BYTES}-byte limit",
                                    path=entry.path, reconciler="policy", hint="split it into several files"))
            continue
        try:
            texts[entry.path] = snap.text(entry, MAX_POLICY_BYTES)
        except InputError as err:
            problems.append(Problem(err.what, path=entry.path, reconciler="policy", hint=err.hint))
    loaded, more = _load_all(texts)
    problems.extend(more)
    return Policies(files, loaded, complete=not problems), problems


def parse_policies(texts: Mapping[str, str]) -> tuple[Policies, list[Problem]]:
    """A policy set from file texts (path -> Cedar), for callers that hold the texts already."""
    loaded, problems = _load_all(texts)
    return Policies(sorted(texts), loaded, complete=not problems), problems


def _load_all(texts: Mapping[str, str]) -> tuple[dict[str, tuple[PolicyInfo, Any]], list[Problem]]:
    """Every file's policies by id. A file with any problem is left out (the set is then incomplete); an `@id`
    used twice is a problem at its second use."""
    loaded: dict[str, tuple[PolicyInfo, Any]] = {}
    problems: list[Problem] = []
    for path in sorted(texts):
        policies, found = _load_file(path, texts[path])
        for pid, (info, _) in policies.items():
            if pid in loaded:
                first = loaded[pid][0]
                found.append(Problem(f"duplicate policy id {pid!r}: also used at {first.path}:{first.line}",
                                     path=path, line=info.line, reconciler="policy", hint="give each @id once"))
        problems.extend(found)
        if not found:
            loaded.update(policies)
    return loaded, problems


def _load_file(path: str, text: str) -> tuple[dict[str, tuple[PolicyInfo, Any]], list[Problem]]:
    """One file's policies by id (parse, templates, ids, schema) and its problems."""
    lines = Lines(text)
    stmts = statements(text)

    def problem(message: str, offset: int, hint: str) -> Problem:
        line, col = lines.at(offset)
        return Problem(message, path=path, line=line, col=col, reconciler="policy", hint=hint)

    try:
        est = json.loads(_cedar().policies_to_json_str(text))
    except ValueError as err:
        return {}, [problem(f"Cedar syntax error: {err}", syntax_error_offset(text, stmts), _SYNTAX_HINT)]
    parsed: dict[str, Any] = {**est.get("staticPolicies", {}), **est.get("templates", {})}
    # Cedar numbers policies policy0, policy1, ... in text order: the n-th statement is policy n.
    order = sorted(parsed, key=lambda pid: int(pid.removeprefix("policy")))
    if len(order) != len(stmts):
        stmts = [[] for _ in order]  # cannot happen with Cedar's grammar; lose the positions, not the policies
    out: dict[str, tuple[PolicyInfo, Any]] = {}
    by_cedar_id: dict[str, tuple[str, list[Token]]] = {}
    problems: list[Problem] = []
    for pid, stmt in zip(order, stmts, strict=True):
        offset = effect_offset(stmt)
        line, col = lines.at(offset)
        where = f"{path}:{line}"
        ident = where if where not in out else f"{where}:{col}"
        annotations = parsed[pid].get("annotations") or {}
        if "id" in annotations:
            ident = str(annotations["id"] or "")
            if not ident:
                problems.append(problem("@id is empty", offset, 'write @id("a-name") or drop the annotation'))
        if ident in out:
            problems.append(problem(f"duplicate policy id {ident!r}", offset, "give each @id once"))
        by_cedar_id[pid] = (ident, stmt)
        if pid in est.get("templates", {}):
            problems.append(problem("templates (?principal / ?resource slots) are not supported here", offset,
                                    'name the principal or team: principal in Stratum::Team::"ops"'))
        out[ident] = (PolicyInfo(ident, str(parsed[pid]["effect"]), path, line), parsed[pid])
    seen: set[tuple[str, str]] = set()
    for error in _cedar().validate_policies(text, schema()).errors:
        ident, stmt = by_cedar_id.get(error.policy_id, (error.policy_id or "?", []))
        message = re.sub(r"^for policy `[^`]*`, ", "", error.error)
        if (ident, message) in seen:
            continue  # Cedar repeats an error once per action the policy may apply to
        seen.add((ident, message))
        offset = quoted_offset(text, stmt, message)
        problems.append(problem(f"policy {ident} does not fit Stratum's schema: {message}", offset, _SCHEMA_HINT))
    return out, problems


# -- deciding -------------------------------------------------------------------------------------------------
def authorize(policies: Policies, principal: str, changes: Sequence[Change], context: ChangeContext,
              teams: Mapping[str, Sequence[str]] = _NO_TEAMS) -> list[Decision]:
    """One decision per change, in order. Entities are built once per call and every request goes to Cedar in
    batches; an evaluation error denies, a forbid beats any permit, and no permit means deny."""
    if not policies:
        return [_unguarded(c) for c in changes]
    if not policies.complete:
        return [Decision(c, False, (), "denied: the policies in force did not all load, so no change can be "
                         "judged (see the policy problems of that revision)") for c in changes]
    # 1. What to judge: each change's resource, and the old state of a change whose visible facts differ.
    items = [(i, c.resource, False) for i, c in enumerate(changes)]
    items += [(i, c.before, True) for i, c in enumerate(changes)
              if c.before is not None and c.before.visible() != c.resource.visible()]
    # 2. Rounds hold one version per uid (Cedar entities are unique): usually one round, two with `before`.
    rounds: list[dict[str, list[tuple[int, PolicyResource, bool]]]] = []
    for i, res, old in items:
        for batch in rounds:
            same = batch.get(res.uid)
            if same is None or same[0][1].visible() == res.visible():
                batch.setdefault(res.uid, []).append((i, res, old))
                break
        else:
            rounds.append({res.uid: [(i, res, old)]})
    # 3. Evaluate each round with one entity set, one cedarpy call per action over the policies that can apply.
    mine = frozenset(t for t in teams if principal in teams[t])
    base = _people(principal, teams, mine)
    full = {"branch": context.branch, "signed": context.signed, "changed_paths": sorted(set(context.changed_paths))}
    lean = {**full, "changed_paths": []}
    verdicts: dict[int, list[tuple[bool, cedarpy.AuthzResult]]] = {}
    try:
        for batch in rounds:
            entities = _cedar().Entities.from_json_str(
                json.dumps(base + [group[0][1].entity() for group in batch.values()]), schema())
            by_action: dict[str, list[tuple[int, PolicyResource, bool]]] = {}
            for item in (item for group in batch.values() for item in group):
                by_action.setdefault(changes[item[0]].action, []).append(item)
            for action, flat in by_action.items():
                policy_set, reads_paths = policies.for_request(principal, mine, action)
                ctx = full if reads_paths else lean
                requests = [{"principal": {"type": "Stratum::User", "id": principal},
                             "action": {"type": "Stratum::Action", "id": action},
                             "resource": {"type": "Stratum::Resource", "id": res.uid}, "context": ctx}
                            for _, res, _ in flat]
                for (i, _, old), result in zip(flat, _cedar().is_authorized_batch(requests, policy_set, entities),
                                               strict=True):
                    verdicts.setdefault(i, []).append((old, result))
    except ValueError as err:  # cedarpy refused the entities or a request: judge nothing rather than crash
        return [Decision(c, False, (), f"denied: Cedar could not evaluate the request: {err}") for c in changes]
    # 4. A change is allowed when every version of it is.
    return [_decide(policies, principal, c, sorted(verdicts[i], key=lambda v: v[0])) for i, c in enumerate(changes)]


def _people(principal: str, teams: Mapping[str, Sequence[str]], mine: frozenset[str]) -> list[dict[str, Any]]:
    """The principal (a member of its teams) and every team, as Cedar JSON entities."""
    parents = [{"type": "Stratum::Team", "id": t} for t in sorted(mine)]
    return [{"uid": {"type": "Stratum::User", "id": principal}, "attrs": {}, "parents": parents},
            *({"uid": {"type": "Stratum::Team", "id": t}, "attrs": {}, "parents": []} for t in sorted(teams))]


def _unguarded(change: Change) -> Decision:
    if change.resource.reconciler == "policy":
        return Decision(change, True, (), "bootstrap: no policies in force, so policy files may be added")
    return Decision(change, True, (), f"change control is off: the repo has no {POLICY_DIR}/*.cedar")


def _decide(policies: Policies, principal: str, change: Change,
            verdicts: list[tuple[bool, cedarpy.AuthzResult]]) -> Decision:
    """The decision from the new state's result (first) and the old state's (when judged)."""
    for old, result in verdicts:
        suffix = ", judged on the resource as it was before the change" if old else ""
        diag = result.diagnostics
        if diag.errors:
            failed = tuple(dict.fromkeys(pid for e in diag.errors for pid in _ERRED.findall(e)[:1]))
            detail = "; ".join(_ERRED.sub("", e).removeprefix(": ") for e in diag.errors)
            names = ", ".join(policies.describe(p) for p in failed) or "a policy"
            return Decision(change, False, failed, f"denied because {names} failed to evaluate: {detail}{suffix}")
        ids = tuple(sorted(diag.reasons))
        if not result.allowed:
            if ids:
                noun = "policy" if len(ids) == 1 else "policies"
                names = ", ".join(policies.describe(p) for p in ids)
                return Decision(change, False, ids, f"denied by forbid {noun} {names}{suffix}")
            return Decision(change, False, (), f"no permit policy allows {principal} to {change.action} "
                                                 f"{change.resource.uid}{suffix}")
    ids = tuple(sorted(verdicts[0][1].diagnostics.reasons))
    noun = "policy" if len(ids) == 1 else "policies"
    return Decision(change, True, ids, f"allowed by permit {noun} {', '.join(policies.describe(p) for p in ids)}")
