"""The audit log: every authenticated request and its response as a JSON line, hash-chained, failing closed.

Secret values, tokens and accessors are replaced by `hmac-sha256:<hex>` under a per-vault salt (kept behind the
barrier), as Vault does; `sys/audit-hash` computes the digest of a given string so an operator can find it.
Each line carries `seq` and `prev` (the SHA-256 of the previous line's bytes), so `verify` finds an edited,
removed or reordered line. When the file passes `max_bytes` it is renamed `<name>.<n>` and the chain goes on
in a new file. If a line cannot be written the request fails: no unaudited access.

The file stays open between entries (opening it per entry cost two system calls, ~13 us here), and each call
of `write` is one write() with O_APPEND, of one entry or of several chained ones (a read's request and response
entries: see core.py). Before each write an fstat of the open file checks it still has a name (a file removed,
or replaced by a rename or by a directory, has none), and once a second a stat of the path checks it still
names that file (device and inode); otherwise the path is opened again, so the log never goes on into a file
nobody can see, and a path that cannot be opened (a directory now) fails the request as before. Nothing is
fsynced per entry (the contract is "written", as it was).

Group commit (KV reads through the API on the event loop, `write_exchange(batch=True)`): the entries of the
reads run in one loop turn are chained at once and written together by one write() at the start of the next
turn, before any of those reads answers (each waits on the batch's future); if that write fails, each of them
is refused (500) and the chain goes back to the last entry written. Any other entry written meanwhile, from any
thread, takes the open batch with it (the chain's order is the file's order). Under load this is one write()
and one fstat for several reads instead of one each (the system time of a read was most of what it cost above
the bare endpoint's).
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import os
import stat
import threading
import time
import weakref
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import orjson

from reconcilers.vault.service.errors import Unavailable

GENESIS = "0" * 64
MAX_DEPTH = 32
DIGESTS_MAX = 4096          # digests kept by value: a request digests the same token and fields every time


class AuditUnavailable(Unavailable):
    """The audit log cannot be written: the request is refused."""

    status = 500


_SCALARS = frozenset((int, bool, float, type(None)))
_SEEN_KEYS = {"auth": None, "request": None}.keys()      # what VaultService._audited returns (write_exchange)


def redact(value: Any, digest: Callable[[str], str], depth: int = 0) -> Any:
    """`value` with every string leaf replaced by its digest (keys stay readable; depth bounded)."""
    # Exact types first (what JSON bodies hold), subclasses after: every request's answer goes through here.
    kind = type(value)
    if kind is str:
        return digest(value)
    if depth > MAX_DEPTH:
        return "hmac-sha256:truncated"
    if kind is dict:
        if depth >= MAX_DEPTH:
            return {k if type(k) is str else str(k): redact(v, digest, depth + 1) for k, v in value.items()}
        # The leaves of a dict inline (a string is digested, a plain scalar kept, as the call on each would):
        # a read's answer is mostly leaves, and a call per leaf was most of this function's cost.
        out = {}
        for k, v in value.items():
            t = type(v)
            out[k if type(k) is str else str(k)] = (digest(v) if t is str else v if t in _SCALARS
                                                     else redact(v, digest, depth + 1))
        return out
    if kind is list:
        return [redact(v, digest, depth + 1) for v in value]
    if value is None or kind is int or kind is bool or kind is float:
        return value
    if isinstance(value, str):
        return digest(value)
    if isinstance(value, bytes | bytearray):
        return digest(bytes(value).hex())          # raw bodies (DER certificates, OCSP): digested as hex
    if isinstance(value, dict):
        return {str(k): redact(v, digest, depth + 1) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [redact(v, digest, depth + 1) for v in value]
    return value


def dumps_line(entry: dict[str, Any]) -> bytes:
    """One entry as compact JSON with sorted keys (orjson; the standard library for what orjson refuses, such as
    lone surrogates or integers past 64 bits). `verify` hashes the bytes as written, so either is fine."""
    try:
        return orjson.dumps(entry, option=orjson.OPT_SORT_KEYS | orjson.OPT_NON_STR_KEYS)
    except orjson.JSONEncodeError:
        return json.dumps(entry, separators=(",", ":"), sort_keys=True, default=str).encode()


class AuditLog:
    """Append-only, hash-chained JSON lines at `path`, rotated at `max_bytes`."""

    def __init__(self, path: Path, max_bytes: int = 64 * 1024 * 1024,
                 clock: Callable[[], float] = time.time) -> None:
        self.path = path
        self.max_bytes = max_bytes
        self.clock = clock
        self._lock = threading.Lock()
        self._salt = b""
        self._digests: dict[str, str] = {}
        self._redacted: dict[int, tuple[Any, Any]] = {}     # id(answer) -> (answer, its redaction)
        # The descriptor held open (-1: none) in a list a finalizer closes when the log is dropped (a raw
        # descriptor: a file object left to the collector would warn), and its (device, inode) when opened.
        self._fd = [-1]
        self._ident = (0, 0)
        weakref.finalize(self, _close_fd, self._fd)
        self._batch: _Batch | None = None        # entries of this loop turn not written yet (write_exchange)
        self._second = -1                        # the entry time, formatted once a second
        self._stamp = ""
        self._prev, self._seq = self._tail()
        try:
            self._size = path.stat().st_size     # kept in memory after this: one writer, no stat per entry
        except OSError:
            self._size = 0

    def set_salt(self, salt: bytes) -> None:
        """The vault's HMAC salt (known once unsealed); the digests kept under the previous one go."""
        self._salt = salt
        self.forget()

    def forget(self) -> None:
        """Drop the digests kept by value (at seal: they are keyed by the values, secrets among them)."""
        self._digests = {}
        self._redacted = {}

    def redact_shared(self, body: Any) -> Any:
        """`redact(body, self.hash)` for an answer an engine returns again unchanged (KV2.shares): kept with it,
        by identity (the kept answer is held, so its id names it alone), bounded, dropped with the digests."""
        kept = self._redacted.get(id(body))
        if kept is not None and kept[0] is body:
            return kept[1]
        done = redact(body, self.hash)
        if len(self._redacted) >= DIGESTS_MAX:
            self._redacted = {}
        self._redacted[id(body)] = (body, done)
        return done

    def hash(self, value: str) -> str:
        """The digest that stands for `value` in the log."""
        found = self._digests.get(value)
        if found is not None:
            return found
        # hmac.digest is the one-shot C path: several times cheaper than building an HMAC object, and every
        # request digests its token, accessor and each string of its body and answer.
        found = "hmac-sha256:" + hmac.digest(self._salt, value.encode("utf-8", "surrogatepass"), "sha256").hex()
        digests = self._digests
        if len(digests) >= DIGESTS_MAX:
            digests.clear()                        # bounded; a race only costs recomputing a digest
        digests[value] = found
        return found

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

    def write(self, *entries: dict[str, Any]) -> None:
        """Append `entries` (each chained to the one before) in one write(); AuditUnavailable when they cannot
        be written (then none counts as written: the chain in memory stays at the last entry that was)."""
        with self._lock:
            self._append(*self._lines(entries))

    def _lines(self, entries: tuple[dict[str, Any], ...]) -> tuple[bytes, str, int, bool]:
        """(`entries` as chained lines after the last one, the hash of the last, its seq, whether a second
        began); the caller holds the lock."""
        now = int(self.clock())
        new_second = now != self._second
        if new_second:
            self._second, self._stamp = now, time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(now))
        prev, seq, lines = self._prev, self._seq, []
        for entry in entries:
            seq += 1
            line = dumps_line({"time": self._stamp, **entry, "seq": seq, "prev": prev})
            prev = hashlib.sha256(line).hexdigest()
            lines.append(line)
        lines.append(b"")
        return b"\n".join(lines), prev, seq, new_second

    def write_exchange(self, seen: dict[str, Any], response: dict[str, Any],
                       batch: bool = False) -> asyncio.Future[None] | None:
        """`write({"type": "request", **seen}, {"type": "response", **seen, "response": response})`, the same
        bytes, with the parts both entries share (`seen`: auth and request) serialized once: a KV read writes
        this pair on every request (core.py), and serializing its entries was most of `write`'s cost.

        With `batch` (on the event loop only) the pair joins the entries of this loop turn, written together
        by one write() once the turn's requests have run (group commit: one system call for several reads);
        the future it returns is done when they are written, or raises AuditUnavailable: the caller must not
        answer before it is done, so no read goes unaudited and a failed write still refuses each of them."""
        if seen.keys() != _SEEN_KEYS:
            entries = ({"type": "request", **seen}, {"type": "response", **seen, "response": response})
            if batch:
                with self._lock:
                    self._write_other_loops_batch()
                    return self._stage(*self._lines(entries))
            self.write(*entries)
            return None
        # Keys sorted as dumps_line sorts them: auth, prev, request, response, seq, time, type.
        auth = b'{"auth":' + dumps_line(seen["auth"]) + b',"prev":"'
        request = b'","request":' + dumps_line(seen["request"])
        answer = b',"response":' + dumps_line(response)
        with self._lock:
            if batch:
                self._write_other_loops_batch()
            now = int(self.clock())
            new_second = now != self._second
            if new_second:
                self._second, self._stamp = now, time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(now))
            tail = b',"time":"' + self._stamp.encode() + b'","type":"'
            seq = self._seq
            first = (auth + self._prev.encode() + request + b',"seq":' + str(seq + 1).encode() + tail
                     + b'request"}')
            middle = hashlib.sha256(first).hexdigest()
            second = (auth + middle.encode() + request + answer + b',"seq":' + str(seq + 2).encode() + tail
                      + b'response"}')
            data, prev = first + b"\n" + second + b"\n", hashlib.sha256(second).hexdigest()
            if not batch:
                self._append(data, prev, seq + 2, new_second)
                return None
            return self._stage(data, prev, seq + 2, new_second)

    def _write_other_loops_batch(self) -> None:
        """Write the open batch of another listener's loop before new entries are chained after it: if that
        write fails, the chain goes back to before it, and entries already chained onto the lost ones would
        break it. The caller holds the lock and runs on an event loop."""
        if self._batch is not None and self._batch.loop is not asyncio.get_running_loop():
            self._flush()

    def _stage(self, data: bytes, prev: str, seq: int, new_second: bool) -> asyncio.Future[None]:
        """Add `data` (chained after every entry before it: see _write_other_loops_batch) to the batch of this
        loop turn (opened here, written by `flush` once the turn's other callbacks ran); the chain goes on from
        it at once (rolled back if its write fails). The caller holds the lock and runs on the event loop."""
        loop = asyncio.get_running_loop()
        batch = self._batch
        if batch is None:
            batch = self._batch = _Batch(loop, self._prev, self._seq)
            loop.call_soon(self.flush)
        batch.data.append(data)
        batch.check_path = batch.check_path or new_second
        self._prev, self._seq = prev, seq
        return batch.done

    def flush(self) -> None:
        """Write the open batch (its entries, in one write()); its waiters learn whether it was written."""
        with self._lock:
            self._flush()

    def _flush(self) -> None:
        """`flush` with the lock held."""
        batch, self._batch = self._batch, None
        if batch is None:
            return                                   # written already, before another entry (`_append`)
        end = (self._prev, self._seq)                # the chain after the batch's last entry
        self._prev, self._seq = batch.start          # `_append` moves it on again once they are written
        try:
            self._append(b"".join(batch.data), *end, batch.check_path)
        except AuditUnavailable as err:
            batch.settle(err)
            return
        batch.settle(None)

    def _append(self, data: bytes, prev: str, seq: int, new_second: bool) -> None:
        """Write `data` (whole lines, the last hashing to `prev`, numbered up to `seq`) in one write(); the
        caller holds the lock. AuditUnavailable when it cannot be written (the chain stays where it was).
        An open batch (entries before these in the chain) goes first, in the same write()."""
        batch, self._batch = self._batch, None
        if batch is not None:
            data, new_second = b"".join(batch.data) + data, new_second or batch.check_path
        try:
            self._rotate_if_full()
            if os.write(self._file(new_second), data) != len(data):
                raise OSError(28, "short write")
        except Exception as err:                 # any failure (a rotation's ValueError too) settles the batch
            self.close()
            why = err.strerror if isinstance(err, OSError) else f"{type(err).__name__}: {err}"
            failed = AuditUnavailable(f"the audit log {self.path} cannot be written ({why}): the request "
                                      "was refused; fix the file or its disk")
            if batch is not None:
                self._prev, self._seq = batch.start
                batch.settle(failed)
            raise failed from err
        self._prev, self._seq = prev, seq
        self._size += len(data)
        if batch is not None:
            batch.settle(None)

    def _file(self, check_path: bool) -> int:
        """The open log file's descriptor, opened again when the file lost its name (removed, replaced) or,
        checked when `check_path`, its path names another file now (renamed away)."""
        fd = self._fd[0]
        if fd >= 0 and os.fstat(fd).st_nlink > 0:
            if not check_path:
                return fd
            try:
                st = os.stat(self.path)
                if (st.st_dev, st.st_ino) == self._ident:
                    return fd
            except FileNotFoundError:
                pass                               # renamed away: created again below
        self.close()
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o600)
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            os.close(fd)
            raise OSError(21, "not a regular file")
        self._fd[0], self._ident = fd, (st.st_dev, st.st_ino)
        return fd

    def close(self) -> None:
        """Close the file held open (the next entry opens it again)."""
        _close_fd(self._fd)

    def _rotate_if_full(self) -> None:
        if self._size < self.max_bytes:
            return
        self._size = 0
        if not self.path.exists():
            return
        n = 1 + max((int(f.name.rsplit(".", 1)[1]) for f in chain_files(self.path) if f != self.path), default=0)
        os.replace(self.path, self.path.with_name(f"{self.path.name}.{n}"))
        self.close()


