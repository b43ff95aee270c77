"""What the read path keeps between requests stays correct: the barrier's decrypted-entry cache (bounded, dropped
on write and seal, never keeping a value a racing write replaced), the audit log's open file (a log removed,
replaced or renamed away is opened again by its path; a directory there fails closed) and its digests."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from reconcilers.vault.service import barrier as barrier_module
from reconcilers.vault.service.audit import AuditLog, AuditUnavailable, verify
from reconcilers.vault.service.barrier import Barrier, CorruptEntry
from reconcilers.vault.service.core import VaultService
from reconcilers.vault.service.errors import Sealed
from reconcilers.vault.service.request import ApiRequest
from reconcilers.vault.service.storage.base import MemoryStore
from reconcilers.vault.service.storage.file import FileStore

ROOT_KEY = b"r" * 32


def _open_barrier(store: MemoryStore, entries: int) -> Barrier:
    barrier = Barrier(store, cache_entries=entries)
    barrier.initialize(ROOT_KEY)
    barrier.unseal(ROOT_KEY)
    return barrier


def test_cached_reads_follow_writes_and_deletes() -> None:
    """A read after a put or delete through the barrier sees it, even when the path was kept."""
    barrier = _open_barrier(MemoryStore(), 16)
    barrier.put("logical/a", b"one")
    assert barrier.get("logical/a") == b"one"
    barrier.put("logical/a", b"two")
    assert barrier.get("logical/a") == b"two"
    barrier.delete("logical/a")
    assert barrier.get("logical/a") is None


def test_the_cache_is_bounded_by_entries_and_bytes(monkeypatch: pytest.MonkeyPatch) -> None:
    """At most `cache_entries` entries and CACHE_BYTES bytes are kept; entries over CACHE_ENTRY_MAX never."""
    barrier = _open_barrier(MemoryStore(), 3)
    for i in range(10):
        barrier.put(f"logical/k{i}", b"x" * 100)
        assert barrier.get(f"logical/k{i}") == b"x" * 100
    assert len(barrier._cache) == 3
    assert sorted(barrier._cache) == ["logical/k7", "logical/k8", "logical/k9"]     # the oldest went first
    monkeypatch.setattr(barrier_module, "CACHE_BYTES", 250)
    barrier.get("logical/k1")
    assert barrier._cache_bytes <= 250 and len(barrier._cache) == 2
    big = b"y" * (barrier_module.CACHE_ENTRY_MAX + 1)
    barrier.put("logical/big", big)
    assert barrier.get("logical/big") == big and "logical/big" not in barrier._cache


def test_seal_drops_what_was_kept_and_storage_is_read_again_after_unseal() -> None:
    """After a seal nothing is served from memory (Sealed), and after the unseal an entry tampered with in
    storage meanwhile fails authentication: it was read from storage again, not from what was kept."""
    store = MemoryStore()
    barrier = _open_barrier(store, 16)
    barrier.put("logical/a", b"secret")
    barrier.put("logical/b", b"other")
    assert barrier.get("logical/a") == b"secret"
    barrier.seal()
    assert barrier._cache == {}
    with pytest.raises(Sealed):
        barrier.get("logical/a")
    store.data["logical/a"] = store.data["logical/b"]
    barrier.unseal(ROOT_KEY)
    with pytest.raises(CorruptEntry):
        barrier.get("logical/a")


class _RacingStore(MemoryStore):
    """A store whose next read of `path` lets a write through the barrier land while it is being read (what a
    writer thread can do between a reader's storage read and its caching)."""

    def __init__(self) -> None:
        super().__init__()
        self.barrier: Barrier | None = None
        self.race: tuple[str, bytes] | None = None

    def get(self, path: str) -> bytes | None:
        blob = super().get(path)
        if self.race is not None and self.race[0] == path and self.barrier is not None:
            _, value = self.race
            self.race = None
            self.barrier.put(path, value)          # the write lands after this read took the old blob
        return blob


def test_a_read_racing_a_write_does_not_keep_the_replaced_value() -> None:
    """The reader got the old value (it read first), but must not keep it: the next read sees the write."""
    store = _RacingStore()
    barrier = _open_barrier(store, 16)
    store.barrier = barrier
    barrier.put("logical/a", b"old")
    store.race = ("logical/a", b"new")
    assert barrier.get("logical/a") == b"old"
    assert barrier.get("logical/a") == b"new"


def test_only_the_file_backend_keeps_decrypted_entries(tmp_path: Path) -> None:
    """The file backend has one writer (this node); a shared backend does not cache (another node writes)."""
    assert VaultService(FileStore(tmp_path / "f"), tmp_path / "a1.log", "file").barrier._cache_max > 0
    assert VaultService(MemoryStore(), tmp_path / "a2.log", "postgresql").barrier._cache_max == 0


def test_a_removed_audit_log_is_created_again_at_its_path(tmp_path: Path) -> None:
    """The log is held open, but an entry after the file was removed goes to a new file at the path, not to
    the removed one (which nobody could read)."""
    log = AuditLog(tmp_path / "audit.log")
    log.write({"type": "request", "n": 1})
    (tmp_path / "audit.log").unlink()
    log.write({"type": "request", "n": 2})
    lines = (tmp_path / "audit.log").read_text().splitlines()
    assert [json.loads(line)["n"] for line in lines] == [2]


def test_an_audit_log_replaced_by_a_directory_fails_closed(tmp_path: Path) -> None:
    """The path replaced by a directory while the file is held open: the entry is refused."""
    log = AuditLog(tmp_path / "audit.log")
    log.write({"type": "request"})
    (tmp_path / "audit.log").unlink()
    (tmp_path / "audit.log").mkdir()
    with pytest.raises(AuditUnavailable, match="cannot be written"):
        log.write({"type": "request"})


def test_an_audit_log_renamed_away_is_left_within_a_second(tmp_path: Path) -> None:
    """A log renamed away (an outside rotation) keeps its name, so the open file looks fine; the path is
    checked once a second, and entries from the next second on go to a new file at the path."""
    now = [1000.0]
    log = AuditLog(tmp_path / "audit.log", clock=lambda: now[0])
    log.write({"type": "request", "n": 1})
    os.rename(tmp_path / "audit.log", tmp_path / "moved.log")
    now[0] += 1
    log.write({"type": "request", "n": 2})
    assert [json.loads(line)["n"] for line in (tmp_path / "audit.log").read_text().splitlines()] == [2]
    assert [json.loads(line)["n"] for line in (tmp_path / "moved.log").read_text().splitlines()] == [1]


def test_entries_orjson_cannot_encode_are_still_written_and_chained(tmp_path: Path) -> None:
    """A lone surrogate (a path's odd bytes) or an integer past 64 bits: written through the standard library
    encoder, the chain intact."""
    log = AuditLog(tmp_path / "audit.log")
    log.write({"type": "request", "request": {"path": "secret/data/\udcff"}})
    log.write({"type": "request", "request": {"n": 2 ** 70}})
    log.write({"type": "request", "request": {"path": "ok"}})
    assert verify(tmp_path / "audit.log") == (3, [])


def test_digests_kept_by_value_go_at_seal_and_with_a_new_salt(tmp_path: Path) -> None:
    """The digests kept by value (they are keyed by secrets) are dropped at seal, and a new salt never serves a
    digest made under the old one."""
    service = VaultService(FileStore(tmp_path / "store"), tmp_path / "audit.log", "file")
    init = service.initialize(1, 1, "base64")
    service.unseal(init["keys"][0])
    root = init["root_token"]
    service.handle(ApiRequest("POST", "secret/data/a", {"data": {"pw": "hunter2"}}, token=root))
    first = service.audit.hash("hunter2")
    assert "hunter2" in service.audit._digests
    service.seal_now()
    assert service.audit._digests == {}
    service.audit.set_salt(b"another salt")
    assert service.audit.hash("hunter2") != first
