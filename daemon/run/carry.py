"""What a run that landed leaves for the next one: its recorded resource rows, carried forward and patched.

A commit that changes one file of 20,000 records 20,000 resource rows for its revision, as every revision
does (`stratum status`, the MCP tools and search read them by revision). Building those rows in Python and
sending them to DuckDB cost a one-file run ~0.3 s. The rows of the revision that landed last are already in the
index: the new revision's rows are copied from them inside DuckDB, and only the difference is sent.

When this is sound, and when it is not (then the full write is taken, and `note` says why):
- the landed revision is the run's base (the last applied revision) and landed *in this process*: a
  `Landed` is made only when a revision becomes good (pipeline `_commit_good`) with the rows this process
  recorded for it; a run that failed, was rejected, or rolled back to an older revision leaves none, so
  nothing is carried from a run that did not land;
- the index still holds exactly that many rows for it (nothing else writes them; checked anyway, one count);
- the rows are compared as whole tuples (reconciler, id, kind, path, spec hash): the patch is the exact set
  difference, whatever changed in the commit (infra files, templates, manifests, settings); rows repeated in
  either list (no reconciler makes them) take the full path, since a set would lose the repeats;
- the new revision is not the base itself (a re-run of the same revision rewrites its own rows).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from reconcilers.base import ResourceRow

if TYPE_CHECKING:
    from daemon.index.store import Index

MAX_PATCH = 2_000        # rows changed beyond which the patch is no cheaper than writing them all


@dataclass(frozen=True, slots=True)
class Landed:
    """A revision that became good in this process, with the resource rows recorded for it."""

    revision: str
    rows: tuple[ResourceRow, ...]


def record_resources(index: Index, revision: str, rows: Sequence[ResourceRow], landed: Landed | None,
                     base: str | None) -> str:
    """Record `rows` for `revision`: patched from the landed revision's rows when sound (module docstring),
    else written in full. Returns how: "carried: ..." or "full: <why>"."""
    why = _why_not(revision, rows, landed, base)
    if why:
        index.record_resources(revision, rows)
        return f"full: {why}"
    assert landed is not None
    gone, added = _difference(landed.rows, rows)
    if len(gone) + len(added) > MAX_PATCH:
        index.record_resources(revision, rows)
        return f"full: {len(gone) + len(added)} rows differ"
    if not index.patch_resources(revision, landed.revision, len(landed.rows), sorted(gone), sorted(added)):
        index.record_resources(revision, rows)
        return "full: the landed revision's rows are not all in the index"
    return f"carried: {len(added)} row(s) new, {len(gone)} gone, {len(rows) - len(added)} kept"


def _difference(old: Sequence[ResourceRow], new: Sequence[ResourceRow]) -> tuple[set[ResourceRow], set[ResourceRow]]:
    """(rows only in `old`, rows only in `new`). Reconcilers that hand out the same row object for an unchanged
    resource (infra) leave the same objects at the same places: those pairs are skipped by identity."""
    if len(old) == len(new):
        odd = [i for i, (a, b) in enumerate(zip(old, new, strict=True)) if a is not b]
        if len(odd) <= MAX_PATCH:
            before = {old[i] for i in odd}
            after = {new[i] for i in odd}
            return before - after, after - before
    before, after = set(old), set(new)
    return before - after, after - before


def _why_not(revision: str, rows: Sequence[ResourceRow], landed: Landed | None, base: str | None) -> str:
    if landed is None:
        return "no revision landed in this process yet"
    if base != landed.revision:
        return f"the base {str(base)[:12]} is not the revision that landed here ({landed.revision[:12]})"
    if revision == landed.revision:
        return "the landed revision itself"
    if len(set(rows)) != len(rows) or len(set(landed.rows)) != len(landed.rows):
        return "repeated rows"
    return ""
