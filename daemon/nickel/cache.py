"""Evaluated Nickel values kept on disk, so a new process does not evaluate unchanged files again.

Every `stratum` command is a new process, and so is a restarted daemon: without this, each of them paid the
whole Nickel evaluation (contracts included, seconds for thousands of resources) even when no file changed.
The key (made by daemon/nickel/evaluator.py) covers everything the value depends on: the contract, the contract
library's files, the Nickel engine's build, the file's path and the blob ids of the file and of everything it
imports. Only values are kept (errors are evaluated again, to be reported in full). The directory is the
host's (under the data directory); a damaged entry is a miss, never an error. Bounded: values over
MAX_VALUE_BYTES are not kept, and the oldest entries go when there are more than `max_entries`.
"""

from __future__ import annotations

import contextlib
import json
import os
from pathlib import Path
from typing import Any

MAX_VALUE_BYTES = 8 * 1024 * 1024
MAX_ENTRIES = 20_000


class DiskCache:
    """JSON values by key, one file each (written atomically)."""

    def __init__(self, directory: Path, max_entries: int = MAX_ENTRIES) -> None:
        self.directory = directory
        self.max_entries = max_entries
        directory.mkdir(parents=True, exist_ok=True)
        self.prune()

    def _path(self, key: str) -> Path:
        return self.directory / f"{key}.json"

    def get(self, key: str) -> tuple[bool, Any]:
        """(True, value) when `key` is kept, else (False, None); unreadable entries are misses."""
        try:
            stored = json.loads(self._path(key).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return False, None
        if not isinstance(stored, dict) or "value" not in stored:
            return False, None
        return True, stored["value"]

    def put(self, key: str, value: Any) -> None:
        """Keep `value` under `key` (best effort: a full disk only costs a later evaluation)."""
        text = json.dumps({"value": value}, separators=(",", ":"))
        if len(text) > MAX_VALUE_BYTES:
            return
        target = self._path(key)
        tmp = target.with_name(f"{target.name}.{os.getpid()}.tmp")
        try:
            tmp.write_text(text, encoding="utf-8")
            tmp.replace(target)
        except OSError:
            with contextlib.suppress(OSError):
                tmp.unlink()

    def prune(self) -> int:
        """Remove the oldest entries beyond `max_entries` (down to 80 % of it); returns how many went."""
        try:
            entries = [e for e in os.scandir(self.directory) if e.name.endswith(".json")]
        except OSError:
            return 0
        if len(entries) <= self.max_entries:
            return 0
        entries.sort(key=lambda e: e.stat().st_mtime_ns)
        doomed = entries[: len(entries) - int(self.max_entries * 0.8)]
        for entry in doomed:
            with contextlib.suppress(OSError):
                os.unlink(entry.path)
        return len(doomed)
