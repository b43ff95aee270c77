"""What a submitted form leaves behind: a branch `forms/<name>/<time>` holding the generated Nickel, any secret
manifests and a knowledge `decision` node, committed by the daemon's identity with a `Submitted-by:` trailer,
and the markdown plan of that branch against the watched one. Never the watched branch (the GitWriter port
refuses it), so nothing a form makes is applied before a person merges it.
"""

from __future__ import annotations

import datetime as dt
import json
import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from reconcilers.errors import InputError
from reconcilers.forms.generate import Generated
from reconcilers.forms.model import Form
from reconcilers.infra.model import InfraDesired
from reconcilers.ports import GitWriter, Snapshot

MAX_PLAN_ROWS = 200


def nickel_literal(value: Any) -> str:
    """`value` as a Nickel literal: strings escaped (quotes, backslashes, control characters and the `%{` that
    would start an interpolation), so an answer can never change the generated program's shape."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, list):
        return "[" + ", ".join(nickel_literal(v) for v in value) + "]"
    if isinstance(value, Mapping):
        return "{ " + ", ".join(f"{json.dumps(str(k))} = {nickel_literal(v)}" for k, v in value.items()) + " }"
    if value is None:
        return "null"
    out = []
    for ch in str(value):
        if ch in '"\\':
            out.append("\\" + ch)
        elif ch == "\n":
            out.append("\\n")
        elif ch == "\t":
            out.append("\\t")
        elif ch == "\r":
            out.append("\\r")
        elif ord(ch) < 0x20 or ord(ch) == 0x7F:
            out.append(f"\\u{{{ord(ch):x}}}")
        else:
            out.append(ch)
    return '"' + "".join(out).replace("%{", "\\%{") + '"'


def branch_name(form: Form, now: dt.datetime) -> str:
    """`forms/<form>/<UTC time>`: a new branch per submission."""
    return f"forms/{form.name}/{now.strftime('%Y%m%dT%H%M%S')}Z-{uuid.uuid4().hex[:6]}"


def decision_path(form: Form, now: dt.datetime) -> str:
    """Where the decision node of a submission made at `now` goes."""
    return f"knowledge/decisions/form-{form.name}-{now.strftime('%Y%m%d-%H%M%S')}.md"


def decision_node(form: Form, answers: Mapping[str, Any], principal: str, target: str, branch: str,
                  now: dt.datetime) -> tuple[str, str]:
    """A knowledge `decision` recording who asked for what (passwords left out): (path, markdown)."""
    secret = {e.name for e in form.elements if e.type == "password"}
    shown = {k: ("(secret manifest)" if k in secret else v) for k, v in answers.items()}
    path = decision_path(form, now)
    title = f"Form {form.name}: {target}"
    lines = [
        "---",
        f"id: {uuid.uuid4()}",
        "type: decision",
        f"title: {json.dumps(title)}",
        "status: proposed",
        "tags: [form, " + form.name + "]",
        f"created: {now.date().isoformat()}",
        f"context: {json.dumps(f'{principal} filled the form {form.name} ({form.title}).')}",
        f"decision: {json.dumps(f'Generate {target} from the answers below, proposed on branch {branch}.')}",
        "consequences: >-",
        "  The change is reviewed and merged like any other commit; the contracts checked it before it was",
        "  committed.",
        "---",
        f"# {title}",
        "",
        f"Submitted by `{principal}` on {now.strftime('%Y-%m-%d %H:%M:%S')} UTC.",
        "",
        "| element | answer |",
        "|---|---|",
        *[f"| {k} | `{json.dumps(v)[:200].replace('|', '/')}` |" for k, v in shown.items()],
        "",
    ]
    return path, "\n".join(lines)


def plan_markdown(form: Form, base: InfraDesired, generated: Generated, branch: str, watched: str,
                  files: Iterable[str]) -> str:
    """The plan of the form's branch against the watched one: files, then infra resources created, changed
    and deleted (by id, kind and path), as a reviewer reads it."""
    before, after = base.resources, generated.infra.resources
    created = sorted(set(after) - set(before))
    deleted = sorted(set(before) - set(after))
    changed = sorted(r for r in set(after) & set(before) if after[r].spec != before[r].spec
                     or after[r].kind != before[r].kind)
    out = [f"## Plan: `{branch}` against `{watched}`", "",
           f"Form **{form.name}** ({form.title}).", "", "### Files", ""]
    out += [f"- `{p}`" for p in sorted(files)]
    out += ["", f"### infra: {len(created)} to create, {len(changed)} to change, {len(deleted)} to delete", ""]
    rows = [("create", r) for r in created] + [("change", r) for r in changed] + [("delete", r) for r in deleted]
    if not rows:
        out.append("No infrastructure changes.")
    else:
        out += ["| action | id | kind | where |", "|---|---|---|---|"]
        for action, rid in rows[:MAX_PLAN_ROWS]:
            res = after.get(rid) or before[rid]
            where = f"`{res.path}`" if res.path else f"provider {res.provider}"
            out.append(f"| {action} | `{rid}` | {res.kind} | {where} |")
        if len(rows) > MAX_PLAN_ROWS:
            out.append(f"| ... | {len(rows) - MAX_PLAN_ROWS} more | | |")
    return "\n".join(out) + "\n"


def draft_commit(snap: Snapshot, files: Mapping[str, str], message: str) -> str:
    """A commit of `files` on top of the base revision that no branch points to: what submitting would make,
    for the kernel to plan before anything is submitted. Only git objects are written (no reference moves;
    `git gc` drops them in time), so the watched repository's branches stay as they are."""
    import pygit2

    from reconcilers.gittree import insert_blob

    repo = snap.repo
    base = repo.get(snap.revision)
    if not isinstance(base, pygit2.Commit):
        raise InputError(f"the base revision {snap.revision} is not a commit", hint="report this bug")
    tree: pygit2.Tree = base.tree
    for path, text in sorted(files.items()):
        written = repo.get(insert_blob(repo, tree, path.split("/"), repo.create_blob(text.encode("utf-8"))))
        assert isinstance(written, pygit2.Tree)
        tree = written
    # Signed as the daemon's git writer signs the real commit, so change control names the same principal.
    sig = pygit2.Signature("stratumd", "stratumd@localhost")
    return str(repo.create_commit(None, sig, sig, message, tree.id, [base.id]))


@dataclass(frozen=True, slots=True)
class Submission:
    """A submitted form: where its files went and the plan to review."""

    branch: str
    commit: str
    files: tuple[str, ...]
    plan: str
    target: str = ""          # the generated Nickel file
    review: str = ""          # the pull request's address, when a forge is configured
    review_error: str = ""    # why it could not be opened (the branch stands)


def commit_submission(form: Form, snap: Snapshot, generated: Generated, files: Mapping[str, str],
                      writer: GitWriter | None, principal: str, plan: str, branch: str, target: str = "",
                      ) -> Submission:
    """Commit `files` to the new `branch`, starting at the base revision, by the daemon's identity."""
    if writer is None:
        raise InputError("no git writer: forms are committed by the daemon's identity",
                         hint="run the form where the daemon's ports are available (stratum form run)")
    message = (f"form {form.name}: {generated.target}\n\nGenerated by the form {form.name} ({form.path}) and "
               f"checked with the infra contracts.\n\nSubmitted-by: {principal}\n")
    commit = writer.commit_files(branch, dict(files), message, base=snap.revision)
    return Submission(branch, commit, tuple(sorted(files)), plan, target or generated.target)
