"""Admission: may this commit change what it changes? Provenance (signatures) and Cedar change control.

Runs between validate and plan (DESIGN.md, data flow step 4) for every commit the daemon applies, and for
the pull-request plan between two revisions:

1. Provenance. With `[signing]` set up on the host, the commit's signature is verified against the
   allowed signers (SSH) or keyring (GPG). `require_signed_commits` rejects an unsigned or badly signed
   commit. The principal is the verified signer, else the author's email.
2. What changes. Resources are diffed by spec digest against the base (the last good revision): create,
   change, delete. Policy files that change are changes of their own.
3. Change control. Resource changes are authorized by the revision's own policies; changes to
   `policies/` by the base revision's policies, so a commit can never approve itself. No policies: off.

A denied change or a failed signature check is a Problem: the revision is rejected as a whole.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, Protocol

from daemon.control.policy import (
    Change,
    ChangeContext,
    Decision,
    Policies,
    PolicyResource,
    authorize,
    diff_resources,
    policy_file_changes,
)
from daemon.control.signing import SigningPolicy, Verification, signing_policy_from_settings
from daemon.errors import SettingsError
from reconcilers.base import AnyReconciler, Problem

MAX_RANGE_COMMITS = 1000
MAX_PATH_WORK = 20_000_000   # changes x changed paths x commits: ~4 µs per path per request, so about a minute

if TYPE_CHECKING:
    from daemon.git.source import CommitInfo, GitSource, Snapshot
    from daemon.settings import Settings


class Loaded(Protocol):
    """What admission reads of a loaded revision (daemon.run.pipeline.Loaded), declared here so the two modules
    do not import each other."""

    @property
    def snapshot(self) -> Snapshot: ...

    @property
    def desired(self) -> Mapping[str, Any]: ...

    @property
    def policies(self) -> Policies | None: ...

@dataclass(frozen=True, slots=True)
class AdmissionSettings:
    """The host's provenance and change-control settings (`[signing]`, `[policy]` in stratumd.toml)."""

    signing: SigningPolicy = field(default_factory=SigningPolicy)
    teams: Mapping[str, tuple[str, ...]] = field(default_factory=lambda: MappingProxyType({}))
    branch: str = "main"


def admission_settings(settings: Settings, where: str = "") -> AdmissionSettings:
    """Build (and check) admission settings from host settings; raises SettingsError naming the key."""
    signing = settings.sections.get("signing", {})
    policy = settings.sections.get("policy", {})
    if not isinstance(signing, Mapping) or not isinstance(policy, Mapping):
        raise SettingsError("[signing] and [policy] must be tables", where=where)
    unknown = set(policy) - {"teams"}
    if unknown:
        raise SettingsError(f"unknown key(s) in [policy]: {', '.join(sorted(unknown))}", where=where,
                            hint="[policy] takes `teams = { ops = [\"alice@example.com\"] }`")
    teams_raw = policy.get("teams", {})
    if not isinstance(teams_raw, Mapping) or not all(
            isinstance(v, list) and all(isinstance(u, str) for u in v) for v in teams_raw.values()):
        raise SettingsError("[policy] teams must map team names to lists of user ids", where=where,
                            hint='teams = { ops = ["alice@example.com"] }')
    teams = MappingProxyType({str(k): tuple(v) for k, v in teams_raw.items()})
    return AdmissionSettings(signing_policy_from_settings(signing, where), teams, settings.branch)


