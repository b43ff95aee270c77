"""Group commit of KV reads' audit entries: the reads run in one event loop turn have their entries written by
one write(), every answer leaves only after that write, a write that fails refuses each of them (500) and
the chain goes on from the last entry written; an entry written directly meanwhile takes the batch with it."""

from __future__ import annotations

import asyncio
import json
import os
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from reconcilers.vault.service.api.app import VaultApp
from reconcilers.vault.service.audit import AuditLog, AuditUnavailable, verify
from reconcilers.vault.service.core import VaultService
from reconcilers.vault.service.request import ApiRequest
from reconcilers.vault.service.storage.file import FileStore

NEWLINE = b"\n"
ANSWERED: Counter[tuple[int, str]] = Counter()       # answers sent, per app and path (see _get)
SEEN = {"auth": {"display_name": "t"}, "request": {"path": "secret/data/a"}}


def _vault(tmp_path: Path, clock: Any = None) -> tuple[VaultService, str]:
    service = VaultService(FileStore(tmp_path / "store"), tmp_path / "audit.log", "file",
                           **({"clock": clock} if clock else {}))
    init = service.initialize(1, 1, "base64")
    service.unseal(init["keys"][0])
    root = str(init["root_token"])
    for i in range(3):
        service.handle(ApiRequest("POST", f"secret/data/k{i}", {"data": {"pw": f"v{i}"}}, token=root))
    return service, root


async def _get(app: VaultApp, path: str, token: str, events: list[str]) -> tuple[int, dict[str, Any]]:
    """One GET through the ASGI app, as uvicorn calls it; `events` records when its answer starts, and the
    answer checks that its audit entries are in the file by then."""
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        if message["type"] == "http.response.start":
            events.append(f"answer {path}")
            if message["status"] == 200:
                ANSWERED[(id(app), path)] += 1
                lines = [json.loads(x) for x in app.service.audit.path.read_text().splitlines()]
                written = sum(e["type"] == "response" and e["request"]["path"] == path for e in lines)
                assert written >= ANSWERED[(id(app), path)], f"{path} answered before its entries were written"
        sent.append(message)

    scope = {"type": "http", "method": "GET", "path": f"/v1/{path}", "query_string": b"",
             "headers": [(b"x-vault-token", token.encode())], "client": ("127.0.0.1", 1)}
    await app(scope, receive, send)
    return int(sent[0]["status"]), json.loads(sent[1]["body"])


def _count_audit_writes(monkeypatch: pytest.MonkeyPatch, log: AuditLog, events: list[str]) -> None:
    """Record each write() to the audit file (the real write still happens)."""
    real = os.write

    def counting(fd: int, data: bytes) -> int:
        if fd == log._fd[0]:
            events.append(f"audit write of {data.count(NEWLINE)} lines")
        return real(fd, data)

    monkeypatch.setattr(os, "write", counting)


