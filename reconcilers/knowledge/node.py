"""Knowledge nodes: markdown files with YAML front matter (Kogral's node format), parsed without side effects.

A node file is `---` + YAML front matter + `---` + a markdown body. Relations come from front matter lists
(`depends_on: [<id>, infra:app-config]`) and from `[[wikilinks]]` in the body: a bare `[[target]]` is
`relates_to`, `[[depends_on::target]]` names the relation, `[[target|label]]` carries a label. Targets are node
ids, node titles or file stems, or ids in another reconciler's namespace (`infra:`, `vault:`, `task:`).

Only the structure needed to build a `Node` is checked here; the field rules live in the Nickel contract
(nickel/knowledge.ncl, applied by contract.py) so `stratum validate`, the pre-commit hook and the daemon agree.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

import yaml

from reconcilers import bounded_yaml
from reconcilers.base import Problem

NAME = "knowledge"
ROOT = "knowledge"
TYPES: tuple[str, ...] = ("note", "decision", "guideline", "pattern", "journal", "execution")
RELATIONS: tuple[str, ...] = ("relates_to", "depends_on", "implements", "extends", "supersedes", "explains")
NAMESPACES: tuple[str, ...] = ("infra", "vault", "task", "agent", "node")
DECISION_STATUSES: tuple[str, ...] = ("proposed", "accepted", "superseded", "deprecated", "rejected")
# A knowledge node is prose: anything over 1 MiB is a mistake (a log dump, a binary renamed .md). Refuse it
# before parsing so a 50 MB file costs one stat, not a YAML parse.
MAX_NODE_BYTES = 1024 * 1024

_WIKILINK = re.compile(r"\[\[([^\[\]\n|]+?)(?:\|([^\[\]\n]*))?\]\]")
_KEY_LINE = re.compile(r"^([A-Za-z_][\w-]*)\s*:", re.MULTILINE)
_FENCE = re.compile(r"^\s*(```|~~~)")


class _Loader(yaml.SafeLoader):
    """SafeLoader that keeps dates as the strings the author wrote (JSON- and Nickel-friendly)."""


_Loader.yaml_implicit_resolvers = {
    first: [(tag, rx) for tag, rx in resolvers if tag != "tag:yaml.org,2002:timestamp"]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}


@dataclass(frozen=True, slots=True)
class Link:
    """One outgoing relation: `rel` to the raw `target`, declared at `line` (front matter or body)."""

    rel: str
    target: str
    line: int
    label: str = ""
    origin: str = "front"                     # "front" (front matter list) or "body" (wikilink)


@dataclass(frozen=True, slots=True)
class Node:
    """One parsed node. `front` is the canonical JSON of the whole front matter."""

    path: str
    blob_id: str
    id: str
    type: str
    title: str
    status: str
    project: str
    tags: tuple[str, ...]
    created: str
    modified: str
    front: str
    body: str
    body_line: int                            # the file line where the body starts
    links: tuple[Link, ...]
    key_lines: tuple[tuple[str, int], ...]    # front matter key -> file line, for locating contract errors

    @property
    def stem(self) -> str:
        """The file name without `.md` (a wikilink may name it)."""
        # PurePosixPath(path).stem without the object (it cost ~20 µs per node when building a large graph).
        name = self.path.rsplit("/", 1)[-1]
        dot = name.rfind(".")
        return name[:dot] if 0 < dot < len(name) - 1 else name

    def field(self, name: str, default: Any = None) -> Any:
        """A front matter field by name."""
        return json.loads(self.front).get(name, default)

    def line_of(self, key: str) -> int:
        """The file line of a front matter key (1 when absent: the error concerns the whole header)."""
        return next((line for k, line in self.key_lines if k == key), 1)

    def summary(self) -> dict[str, Any]:
        """The JSON-ready short form used by listings."""
        return {"id": self.id, "type": self.type, "title": self.title, "status": self.status,
                "project": self.project, "tags": list(self.tags), "path": self.path, "modified": self.modified}


@dataclass(frozen=True, slots=True)
class Parsed:
    """The outcome of parsing one file: the node (None when unusable), the raw front matter, the problems."""

    path: str
    blob_id: str
    node: Node | None
    front: dict[str, Any] | None
    problems: tuple[Problem, ...]
    key_lines: tuple[tuple[str, int], ...] = ()

    def line_of(self, key: str) -> int:
        """The file line of a front matter key (1 when absent)."""
        return next((line for k, line in self.key_lines if k == key), 1)


def _problem(path: str, line: int, message: str, hint: str = "") -> Problem:
    return Problem(message=message, path=path, line=line, reconciler=NAME, hint=hint)


def split_front_matter(text: str) -> tuple[str, str, int] | None:
    """(front matter YAML, body, body start line) or None when the file has no `---` header."""
    if text.startswith("\ufeff"):
        text = text[1:]
    if not text.startswith("---"):
        return None
    lines = text.split("\n")
    if lines[0].strip() != "---":
        return None
    for i in range(1, len(lines)):
        if lines[i].rstrip() in ("---", "..."):
            return "\n".join(lines[1:i]), "\n".join(lines[i + 1:]), i + 2
    return None


def _jsonable(value: Any) -> Any:
    # YAML can produce bytes (!!binary), sets and non-string keys; the contract only sees JSON.
    return json.loads(json.dumps(value, default=str))


def _strings(value: Any) -> list[str]:
    if isinstance(value, str):
        return [value]
    if isinstance(value, list):
        return [v for v in value if isinstance(v, str)]
    return []


def wikilinks(body: str, first_line: int) -> tuple[list[Link], list[tuple[int, str]]]:
    """Links from `[[...]]` in a markdown body (fenced code skipped) and (line, message) for bad ones."""
    links: list[Link] = []
    bad: list[tuple[int, str]] = []
    fenced = False
    for offset, line in enumerate(body.split("\n")):
        if _FENCE.match(line):
            fenced = not fenced
            continue
        if fenced or "[[" not in line:
            continue
        for m in _WIKILINK.finditer(line):
            inner, label = m.group(1).strip(), (m.group(2) or "").strip()
            rel = "relates_to"
            if "::" in inner:
                rel, _, inner = (s.strip() for s in inner.partition("::"))
                if rel not in RELATIONS:
                    bad.append((first_line + offset, f"unknown relation {rel!r} in wikilink [[{m.group(1)}]]"))
                    continue
            if inner:
                links.append(Link(rel, inner, first_line + offset, label, "body"))
    return links, bad


def parse(path: str, blob_id: str, text: str) -> Parsed:
    """Parse one node file. Never raises on bad content: problems carry file:line and a hint."""
    split = split_front_matter(text)
    if split is None:
        return Parsed(path, blob_id, None, None, (_problem(
            path, 1, "missing front matter",
            "start the file with a `---` line, then id/type/title in YAML, then a closing `---` line "
            "(`stratum kb new TYPE TITLE` writes a valid skeleton)"),))
    header, body, body_line = split
    try:
        raw = bounded_yaml.load(header, _Loader)     # no aliases, capped size, nodes and depth
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        line = (mark.line + 2) if mark is not None else 1
        reason = getattr(err, "problem", None) or str(err).split("\n")[0]
        return Parsed(path, blob_id, None, None, (_problem(
            path, line, f"front matter is not valid YAML: {reason}", "fix the YAML between the `---` lines"),))
    if not isinstance(raw, dict):
        return Parsed(path, blob_id, None, None, (_problem(
            path, 2, "front matter must be a YAML mapping (key: value lines)",
            "write `id: ...`, `type: ...`, `title: ...` on their own lines"),))
    return from_front(path, blob_id, raw, header, body, body_line)


def from_front(path: str, blob_id: str, raw: dict[Any, Any], header: str, body: str, body_line: int) -> Parsed:
    """A node from its front matter already loaded (`raw`, what YAML gives for `header`) and its body: `parse`
    after the YAML, and the way in for nodes Stratum writes itself (execution nodes), which need not be read
    back from text (PyYAML took ~0.5 s over a 200-action run's front matter)."""
    front: dict[str, Any] = _jsonable({str(k): v for k, v in raw.items()})
    key_lines = tuple((m.group(1), header[: m.start()].count("\n") + 2) for m in _KEY_LINE.finditer(header))
    lines = dict(key_lines)
    problems: list[Problem] = []
    # A missing or mistyped id/type/title is reported by the contract (contract.py), which knows every rule;
    # here it only means no Node can be built.
    usable = all(isinstance(front.get(k), str) and front[k].strip() for k in ("id", "type", "title"))
    links: list[Link] = []
    for rel in RELATIONS:
        for target in _strings(front.get(rel)):
            links.append(Link(rel, target.strip(), lines.get(rel, 1), "", "front"))
    body_links, bad = wikilinks(body, body_line)
    links.extend(body_links)
    problems.extend(_problem(path, line, msg, f"use a bare [[target]] or one of: {', '.join(RELATIONS)}")
                    for line, msg in bad)
    if not usable:
        return Parsed(path, blob_id, None, front, tuple(problems), key_lines)
    ntype = str(front["type"])
    status = front.get("status")
    node = Node(
        path=path, blob_id=blob_id, id=str(front["id"]).strip(), type=ntype, title=str(front["title"]).strip(),
        status=status if isinstance(status, str) else ("proposed" if ntype == "decision" else "draft"),
        project=str(front.get("project") or ""), tags=tuple(_strings(front.get("tags"))),
        created=str(front.get("created") or ""), modified=str(front.get("modified") or front.get("created") or ""),
        front=json.dumps(front, sort_keys=True), body=body, body_line=body_line, links=tuple(links),
        key_lines=key_lines)
    return Parsed(path, blob_id, node, front, tuple(problems), key_lines)


def too_large(path: str, size: int) -> Problem | None:
    """A problem when a node file is over the size limit (checked before reading it)."""
    if size <= MAX_NODE_BYTES:
        return None
    return _problem(path, 1, f"node file is {size} bytes, over the {MAX_NODE_BYTES}-byte limit",
                    "split it into several nodes; keep logs and dumps out of knowledge/")


def slugify(title: str) -> str:
    """A file-name-safe slug of a title."""
    slug = re.sub(r"[^a-z0-9]+", "-", title.lower()).strip("-")
    return slug[:80] or "node"