@dataclass(frozen=True, slots=True)
class Admission:
    """Who made a revision, whether that is proven, and what change control decided."""

    principal: str
    signed: bool
    verification: Verification | None
    decisions: tuple[Decision, ...] = ()
    problems: tuple[Problem, ...] = ()
    control: str = "off"                      # off | on: whether any policy was in force
    authors: tuple[Author, ...] = ()          # every commit since the base, oldest first

    @property
    def denied(self) -> tuple[Decision, ...]:
        """The decisions that reject the revision."""
        return tuple(d for d in self.decisions if not d.allowed)

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready form (for plans and the run record)."""
        v = self.verification
        return {
            "principal": self.principal, "signed": self.signed, "control": self.control,
            "signature": None if v is None else {"signed": v.signed, "valid": v.valid, "method": v.method,
                                                 "principal": v.principal, "key": v.key, "reason": v.reason},
            "decisions": [d.as_dict() for d in self.decisions],
            "commits": [a.as_dict() for a in self.authors],
            "problems": [p.as_dict() for p in self.problems],
        }


def _resources(reconcilers: Mapping[str, AnyReconciler], loaded: Loaded | None, name: str) -> list[PolicyResource]:
    if loaded is None or name not in loaded.desired:
        return []
    return list(reconcilers[name].policy_resources(loaded.desired[name]))


@dataclass(frozen=True, slots=True)
class Author:
    """The provenance of one commit in the range being admitted."""

    commit: str
    principal: str                            # verified signer, else `key:<fingerprint>`, else author email
    signed: bool
    verification: Verification | None

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        return {"commit": self.commit, "principal": self.principal, "signed": self.signed}


def _author(source: GitSource, info: CommitInfo, settings: AdmissionSettings) -> Author:
    verification = source.verify_signature(info.id, settings.signing) if settings.signing.enabled else None
    signed = bool(verification and verification.valid)
    if signed and verification is not None:
        # A valid signature names who signed; a key without an email uid is that key, never the claimed author.
        principal = verification.principal or f"key:{verification.key}"
    else:
        principal = info.email
    return Author(info.id, principal, signed, verification)


def _range(source: GitSource, revision: str, base: Loaded | None, settings: AdmissionSettings,
           ) -> tuple[list[Author], list[Problem]]:
    """Every commit since the base, oldest first: each one vouches for what it changed."""
    if base is None:
        infos = source.new_commits(None, revision, limit=1)       # nothing applied yet: the tip vouches alone
    else:
        infos = source.new_commits(base.snapshot.revision, revision, limit=MAX_RANGE_COMMITS + 1)
    if len(infos) > MAX_RANGE_COMMITS:
        return [], [Problem(f"more than {MAX_RANGE_COMMITS} commits since the last good revision "
                            f"{base.snapshot.revision[:12] if base else ''}: too many to check one by one",
                            reconciler="policy", hint="apply the branch in steps (stratum apply --rev <commit>)")]
    if not infos or infos[-1].id != revision:
        infos.append(source.commit_info(revision))
    return [_author(source, info, settings) for info in infos], []


def admit(source: GitSource, loaded: Loaded, base: Loaded | None, reconcilers: Mapping[str, AnyReconciler],
          settings: AdmissionSettings) -> Admission:
    """Steps 1-3 of the module docstring for `loaded` against `base` (the last good revision, or a PR base).

    Every commit since the base is judged, not only the tip: an unsigned or unauthorized commit cannot ride in
    under a later, innocent one. A change is attributed to the commits that touched the file declaring it;
    when none did (an imported file changed it), to every commit of the range. All must be allowed.
    """
    snap = loaded.snapshot
    # 0. each reconciler's own trust checks against the base (the vault: signed rules changes, replays)
    judged = judge_against_base(reconcilers, loaded, base)
    if snap.revision.startswith("staged:"):
        return Admission(principal="", signed=False, verification=None, problems=tuple(judged))
    # 1. provenance
    authors, problems = _range(source, snap.revision, base, settings)
    problems = judged + problems
    if not authors:
        return Admission("", False, None, problems=tuple(problems))
    if settings.signing.require:
        for a in authors:
            if not a.signed:
                reason = a.verification.reason if a.verification else "the commit is not signed"
                problems.append(Problem(f"commit {a.commit[:12]} rejected: signed commits are required; {reason}",
                                        reconciler="signing",
                                        hint="sign every commit (git commit -S) with a key in the host's allowed "
                                             "signers; rewrite the branch without unsigned commits, then push"))
    tip = authors[-1]
    # 2. what changes
    changes = []
    for name in reconcilers:
        changes += diff_resources(_resources(reconcilers, base, name), _resources(reconcilers, loaded, name))
    if base is not None:
        changed = source.changes(base.snapshot.revision, snap.revision)
    else:
        changed = [(e.path, e.blob_id, "added") for e in snap.entries()]
    policy_changes = policy_file_changes((path, status) for path, _, status in changed)
    # Never truncated: a policy reading changed_paths must see every path, or a long commit could hide one.
    paths = tuple(sorted(p for p, _, _ in changed))
    # 3. change control
    own = loaded.policies
    prior = base.policies if base is not None else None
    # A policy reading changed_paths makes every request carry all of them: bound the work, failing closed.
    work = len(paths) * (len(changes) + len(policy_changes)) * len(authors)
    if any(p is not None and p and p.reads_changed_paths for p in (own, prior)) and work > MAX_PATH_WORK:
        problems.append(Problem(
            f"too large to check: {len(changes) + len(policy_changes)} change(s) x {len(paths)} changed path(s) x "
            f"{len(authors)} commit(s), with a policy reading context.changed_paths", reconciler="policy",
            hint="split the change into smaller commits, or avoid context.changed_paths in policies"))
        return Admission(tip.principal, tip.signed, tip.verification, (), tuple(problems), "on", tuple(authors))
    decisions = _decide_all(source, own, authors, changes, settings, paths, "change control is off: no policies")
    decisions += _decide_all(source, prior, authors, policy_changes, settings, paths,
                             "bootstrap: no policies in force at the base revision")
    for d in decisions:
        if not d.allowed:
            res = d.change.resource
            problems.append(Problem(d.reason, res.source, res.line, reconciler="policy",
                                    hint="ask someone the policies allow to make this change, or change "
                                         "policies/ in a commit of its own that the current policies allow"))
    control = "on" if own or prior else "off"
    return Admission(tip.principal, tip.signed, tip.verification, tuple(decisions), tuple(problems), control,
                     tuple(authors))


def judge_against_base(reconcilers: Mapping[str, AnyReconciler], loaded: Loaded, base: Loaded | None) -> list[Problem]:
    """The problems each reconciler finds judging `loaded` by `base` (its `judge` hook, when it has one):
    what a revision may trust is decided by the revision before it, never by itself."""
    out: list[Problem] = []
    for name, rec in reconcilers.items():
        if not rec.judges_base or name not in loaded.desired:
            continue
        out += rec.judge(loaded.desired[name], base.desired.get(name) if base is not None else None)
    return out


def _decide_all(source: GitSource, policies: Policies | None, authors: Sequence[Author], changes: Sequence[Change],
                settings: AdmissionSettings, paths: tuple[str, ...], off_reason: str) -> list[Decision]:
    """One decision per change: allowed only when every commit that made it is allowed to."""
    if not changes:
        return []
    if not policies:
        return [Decision(c, True, (), off_reason) for c in changes]
    # What each commit itself changed (a merge: against every parent); only needed when policies are in force.
    touched = [source.touched_paths(a.commit) for a in authors]
    by_author: dict[int, list[Change]] = {}
    for c in changes:
        files = {c.resource.source, c.resource.path} - {""}
        makers = [i for i, t in enumerate(touched) if t & files] or range(len(authors))
        for i in makers:
            by_author.setdefault(i, []).append(c)
    verdicts: dict[int, list[tuple[Author, Decision]]] = {}
    for i, subset in by_author.items():
        a = authors[i]
        context = ChangeContext(branch=settings.branch, signed=a.signed, changed_paths=paths)
        for c, d in zip(subset, authorize(policies, a.principal, subset, context, settings.teams), strict=True):
            verdicts.setdefault(id(c), []).append((a, d))
    out = []
    for c in changes:
        found = verdicts[id(c)]
        denied = [(a, d) for a, d in found if not d.allowed]
        if denied:
            a, d = denied[0]
            extra = f" (commit {a.commit[:12]} by {a.principal})" if len(authors) > 1 else ""
            out.append(Decision(c, False, d.policies, d.reason + extra))
        else:
            out.append(found[-1][1])
    return out