def test_reads_of_one_loop_turn_are_audited_by_one_write_before_any_answer(tmp_path: Path,
                                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    service, root = _vault(tmp_path)
    app = VaultApp(service)
    events: list[str] = []
    _count_audit_writes(monkeypatch, service.audit, events)

    async def three() -> list[tuple[int, dict[str, Any]]]:
        return await asyncio.gather(*(_get(app, f"secret/data/k{i}", root, events) for i in range(3)))

    answers = asyncio.run(three())
    assert [(status, doc["data"]["data"]) for status, doc in answers] == [(200, {"pw": f"v{i}"}) for i in range(3)]
    # The first of the turn writes its own entries at once (nothing told it others would follow); the two after
    # it share one write at the start of the next turn, before either answers (each answer checked that its
    # entries were in the file: see _get).
    assert events == ["audit write of 2 lines", "answer secret/data/k0", "audit write of 4 lines",
                      "answer secret/data/k1", "answer secret/data/k2"]
    lines = [json.loads(x) for x in (tmp_path / "audit.log").read_text().splitlines()]
    assert [(e["type"], e["request"]["path"]) for e in lines[-6:]] == [
        (kind, f"secret/data/k{i}") for i in range(3) for kind in ("request", "response")]
    events.clear()

    async def busy_then_lone() -> None:
        await three()                                        # a busy turn: the next one batches from its first
        events.clear()
        await asyncio.gather(*(_get(app, f"secret/data/k{i}", root, events) for i in range(2)))
        events.append("--")
        await asyncio.sleep(0)                               # a turn with no request: the next lone one is alone
        await _get(app, "secret/data/k0", root, events)

    asyncio.run(busy_then_lone())
    assert events == ["audit write of 4 lines", "answer secret/data/k0", "answer secret/data/k1", "--",
                      "audit write of 2 lines", "answer secret/data/k0"]
    assert verify(tmp_path / "audit.log")[1] == []
    assert "v1" not in (tmp_path / "audit.log").read_text()       # values digested, as ever


def test_a_batch_that_cannot_be_written_refuses_every_read_in_it(tmp_path: Path) -> None:
    now = [1_700_000_000.0]
    service, root = _vault(tmp_path, clock=lambda: now[0])
    service.audit.clock = lambda: now[0]
    app = VaultApp(service)
    events: list[str] = []
    (tmp_path / "audit.log").rename(tmp_path / "kept.log")
    (tmp_path / "audit.log").mkdir()            # the path is checked again once a second: the next one
    now[0] += 1

    async def three() -> list[tuple[int, dict[str, Any]]]:
        return await asyncio.gather(*(_get(app, f"secret/data/k{i}", root, events) for i in range(3)))

    answers = asyncio.run(three())
    assert [status for status, _ in answers] == [500, 500, 500]
    assert all("audit log" in doc["errors"][0] for _, doc in answers)
    assert all("v" + str(i) not in json.dumps(doc) for i, (_, doc) in enumerate(answers))
    (tmp_path / "audit.log").rmdir()
    (tmp_path / "kept.log").rename(tmp_path / "audit.log")
    now[0] += 1
    status, doc = asyncio.run(_get(app, "secret/data/k1", root, events))
    assert (status, doc["data"]["data"]) == (200, {"pw": "v1"})
    assert verify(tmp_path / "audit.log") == (len((tmp_path / "audit.log").read_text().splitlines()), [])


def test_an_entry_written_directly_takes_the_open_batch_with_it(tmp_path: Path,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    """A batch is open (a read staged its entries this turn) when another entry is written directly (a write
    request, the reconciler): both go in one write(), the batch's entries first, and its waiters are told."""
    log = AuditLog(tmp_path / "audit.log")
    log.write({"type": "request", "n": 0})
    events: list[str] = []
    _count_audit_writes(monkeypatch, log, events)

    async def turn() -> None:
        written = log.write_exchange(SEEN, {"status": 200, "data": None}, batch=True)
        assert written is not None and not written.done()
        log.write({"type": "request", "n": 3})
        await written                               # done, not raising: the batch was written
        log.flush()                                 # nothing left: no second write

    asyncio.run(turn())
    assert events == ["audit write of 3 lines"]
    assert [json.loads(x).get("type") for x in (tmp_path / "audit.log").read_text().splitlines()] == [
        "request", "request", "response", "request"]
    assert verify(tmp_path / "audit.log") == (4, [])


def test_a_failed_batch_rolls_the_chain_back(tmp_path: Path) -> None:
    """Staged entries move the chain on at once; when their write fails the waiters get AuditUnavailable and
    the next entry chains to the last one written (verify finds no gap, no break)."""
    now = [1_700_000_000.0]
    log = AuditLog(tmp_path / "audit.log", clock=lambda: now[0])
    log.write({"type": "request", "n": 0})

    async def turn() -> None:
        written = log.write_exchange(SEEN, {"status": 200, "data": None}, batch=True)
        assert written is not None
        with pytest.raises(AuditUnavailable):
            await written

    (tmp_path / "audit.log").rename(tmp_path / "kept.log")
    (tmp_path / "audit.log").mkdir()
    now[0] += 1
    asyncio.run(turn())
    (tmp_path / "audit.log").rmdir()
    (tmp_path / "kept.log").rename(tmp_path / "audit.log")
    now[0] += 1
    log.write_exchange(SEEN, {"status": 200, "data": None})
    assert [json.loads(x)["seq"] for x in (tmp_path / "audit.log").read_text().splitlines()] == [1, 2, 3]
    assert verify(tmp_path / "audit.log") == (3, [])


def test_an_entry_written_from_another_thread_takes_the_batch_and_tells_its_loop(tmp_path: Path) -> None:
    """The reconciler writes from its own thread: with a batch open on the listener's loop, that write takes the
    batch first, and the batch's future (the loop's alone) is settled through the loop."""
    import threading

    log = AuditLog(tmp_path / "audit.log")

    async def turn() -> None:
        written = log.write_exchange(SEEN, {"status": 200, "data": None}, batch=True)
        assert written is not None
        other = threading.Thread(target=log.write, args=({"type": "reconcile", "n": 1},))
        other.start()
        other.join()                     # blocks this loop: the future can only be settled once it runs again
        assert not written.done()
        await written

    asyncio.run(turn())
    assert [json.loads(x)["type"] for x in (tmp_path / "audit.log").read_text().splitlines()] == [
        "request", "response", "reconcile"]
    assert verify(tmp_path / "audit.log") == (3, [])


def test_entries_of_another_loop_are_chained_after_that_loops_batch_is_written(tmp_path: Path) -> None:
    """Two listeners (two event loops) share one log. Loop A's batch is still open when loop B audits a read, and
    writing A's batch fails: A's reads are refused, and B's entries chain to the last line really written, so
    the chain still verifies. Before, B's lines were made from A's unwritten entries before A's batch was
    written, and the file had a gap in `seq` and a `prev` that matched no line (review of this stop)."""
    import threading

    now = [1_700_000_000.0]
    log = AuditLog(tmp_path / "audit.log", clock=lambda: now[0])
    log.write({"type": "request", "n": 0})
    staged, b_done = threading.Event(), threading.Event()
    outcome: list[str] = []

    async def turn_a() -> None:
        written = log.write_exchange(SEEN, {"status": 200, "data": None}, batch=True)
        assert written is not None
        staged.set()
        b_done.wait(30)                  # holds loop A: its batch stays open while loop B audits
        try:
            await written
            outcome.append("written")
        except AuditUnavailable:
            outcome.append("refused")

    (tmp_path / "audit.log").rename(tmp_path / "kept.log")
    (tmp_path / "audit.log").mkdir()     # A's batch (a new second: the path is opened again) cannot be written
    now[0] += 1
    a = threading.Thread(target=asyncio.run, args=(turn_a(),))
    a.start()
    assert staged.wait(30)

    async def turn_b() -> None:
        written = log.write_exchange(SEEN, {"status": 200, "data": None}, batch=True)
        assert written is not None
        (tmp_path / "audit.log").rmdir()
        (tmp_path / "kept.log").rename(tmp_path / "audit.log")
        await written

    asyncio.run(turn_b())
    b_done.set()
    a.join(30)
    assert outcome == ["refused"]
    assert [json.loads(x)["seq"] for x in (tmp_path / "audit.log").read_text().splitlines()] == [1, 2, 3]
    assert verify(tmp_path / "audit.log") == (3, [])


def test_a_stray_file_named_like_a_rotated_one_neither_stops_nor_hangs_batched_reads(tmp_path: Path) -> None:
    """A file `audit.log.²` beside the log: its suffix passed `str.isdigit` but not `int()`, so the rotation a
    batched read's write ran into raised ValueError, which left the batch unsettled and its reads waiting
    for ever. Now such a name is not a rotated file, the batch is written and the log rotates."""
    log = AuditLog(tmp_path / "audit.log", max_bytes=200)
    (tmp_path / "audit.log.²").write_text("not ours\n")
    log.write({"type": "request", "n": 0, "pad": "x" * 300})

    async def turn() -> None:
        written = log.write_exchange(SEEN, {"status": 200, "data": None}, batch=True)
        assert written is not None
        await asyncio.wait_for(written, 10)

    asyncio.run(turn())
    assert (tmp_path / "audit.log.1").exists()
    assert verify(tmp_path / "audit.log") == (3, [])
