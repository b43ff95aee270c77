"""The test servers of tests/servers.py start, answer, stop and start again (real PostgreSQL, etcd, NATS)."""

from __future__ import annotations

import base64
import json
import socket
import urllib.request
from pathlib import Path

import pytest

from tests.servers import Etcd, Nats, Postgres, etcd, nats, postgres, start_etcd, start_nats, start_postgres  # noqa: F401  (fixtures)

pytestmark = pytest.mark.slow


def test_postgres_answers_and_survives_a_restart(tmp_path: Path) -> None:
    pg: Postgres = start_postgres(tmp_path / "pg")
    try:
        pg.psql("CREATE TABLE t (v text); INSERT INTO t VALUES ('kept')")
        pg.stop()
        assert not pg.running()
        pg.start()
        assert pg.psql("SELECT v FROM t") == "kept"
    finally:
        pg.stop("immediate")


def test_session_postgres_fixture(postgres: Postgres) -> None:  # noqa: F811
    assert postgres.psql("SELECT 1 + 1") == "2"


def _etcd_put_get(server: Etcd, key: str, value: str) -> str:
    def call(path: str, body: dict[str, str]) -> dict[str, object]:
        req = urllib.request.Request(server.url + path, json.dumps(body).encode(), method="POST")
        with urllib.request.urlopen(req, timeout=5) as resp:
            return dict(json.loads(resp.read()))

    b64 = lambda s: base64.b64encode(s.encode()).decode()  # noqa: E731
    call("/v3/kv/put", {"key": b64(key), "value": b64(value)})
    got = call("/v3/kv/range", {"key": b64(key)})
    kvs = got["kvs"]
    assert isinstance(kvs, list)
    return base64.b64decode(kvs[0]["value"]).decode()


def test_etcd_answers_and_survives_a_restart(tmp_path: Path) -> None:
    server = start_etcd(tmp_path / "etcd")
    try:
        assert _etcd_put_get(server, "k", "v1") == "v1"
        server.stop()
        assert not server.running()
        server.start()
        assert _etcd_put_get(server, "k", "v2") == "v2"
    finally:
        server.stop()


def test_session_etcd_fixture(etcd: Etcd) -> None:  # noqa: F811
    assert _etcd_put_get(etcd, "session", "ok") == "ok"


def _nats_info(server: Nats) -> dict[str, object]:
    with socket.create_connection(("127.0.0.1", server.port), timeout=5) as sock:
        line = sock.makefile("rb").readline().decode()
    assert line.startswith("INFO ")
    return dict(json.loads(line[5:]))


def test_nats_has_jetstream_and_restarts(tmp_path: Path) -> None:
    server = start_nats(tmp_path / "nats")
    try:
        assert _nats_info(server)["jetstream"] is True
        server.stop()
        server.start()
        assert _nats_info(server)["jetstream"] is True
    finally:
        server.stop()


def test_session_nats_fixture(nats: Nats) -> None:  # noqa: F811
    assert _nats_info(nats)["port"] == nats.port
