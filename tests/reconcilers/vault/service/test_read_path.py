"""The KV read path made cheap stays as strict as before: a read's request and response entries are written
together (one write(), chained, before the answer leaves), an answer whose entries cannot be written is refused,
a read failing unexpectedly is still on record; what is kept between requests (the mount of a path, the engine
of a mount) follows the mount table; stored documents read back exactly, whatever JSON decoder reads them."""

from __future__ import annotations

import json
import math
import os
import shutil
from pathlib import Path

import pytest
import requests

from reconcilers.vault.service import audit as audit_module
from reconcilers.vault.service.audit import AuditLog, AuditUnavailable, verify
from reconcilers.vault.service.core import VaultService
from reconcilers.vault.service.engines import kv as kv_module
from reconcilers.vault.service.errors import NotFound
from reconcilers.vault.service.request import ApiRequest
from reconcilers.vault.service.storage.file import FileStore
from tests.reconcilers.vault.service.conftest import Served


def _entries(path: Path) -> list[dict[str, object]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_a_kv_read_is_audited_as_request_then_response_in_one_write(vault: Served,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """Both entries of a read, in order, chained, from one write() of the audit file (counted by wrapping
    os.write, the writes to the audit file's descriptor: the real write still happens)."""
    client = vault.client()
    client.secrets.kv.v2.create_or_update_secret("app/db", secret={"pw": "hunter2-value"})
    writes: list[bytes] = []
    real_write = os.write

    def counting(fd: int, data: bytes) -> int:
        if fd == vault.service.audit._fd[0]:
            writes.append(bytes(data))
        return real_write(fd, data)

    monkeypatch.setattr(os, "write", counting)
    answer = requests.get(f"{vault.url}/v1/secret/data/app/db", headers={"X-Vault-Token": vault.root_token},
                          timeout=5)
    assert answer.status_code == 200 and answer.json()["data"]["data"] == {"pw": "hunter2-value"}
    assert len(writes) == 1 and writes[0].count(b"\n") == 2
    request, response = _entries(vault.service.audit.path)[-2:]
    assert request["type"] == "request" and response["type"] == "response"
    assert request["request"] == response["request"] and request["request"]["path"] == "secret/data/app/db"  # type: ignore[index]
    assert response["response"]["status"] == 200  # type: ignore[index]
    assert "hunter2-value" not in vault.service.audit.path.read_text()
    assert verify(vault.service.audit.path)[1] == []


def test_a_kv_read_is_refused_when_its_entries_cannot_be_written(vault: Served) -> None:
    """The audit file made unwritable: a read answers 500 naming the audit log, and no value leaves."""
    vault.client().secrets.kv.v2.create_or_update_secret("app/db", secret={"pw": "hunter2-value"})
    path = vault.service.audit.path
    path.unlink()
    path.mkdir()               # root ignores file modes; a directory in its place cannot be appended to by anyone
    try:
        for url in (f"{vault.url}/v1/secret/data/app/db", f"{vault.url}/v1/secret/metadata/app?list=true"):
            answer = requests.get(url, headers={"X-Vault-Token": vault.root_token}, timeout=5)
            assert answer.status_code == 500 and "audit log" in answer.json()["errors"][0]
            assert "hunter2" not in answer.text and "db" not in answer.json()["errors"][0].split("audit log")[0]
    finally:
        shutil.rmtree(path)


def test_a_read_failing_unexpectedly_is_still_on_record(vault: Served, monkeypatch: pytest.MonkeyPatch) -> None:
    """A bug in the engine (simulated: nothing real raises there) answers 500, and its request entry was
    written; a read that is refused (404) has both entries."""
    requests.get(f"{vault.url}/v1/secret/data/none", headers={"X-Vault-Token": vault.root_token}, timeout=5)
    request, response = _entries(vault.service.audit.path)[-2:]
    assert (request["type"], response["type"], response["response"]["status"]) == ("request", "response", 404)  # type: ignore[index]

    def broken(self: object, p: str, version: int) -> object:
        raise RuntimeError("a bug")

    monkeypatch.setattr(kv_module.KV2, "read", broken)
    answer = requests.get(f"{vault.url}/v1/secret/data/app/db", headers={"X-Vault-Token": vault.root_token},
                          timeout=5)
    assert answer.status_code == 500
    last = _entries(vault.service.audit.path)[-1]
    assert last["type"] == "request" and last["request"]["path"] == "secret/data/app/db"  # type: ignore[index]
    assert verify(vault.service.audit.path)[1] == []


def test_entries_written_together_are_chained_and_all_or_none(tmp_path: Path) -> None:
    """`write(a, b)` chains b to a; when the write fails, neither counts, and the next entry chains to the
    last one that was written (verify finds no break)."""
    log = AuditLog(tmp_path / "audit.log")
    log.write({"type": "request", "n": 1}, {"type": "response", "n": 2})
    (tmp_path / "audit.log").unlink()
    (tmp_path / "audit.log").mkdir()
    with pytest.raises(AuditUnavailable):
        log.write({"type": "request", "n": 3}, {"type": "response", "n": 4})
    (tmp_path / "audit.log").rmdir()
    log.write({"type": "request", "n": 5})
    assert [e["seq"] for e in _entries(tmp_path / "audit.log")] == [3]      # 1 and 2 went with the removed file
    again = AuditLog(tmp_path / "other.log")
    again.write({"type": "request", "n": 1}, {"type": "response", "n": 2})
    again.write({"type": "request", "n": 3})
    assert verify(tmp_path / "other.log") == (3, [])
    assert [e["seq"] for e in _entries(tmp_path / "other.log")] == [1, 2, 3]


@pytest.mark.parametrize("seen", [
    {"auth": {"accessor": "hmac-sha256:ab", "client_token": "hmac-sha256:cd", "policies": ["root"],
              "display_name": "token"},
     "request": {"operation": "read", "path": "secret/data/a", "remote_address": "127.0.0.1", "data": {}}},
    {"request": {"path": "kv/data/\u00e9\u2028\"quoted\"", "operation": "list", "data": None},      # other key order
     "auth": {"policies": [], "display_name": "x\ny"}},
    {"auth": {}, "request": {}, "extra": 1},                    # not a KV read's shape: as write() does it
])
def test_a_read_pair_is_written_as_write_would_write_it(tmp_path: Path, seen: dict[str, object]) -> None:
    """write_exchange (a KV read's two entries, their shared parts serialized once) puts the very bytes that
    write(request, response) would, chained the same way, on either side of entries written by write()."""
    response = {"status": 200, "data": {"data": {"data": {"pw": "hmac-sha256:ef"}, "metadata": {"version": 3}}}}
    logs = {name: AuditLog(tmp_path / f"{name}.log", clock=lambda: 1_700_000_000) for name in ("pair", "plain")}
    for name, log in logs.items():
        log.write({"type": "request", "n": 0})
        if name == "pair":
            log.write_exchange(seen, response)
        else:
            log.write({"type": "request", **seen}, {"type": "response", **seen, "response": response})
        log.write({"type": "request", "n": 3})
    assert (tmp_path / "pair.log").read_bytes() == (tmp_path / "plain.log").read_bytes()
    assert verify(tmp_path / "pair.log") == (4, [])


def test_a_read_pair_refused_by_a_directory_counts_for_nothing(tmp_path: Path) -> None:
    """The audit path turned into a directory (seen at the next second's check of the path): write_exchange
    refuses (AuditUnavailable, fail closed as write), nothing counts, and the next pair chains on from the last
    entry written."""
    now = [1_700_000_000.0]
    log = AuditLog(tmp_path / "audit.log", clock=lambda: now[0])
    seen = {"auth": {"display_name": "t"}, "request": {"path": "secret/data/a"}}
    log.write_exchange(seen, {"status": 200, "data": None})
    (tmp_path / "audit.log").rename(tmp_path / "kept.log")
    (tmp_path / "audit.log").mkdir()
    now[0] += 1
    with pytest.raises(AuditUnavailable):
        log.write_exchange(seen, {"status": 200, "data": None})
    now[0] += 1
    (tmp_path / "audit.log").rmdir()
    (tmp_path / "kept.log").rename(tmp_path / "audit.log")
    log.write_exchange(seen, {"status": 200, "data": None})
    assert [e["seq"] for e in _entries(tmp_path / "audit.log")] == [1, 2, 3, 4]
    assert verify(tmp_path / "audit.log") == (4, [])


def _service(tmp_path: Path) -> tuple[VaultService, str, str]:
    """An unsealed vault on the file backend: (service, root token, its one unseal share)."""
    service = VaultService(FileStore(tmp_path / "store"), tmp_path / "audit.log", "file")
    init = service.initialize(1, 1, "base64")
    service.unseal(init["keys"][0])
    return service, str(init["root_token"]), str(init["keys"][0])


def test_what_is_kept_of_mounts_follows_the_table(tmp_path: Path) -> None:
    """A path read before its mount existed is found once it is mounted; a mount disabled and enabled again at
    the same path serves the new (empty) engine, never the old one's data; sealing and unsealing keeps working."""
    service, root, _share = _service(tmp_path)

    def call(method: str, path: str, body: dict[str, object] | None = None) -> object:
        return service.handle(ApiRequest(method, path, body or {}, token=root))

    with pytest.raises(NotFound):
        call("GET", "legacy/data/a")
    call("POST", "sys/mounts/legacy", {"type": "kv", "options": {"version": "2"}})
    call("POST", "legacy/data/a", {"data": {"v": "one"}})
    assert call("GET", "legacy/data/a")[1]["data"]["data"] == {"v": "one"}  # type: ignore[index]
    call("DELETE", "sys/mounts/legacy")
    with pytest.raises(NotFound):
        call("GET", "legacy/data/a")
    call("POST", "sys/mounts/legacy", {"type": "kv", "options": {"version": "1"}})
    with pytest.raises(NotFound):
        call("GET", "legacy/a")
    call("POST", "legacy/a", {"v": "two"})
    assert call("GET", "legacy/a")[1]["data"] == {"v": "two"}  # type: ignore[index]


@pytest.mark.parametrize("value", [2 ** 70, -(2 ** 64), 9223372036854775807, 0.1234567890123456789,
                                   "lone \udcff surrogate", float("nan"), float("inf"), [1, None, True, 1.5]])
def test_stored_documents_read_back_exactly(tmp_path: Path, value: object) -> None:
    """Values json.dumps stores that a faster decoder would read otherwise (an integer past 64 bits as a float)
    or refuses (NaN, infinity, a lone surrogate) read back with the same type and value, over KV v2 and v1."""
    service, root, _share = _service(tmp_path)
    service.handle(ApiRequest("POST", "secret/data/odd", {"data": {"v": value}}, token=root))
    got = service.handle(ApiRequest("GET", "secret/data/odd", {}, token=root))[1]["data"]["data"]["v"]  # type: ignore[index]
    service.handle(ApiRequest("POST", "sys/mounts/one", {"type": "kv"}, token=root))
    service.handle(ApiRequest("POST", "one/odd", {"v": value}, token=root))
    got_v1 = service.handle(ApiRequest("GET", "one/odd", {}, token=root))[1]["data"]["v"]  # type: ignore[index]
    for read in (got, got_v1):
        assert type(read) is type(value)
        if isinstance(value, float) and math.isnan(value):
            assert isinstance(read, float) and math.isnan(read)
        else:
            assert read == value


def test_kept_answers_are_never_older_than_storage(tmp_path: Path) -> None:
    """A KV engine keeps a read's answer only while the barrier returns the same bytes it was built from: a
    write through another engine on the same mount, a metadata change, a seal and unseal each make the next
    read decode storage again; a barrier that keeps nothing (a shared backend) leaves nothing kept."""
    service, _root, share = _service(tmp_path)
    mount = service.mounts.entries["secret/"]
    reader = service.mounts.engine(mount)
    assert reader is service.mounts.engine(mount) and reader.keep_answers > 0
    other = kv_module.KV2(service.mounts.store_of(mount), mount=mount.uuid)      # keeps nothing itself
    other.write("app", {"v": "one"}, None)
    assert reader.read("app", 0)[1]["data"]["data"] == {"v": "one"}  # type: ignore[index]
    assert reader.read("app", 0)[1]["data"]["data"] is reader.read("app", 0)[1]["data"]["data"]  # type: ignore[index]
    other.write("app", {"v": "two"}, None)
    assert reader.read("app", 0)[1]["data"]["data"] == {"v": "two"}  # type: ignore[index]
    other.handle("POST", "metadata/app", {"custom_metadata": {"team": "a"}}, {})
    assert reader.read("app", 0)[1]["data"]["metadata"]["custom_metadata"] == {"team": "a"}  # type: ignore[index]
    other.handle("DELETE", "data/app", {}, {})
    assert reader.read("app", 0)[0] == 404
    service.seal_now()
    service.unseal(share)
    assert reader.read("app", 0)[0] == 404
    assert service.mounts.engine(service.mounts.entries["secret/"]) is not reader    # a new table: new engines
    shared = VaultService(FileStore(tmp_path / "s2"), tmp_path / "a2.log", "postgresql")
    init = shared.initialize(1, 1, "base64")
    shared.unseal(init["keys"][0])
    engine = shared.mounts.engine(shared.mounts.entries["secret/"])
    engine.write("x", {"v": "1"}, None)
    engine.read("x", 0)
    assert engine.keep_answers == 0 and engine._answers == {}


def test_redaction_digests_strings_keeps_scalars_and_bounds_depth() -> None:
    """Every string leaf digested at any depth, numbers, booleans and null kept down to MAX_DEPTH and
    truncated below it, keys kept (non-string keys as strings), lists and tuples walked alike."""
    def digest(s: str) -> str:
        return "hmac-sha256:" + s.upper()

    body = {"a": "x", 1: [True, None, 2.5, ("y", 3)], "b": {"c": "z", "n": 7}, "raw": b"\x01"}
    assert audit_module.redact(body, digest) == {"a": "hmac-sha256:X", "1": [True, None, 2.5, ["hmac-sha256:Y", 3]],
                                                 "b": {"c": "hmac-sha256:Z", "n": 7}, "raw": "hmac-sha256:01"}
    deep: object = {"s": "leaf", "n": 1}
    for _ in range(audit_module.MAX_DEPTH + 1):
        deep = {"k": deep}
    node = audit_module.redact(deep, digest)
    for _ in range(audit_module.MAX_DEPTH):
        node = node["k"]
    assert node == {"k": "hmac-sha256:truncated"}                   # the dict past MAX_DEPTH itself
    shallow = {"k": {"s": "leaf", "n": 1}}
    for _ in range(audit_module.MAX_DEPTH - 2):
        shallow = {"k": shallow}
    node = audit_module.redact(shallow, digest)
    for _ in range(audit_module.MAX_DEPTH - 1):
        node = node["k"]
    assert node == {"s": "hmac-sha256:LEAF", "n": 1}                 # leaves at MAX_DEPTH: kept
    past = {"n": 1, "s": "leaf"}
    for _ in range(audit_module.MAX_DEPTH):
        past = {"k": past}
    node = audit_module.redact(past, digest)
    for _ in range(audit_module.MAX_DEPTH):
        node = node["k"]
    assert node == {"n": "hmac-sha256:truncated", "s": "hmac-sha256:LEAF"}    # leaves past it: truncated


def test_kept_answers_follow_storage_the_clock_and_the_salt(tmp_path: Path) -> None:
    """A read's answer is kept and returned again only while its documents are unchanged: a new version or a
    soft delete answer anew; a version that expires (delete_version_after) is never kept, so it reads as
    deleted once its time passes; the audit's redaction kept with an answer is made again under a new salt."""
    service, root, _share = _service(tmp_path)
    now = [1_000_000.0]

    def read(path: str = "secret/data/app") -> tuple[int, dict[str, object] | None]:
        return service.handle(ApiRequest("GET", path, {}, token=root))

    service.handle(ApiRequest("POST", "secret/data/app", {"data": {"v": "one"}}, token=root))
    first = read()[1]
    assert read()[1] is first                                      # kept
    service.handle(ApiRequest("POST", "secret/data/app", {"data": {"v": "two"}}, token=root))
    assert read()[1]["data"]["data"] == {"v": "two"}  # type: ignore[index]
    before = _entries(service.audit.path)[-1]["response"]["data"]["data"]["data"]["v"]  # type: ignore[index]
    read()
    service.audit.set_salt(b"a new salt")
    read()
    after = _entries(service.audit.path)[-1]["response"]["data"]["data"]["data"]["v"]  # type: ignore[index]
    assert before != after and after == service.audit.hash("two")
    service.handle(ApiRequest("DELETE", "secret/data/app", {}, token=root))
    assert read()[0] == 404                                        # soft-deleted: not the kept answer
    engine = service.mounts.engine(service.mounts.entries["secret/"])
    engine.clock = lambda: now[0]
    service.handle(ApiRequest("POST", "secret/metadata/soon", {"delete_version_after": "10s"}, token=root))
    service.handle(ApiRequest("POST", "secret/data/soon", {"data": {"v": "x"}}, token=root))
    assert read("secret/data/soon")[0] == 200 and read("secret/data/soon")[1] is not read("secret/data/soon")[1]
    now[0] += 11
    assert read("secret/data/soon")[0] == 404


def test_the_app_reads_the_token_and_length_from_headers_as_sent(tmp_path: Path) -> None:
    """VaultApp called as an ASGI server calls it (in process: the header forms below never pass llhttp):
    header names in any case, the token from X-Vault-Token or Authorization: Bearer, and a Content-Length that
    is not ASCII digits refused with 400 (a latin-1 superscript two passed str.isdigit and then failed int(),
    a 500, before)."""
    import asyncio

    from reconcilers.vault.service.api.app import VaultApp

    service, root, _ = _service(tmp_path)
    service.handle(ApiRequest("POST", "secret/data/app", {"data": {"pw": "v1"}}, token=root))
    app = VaultApp(service)

    def call(headers: list[tuple[bytes, bytes]], method: str = "GET") -> tuple[int, dict[str, object]]:
        sent: list[dict[str, object]] = []

        async def receive() -> dict[str, object]:
            return {"type": "http.request", "body": b"", "more_body": False}

        async def send(message: dict[str, object]) -> None:
            sent.append(message)

        scope = {"type": "http", "method": method, "path": "/v1/secret/data/app", "query_string": b"",
                 "headers": headers, "client": ("127.0.0.1", 1)}
        asyncio.run(app(scope, receive, send))
        body = sent[1]["body"]
        assert isinstance(body, bytes)
        return int(str(sent[0]["status"])), json.loads(body)

    status, doc = call([(b"X-Vault-Token", root.encode())])
    assert status == 200 and doc["data"]["data"] == {"pw": "v1"}            # type: ignore[index]
    assert call([(b"authorization", b"Bearer " + root.encode())])[0] == 200
    assert call([(b"x-vault-token", b"not-a-token")])[0] == 403
    for bad in (b"\xb2", b"1x", b"-1"):
        status, doc = call([(b"x-vault-token", root.encode()), (b"content-length", bad)], "POST")
        assert (status, doc) == (400, {"errors": ["invalid Content-Length"]}), bad


def test_kept_answers_are_bounded_by_count_and_stored_bytes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The answers a KV engine keeps stay under its count and under KEPT_BYTES of the stored bytes behind them
    (the oldest go first), and an answer built from an entry too large for the barrier to keep is not kept."""
    monkeypatch.setattr(kv_module, "KEPT_BYTES", 4000)
    service, root, _share = _service(tmp_path)
    engine = service.mounts.engine(service.mounts.entries["secret/"])
    for i in range(12):
        service.handle(ApiRequest("POST", f"secret/data/s{i}", {"data": {"v": "x" * 500}}, token=root))
        service.handle(ApiRequest("GET", f"secret/data/s{i}", {}, token=root))
        assert engine._kept_bytes <= 4000
        assert engine._kept_bytes == sum(len(k[0]) + len(k[2]) for k in engine._answers.values())
    assert 1 < len(engine._answers) < 12 and ("s11", 0) in engine._answers and ("s0", 0) not in engine._answers
    engine.keep_answers = 2
    service.handle(ApiRequest("GET", "secret/data/s3", {}, token=root))
    assert len(engine._answers) <= 2
    big = {"v": "y" * (2 * kv_module.KEPT_ENTRY_MAX)}
    service.handle(ApiRequest("POST", "secret/data/big", {"data": big}, token=root))
    status, body = service.handle(ApiRequest("GET", "secret/data/big", {}, token=root))
    assert status == 200 and body is not None and body["data"]["data"] == big
    assert ("big", 0) not in engine._answers
