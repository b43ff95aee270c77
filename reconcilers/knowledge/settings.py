"""The repo-level `knowledge` section of stratum.ncl (contract: nickel/knowledge.ncl `Settings`) as one frozen
value, and how the CLI reads it from a commit when no daemon hands it over."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from reconcilers.knowledge.errors import KnowledgeError
from reconcilers.ports import Evaluator


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
    embedding_provider: str = "fastembed"     # a built-in provider or one the host declared, by name
    allow_dangling_links: bool = False
    commit_notes: bool = False

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
            embedding = dict(s.get("embedding") or {})
            # Where texts and credentials go is a host setting (providers.py); the contract refuses these
            # too, and this check holds for callers that evaluated stratum.ncl without it.
            host_only = sorted(set(embedding) - {"provider"})
            if host_only:
                raise KnowledgeError(
                    f"knowledge.embedding.{host_only[0]} is a host setting, not a repository setting",
                    where="stratum.ncl", hint="name a provider the host declared (knowledge.embedding.provider = "
                    "\"<name>\"); the host sets its url, model and api_key_env in stratumd.toml "
                    "[embedding.providers.<name>]")
            return cls(bases=bases, executions_branch=str(ex.get("branch") or ""),
                       executions_path=str(ex.get("path") or "executions"),
                       embedding_provider=str(embedding.get("provider") or "fastembed"),
                       allow_dangling_links=bool(s.get("allow_dangling_links", False)),
                       commit_notes=bool(s.get("commit_notes", False)))
        except (KeyError, TypeError, ValueError, AttributeError) as err:
            raise KnowledgeError(f"the knowledge settings are malformed: {err}", where="stratum.ncl",
                                 hint="see nickel/knowledge.ncl `Settings` for the shape") from err


def repo_settings(snap: Any, evaluator: Evaluator) -> dict[str, Any]:
    """The evaluated stratum.ncl of a commit ({} when absent), through a bounded evaluator the kernel made (user
    Nickel can loop forever), with the contract the daemon checks (nickel/stratum.ncl), so the CLI refuses what
    the daemon refuses."""
    if snap.entry("stratum.ncl") is None:
        return {}
    result = evaluator.evaluate(snap, ["stratum.ncl"], '(import "stratum.ncl").Settings')
    if result.problems:
        raise KnowledgeError(f"stratum.ncl does not evaluate: {result.problems[0]}", where="stratum.ncl",
                             hint="run `stratum validate` for every problem")
    value = result.values.get("stratum.ncl", {})
    return dict(value) if isinstance(value, Mapping) else {}
