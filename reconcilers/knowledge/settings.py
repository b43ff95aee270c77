"""The repo-level `knowledge` section of stratum.ncl (contract: nickel/knowledge.ncl `Settings`) as one frozen
value, and how the CLI reads it from a commit when no daemon hands it over."""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from reconcilers.knowledge.errors import KnowledgeError


@dataclass(frozen=True, slots=True)
class GuidelineBase:
    """One shared guideline source: a directory, or a git repository (local path or URL) at `ref`."""

    source: str
    ref: str = "main"
    path: str = "knowledge/guidelines"
    priority: int = 50


@dataclass(frozen=True, slots=True)
class KnowledgeSettings:
    """Everything configurable about knowledge in the ops repo."""

    bases: tuple[GuidelineBase, ...] = ()
    executions_branch: str = ""
    executions_path: str = "executions"
    embedding: str = "{}"                     # canonical JSON of the `embedding` record
    allow_dangling_links: bool = False
    commit_notes: bool = False

    @property
    def embedding_settings(self) -> dict[str, Any]:
        """The `embedding` record (provider, url, model, api_key_env)."""
        return dict(json.loads(self.embedding))

    @classmethod
    def from_mapping(cls, section: Mapping[str, Any] | None) -> KnowledgeSettings:
        """Build from the evaluated `knowledge` section (missing keys take the contract's defaults)."""
        s = dict(section or {})
        try:
            bases = tuple(
                GuidelineBase(str(b["source"]), str(b.get("ref", "main")),
                              str(b.get("path", "knowledge/guidelines")), int(b.get("priority", 50)))
                for b in (s.get("guidelines") or {}).get("bases", []))
            ex = s.get("executions") or {}
            return cls(bases=bases, executions_branch=str(ex.get("branch") or ""),
                       executions_path=str(ex.get("path") or "executions"),
                       embedding=json.dumps(dict(s.get("embedding") or {}), sort_keys=True),
                       allow_dangling_links=bool(s.get("allow_dangling_links", False)),
                       commit_notes=bool(s.get("commit_notes", False)))
        except (KeyError, TypeError, ValueError, AttributeError) as err:
            raise KnowledgeError(f"the knowledge settings are malformed: {err}", where="stratum.ncl",
                                 hint="see nickel/knowledge.ncl `Settings` for the shape") from err


def repo_settings(snap: Any, cache_dir: Path) -> dict[str, Any]:
    """The evaluated stratum.ncl of a commit through the daemon's Nickel evaluator ({} when absent).

    Evaluating user Nickel needs the bounded worker processes of daemon/nickel.py (it can loop forever);
    when that module is not available, the defaults apply rather than evaluating in-process.
    """
    if snap.entry("stratum.ncl") is None:
        return {}
    try:
        from daemon.nickel import Evaluator  # type: ignore[import-not-found, unused-ignore]
    except ImportError:
        return {}
    result = Evaluator(cache_dir).evaluate(snap, ["stratum.ncl"], None)
    if result.problems:
        raise KnowledgeError(f"stratum.ncl does not evaluate: {result.problems[0]}", where="stratum.ncl",
                             hint="run `stratum validate` for every problem")
    value = result.values.get("stratum.ncl", {})
    return dict(value) if isinstance(value, Mapping) else {}