class _Batch:
    """Entries staged in one event loop turn: their lines, the chain before them, and the future their
    requests wait on before answering."""

    __slots__ = ("check_path", "data", "done", "loop", "start", "thread")

    def __init__(self, loop: asyncio.AbstractEventLoop, prev: str, seq: int) -> None:
        self.loop = loop
        self.thread = threading.get_ident()
        self.start = (prev, seq)
        self.data: list[bytes] = []
        self.check_path = False
        self.done: asyncio.Future[None] = loop.create_future()

    def settle(self, err: AuditUnavailable | None) -> None:
        """Tell the waiters (from another thread, through the loop: a future is the loop's alone)."""
        if threading.get_ident() == self.thread:
            _settle(self.done, err)
        elif not self.loop.is_closed():              # a closed loop's listener is gone: nobody waits
            self.loop.call_soon_threadsafe(_settle, self.done, err)


def _settle(done: asyncio.Future[None], err: AuditUnavailable | None) -> None:
    if done.done():
        return                                   # its waiters were cancelled (the listener stopping)
    if err is None:
        done.set_result(None)
    else:
        done.set_exception(err)


def _close_fd(held: list[int]) -> None:
    fd, held[0] = held[0], -1
    if fd >= 0:
        try:
            os.close(fd)
        except OSError:
            pass  # a descriptor we give up on: nothing was left unwritten (each entry is one whole write)


def chain_files(path: Path) -> Iterator[Path]:
    """The rotated files in order (oldest first), then the live file."""
    rotated = []
    for f in path.parent.glob(path.name + ".*"):
        suffix = f.name[len(path.name) + 1:]
        if suffix.isascii() and suffix.isdigit():        # str.isdigit alone takes "²", which int() refuses
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
