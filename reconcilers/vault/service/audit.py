"""The audit log: every authenticated request and its response as a JSON line, hash-chained, failing closed.

Secret values, tokens and accessors are replaced by `hmac-sha256:<hex>` under a per-vault salt (kept behind the
barrier), as Vault does; `sys/audit-hash` computes the digest of a given string so an operator can find it.
Each line carries `seq` and `prev` (the SHA-256 of the previous line's bytes), so `verify` finds an edited,
removed or reordered line. When the file passes `max_bytes` it is renamed `<name>.<n>` and the chain goes on
in a new file. If a line cannot be written the request fails: no unaudited access.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from reconcilers.vault.service.errors import Unavailable

GENESIS = "0" * 64
MAX_DEPTH = 32


class AuditUnavailable(Unavailable):
    """The audit log cannot be written: the request is refused."""

    status = 500


def redact(value: Any, digest: Callable[[str], str], depth: int = 0) -> Any:
    """`value` with every string leaf replaced by its digest (keys stay readable; depth bounded)."""
    if depth > MAX_DEPTH:
        return "hmac-sha256:truncated"
    if isinstance(value, str):
        return digest(value)
    if isinstance(value, bytes | bytearray):
        return digest(bytes(value).hex())          # raw bodies (DER certificates, OCSP): digested as hex
    if isinstance(value, dict):
        return {str(k): redact(v, digest, depth + 1) for k, v in value.items()}
    if isinstance(value, list):
        return [redact(v, digest, depth + 1) for v in value]
    return value


class AuditLog:
    """Append-only, hash-chained JSON lines at `path`, rotated at `max_bytes`."""

    def __init__(self, path: Path, max_bytes: int = 64 * 1024 * 1024) -> None:
        self.path = path
        self.max_bytes = max_bytes
        self._lock = threading.Lock()
        self._salt = b""
        self._prev, self._seq = self._tail()
        try:
            self._size = path.stat().st_size     # kept in memory after this: one writer, no stat per entry
        except OSError:
            self._size = 0

    def set_salt(self, salt: bytes) -> None:
        """The vault's HMAC salt (known once unsealed)."""
        self._salt = salt

    def hash(self, value: str) -> str:
        """The digest that stands for `value` in the log."""
        # hmac.digest is the one-shot C path: several times cheaper than building an HMAC object, and every
        # request digests its token, accessor and each string of its body and answer, twice (request, response).
        return "hmac-sha256:" + hmac.digest(self._salt, value.encode("utf-8", "surrogatepass"), "sha256").hex()

    def _tail(self) -> tuple[str, int]:
        """(hash, seq) of the last line written, across rotated files."""
        for f in reversed(list(chain_files(self.path))):
            try:
                lines = f.read_bytes().splitlines()
            except OSError:
                continue
            if lines:
                try:
                    seq = int(json.loads(lines[-1])["seq"])
                except (ValueError, KeyError, TypeError):
                    seq = 0
                return hashlib.sha256(lines[-1]).hexdigest(), seq
        return GENESIS, 0

    def write(self, entry: dict[str, Any]) -> None:
        """Append one entry (chained); AuditUnavailable when it cannot be written."""
        with self._lock:
            entry = {"time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), **entry,
                     "seq": self._seq + 1, "prev": self._prev}
            line = json.dumps(entry, separators=(",", ":"), sort_keys=True).encode()
            try:
                self._rotate_if_full()
                fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
                try:
                    if os.write(fd, line + b"\n") != len(line) + 1:
                        raise OSError(28, "short write")
                finally:
                    os.close(fd)
            except OSError as err:
                raise AuditUnavailable(f"the audit log {self.path} cannot be written ({err.strerror}): the request "
                                       "was refused; fix the file or its disk") from err
            self._prev, self._seq = hashlib.sha256(line).hexdigest(), self._seq + 1
            self._size += len(line) + 1

    def _rotate_if_full(self) -> None:
        if self._size < self.max_bytes:
            return
        self._size = 0
        if not self.path.exists():
            return
        n = 1 + max((int(f.name.rsplit(".", 1)[1]) for f in chain_files(self.path) if f != self.path), default=0)
        os.replace(self.path, self.path.with_name(f"{self.path.name}.{n}"))


def chain_files(path: Path) -> Iterator[Path]:
    """The rotated files in order (oldest first), then the live file."""
    rotated = []
    for f in path.parent.glob(path.name + ".*"):
        suffix = f.name[len(path.name) + 1:]
        if suffix.isdigit():
            rotated.append((int(suffix), f))
    yield from (f for _, f in sorted(rotated))
    if path.exists():
        yield path


def verify(path: Path) -> tuple[int, list[str]]:
    """(entries checked, problems): each problem names the file and line where the chain breaks."""
    prev, seq, count, problems = GENESIS, 0, 0, []
    for f in chain_files(path):
        with f.open("rb") as fh:
            for lineno, raw in enumerate(fh, 1):
                line = raw.rstrip(b"\n")
                count += 1
                try:
                    doc = json.loads(line)
                    got_prev, got_seq = str(doc["prev"]), int(doc["seq"])
                except (ValueError, KeyError, TypeError):
                    problems.append(f"{f}:{lineno}: not an audit entry (edited or corrupted)")
                    prev, seq = hashlib.sha256(line).hexdigest(), seq + 1
                    continue
                if got_prev != prev:
                    problems.append(f"{f}:{lineno}: the chain breaks here: the previous line was edited, removed "
                                    "or reordered")
                if got_seq != seq + 1:
                    problems.append(f"{f}:{lineno}: sequence {got_seq} follows {seq}: lines were removed or "
                                    "reordered")
                prev, seq = hashlib.sha256(line).hexdigest(), got_seq
    return count, problems
