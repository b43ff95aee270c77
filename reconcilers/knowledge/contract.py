"""The Nickel front-matter contract (nickel/knowledge.ncl) applied to many nodes in one evaluation.

Front matter is YAML the author wrote; the rules are Nickel so that `stratum validate`, the pre-commit hook and
the daemon share one definition. We never evaluate user Nickel here: the input is JSON we generated from the
parsed YAML, written to a temporary file that one generated expression imports. The reconciler hands that
expression to the host's Nickel worker (`runner`: the Evaluator port's run_source), so py-nickel, which holds
the GIL for a whole evaluation (PLATFORM.md), never runs in the daemon's process and its library is not
loaded there. Without a runner (`stratum kb lint`, tests) it runs in-process, which is safe because the input
is bounded: node files are capped at 1 MiB before parsing and batches at `MAX_BATCH_BYTES` of JSON.
"""

from __future__ import annotations

import json
import os
import re
import tempfile
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from reconcilers.base import Problem
from reconcilers.knowledge.errors import KnowledgeError
from reconcilers.knowledge.node import NAME
from reconcilers.locations import nickel_dir

MAX_BATCH_BYTES = 4 * 1024 * 1024
_ANSI = re.compile(r"\x1b\[[0-9;]*m")


@dataclass(frozen=True, slots=True)
class FrontMatterItem:
    """What the contract needs of one file: its raw front matter and where each key sits."""

    path: str
    blob_id: str
    front: dict[str, Any]
    key_lines: tuple[tuple[str, int], ...]


class Contract:
    """Checks front matter against knowledge.ncl; results are cached by blob id (unchanged files skip Nickel)."""

    def __init__(self, ncl_dir: Path | None = None, cache_size: int = 200_000,
                 runner: Callable[[str, Sequence[str]], dict[str, str]] | None = None) -> None:
        """`runner(source, import_paths)` evaluates in the host's Nickel worker ({"ok": json} or {"error":
        text}); without one, py-nickel runs in this process."""
        self.ncl_dir = ncl_dir or nickel_dir()
        self._runner = runner
        if not (self.ncl_dir / "knowledge.ncl").exists():
            raise KnowledgeError(f"the contract {self.ncl_dir / 'knowledge.ncl'} is missing",
                                 hint="reinstall Stratum; the nickel/ folder ships with it")
        self._cache: dict[str, tuple[Problem, ...]] = {}
        self._cache_size = cache_size
        self._lock = threading.Lock()
        self.evaluations = 0                  # how many nickel.run calls were made (tests check the cache)

    def check(self, items: Sequence[FrontMatterItem]) -> dict[str, tuple[Problem, ...]]:
        """Problems per blob id for every item (empty tuple when valid)."""
        out: dict[str, tuple[Problem, ...]] = {}
        todo: list[FrontMatterItem] = []
        with self._lock:
            for item in items:
                cached = self._cache.get(item.blob_id)
                if cached is None:
                    todo.append(item)
                else:
                    out[item.blob_id] = cached
        for batch in _batches(todo):
            results = self._evaluate([i.front for i in batch])
            with self._lock:
                if len(self._cache) > self._cache_size:
                    self._cache.clear()       # bounded memory; a cold cache only costs one evaluation
                for item, errors in zip(batch, results, strict=True):
                    problems = tuple(_problem(item, e) for e in errors)
                    self._cache[item.blob_id] = problems
                    out[item.blob_id] = problems
        return out

    def _evaluate(self, fronts: list[dict[str, Any]]) -> list[list[dict[str, str]]]:
        fd, name = tempfile.mkstemp(suffix=".json", prefix="stratum-kb-")
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as fh:
                json.dump(fronts, fh)
            source = f'(import "knowledge.ncl").validate_all (import {json.dumps(name)})'
            self.evaluations += 1
            raw = self._run(source)
        finally:
            os.unlink(name)
        result: list[list[dict[str, str]]] = json.loads(raw)
        return result

    def _run(self, source: str) -> str:
        if self._runner is not None:
            reply = self._runner(source, [str(self.ncl_dir)])
            if "ok" in reply:
                return reply["ok"]
            raise self._failed(reply.get("error", "no answer"))
        # mypy run from a checkout sees the top-level nickel/ folder (our contracts, no Python) as a namespace
        # package shadowing py-nickel, hence the attr-defined ignores; at run time py-nickel is imported.
        import nickel

        try:
            out: str = nickel.run(source, [str(self.ncl_dir)])  # type: ignore[attr-defined, unused-ignore]
        except nickel.NickelException as err:  # type: ignore[attr-defined, unused-ignore]
            raise self._failed(str(err)) from err
        return out

    def _failed(self, message: str) -> KnowledgeError:
        # Our own generated input failed: a bug in knowledge.ncl, not in the user's files.
        return KnowledgeError(f"the knowledge contract failed to evaluate: {_ANSI.sub('', message)[:2000]}",
                              where=str(self.ncl_dir / "knowledge.ncl"),
                              hint="report this; run `stratum kb lint` to see which files were checked")


def _batches(items: list[FrontMatterItem]) -> list[list[FrontMatterItem]]:
    batches: list[list[FrontMatterItem]] = []
    current: list[FrontMatterItem] = []
    size = 0
    for item in items:
        weight = len(json.dumps(item.front))
        if current and size + weight > MAX_BATCH_BYTES:
            batches.append(current)
            current, size = [], 0
        current.append(item)
        size += weight
    if current:
        batches.append(current)
    return batches


def _problem(item: FrontMatterItem, error: dict[str, str]) -> Problem:
    field = error.get("field", "")
    line = next((ln for k, ln in item.key_lines if k == field), 1)
    hint = "see nickel/knowledge.ncl for the rules"
    if field == "id":
        hint = "use `stratum kb new TYPE TITLE` or a fresh UUID (python -c 'import uuid; print(uuid.uuid4())')"
    elif "unknown field" in error.get("message", ""):
        hint = "remove it, rename it to x-<name>, or put it under `extra:`"
    elif "characters long" in error.get("message", ""):
        hint = "move long text into the body below the front matter"
    return Problem(message=f"front matter: {error.get('message', 'invalid')}", path=item.path, line=line,
                   reconciler=NAME, hint=hint)
