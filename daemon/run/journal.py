"""The checkpoint journal: append-only JSON lines beside the index, written before DuckDB.

A DuckDB commit costs milliseconds (it syncs its WAL); an apply of 1,000 files would spend most of its time
there if every checkpoint were its own transaction. So a checkpoint is first appended here (one `write(2)`,
which survives the daemon being killed: the data is in the kernel), and the index takes the journal's
records in batches. On open, the index replays what the journal holds (a killed daemon's last
checkpoints), then empties it. Records are idempotent (upserts and deletes), so replaying twice is harmless.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any


class Journal:
    """Append records `[op, params]`; read them back; reset after they reached the index."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o600)

    def append(self, op: str, params: list[Any]) -> None:
        """Write one record (a single write of one line)."""
        os.write(self._fd, (json.dumps([op, params], default=str) + "\n").encode())

    def append_many(self, records: list[tuple[str, list[Any]]]) -> None:
        """Write several records with one write(2)."""
        if records:
            os.write(self._fd, "".join(json.dumps([op, params], default=str) + "\n"
                                       for op, params in records).encode())

    def reset(self) -> None:
        """Forget every record (they are in the index now)."""
        os.ftruncate(self._fd, 0)

    def sync(self) -> None:
        """Flush to the disk (end of a run: also survives a power loss)."""
        os.fdatasync(self._fd)

    def close(self) -> None:
        """Close the file."""
        os.close(self._fd)

    @staticmethod
    def read(path: Path) -> list[tuple[str, list[Any]]]:
        """The complete records of a journal file; a torn last line (killed mid-write) is ignored."""
        if not path.exists():
            return []
        out: list[tuple[str, list[Any]]] = []
        for line in path.read_bytes().split(b"\n"):
            if not line:
                continue
            try:
                op, params = json.loads(line)
            except (ValueError, TypeError):
                break
            out.append((str(op), list(params)))
        return out
