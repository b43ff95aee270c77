"""One conformance suite for every storage backend (file, and real PostgreSQL and etcd servers on loopback), and
what happens when a backend goes away mid-request or the process dies during writes."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

import hvac
import pytest
import requests

from reconcilers.vault.service.barrier import Barrier
from reconcilers.vault.service.errors import BadRequest
from reconcilers.vault.service.storage.base import KeyValueStore, StorageUnavailable
from reconcilers.vault.service.storage.etcd import EtcdStore
from reconcilers.vault.service.storage.file import FileStore
from reconcilers.vault.service.storage.postgresql import PostgresStore
from tests.proc import ROOT, cli_env, wait_for
from tests.reconcilers.vault.service.conftest import start_vault
from tests.servers import Etcd, Postgres, start_etcd, start_postgres

BACKENDS = ["file", "postgresql", "etcd"]


def new_database(pg: Postgres) -> str:
    """A fresh database in the session's PostgreSQL: its URL."""
    name = "t_" + uuid.uuid4().hex[:12]
    pg.psql(f"CREATE DATABASE {name}")
    return pg.url.rsplit("/", 1)[0] + "/" + name


@pytest.fixture(params=BACKENDS)
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[KeyValueStore]:
    """An empty store of each backend."""
    if request.param == "file":
        yield FileStore(tmp_path / "store")
    elif request.param == "postgresql":
        pg_store = PostgresStore(new_database(request.getfixturevalue("postgres")))
        yield pg_store
        pg_store.close()
    else:
        server: Etcd = request.getfixturevalue("etcd")
        yield EtcdStore(server.url, namespace=f"t-{uuid.uuid4().hex[:12]}/")


def test_get_put_delete_round_trip_bytes(store: KeyValueStore) -> None:
    """Every byte value survives; a missing path is None; overwrite replaces; delete is idempotent."""
    value = bytes(range(256)) * 3
    assert store.get("a/b") is None
    store.put("a/b", value)
    assert store.get("a/b") == value
    store.put("a/b", b"second")
    assert store.get("a/b") == b"second"
    store.delete("a/b")
    store.delete("a/b")
    assert store.get("a/b") is None


def test_list_gives_direct_children_vault_style(store: KeyValueStore) -> None:
    """Leaves by name, folders once as "name/", a leaf and a folder of the same name both, nothing deeper."""
    for p in ("x/one", "x/two", "x/sub/deep/three", "x/sub", "y", "x/ünï çødé"):
        store.put(p, b"v")
    assert store.list("x/") == sorted(["one", "two", "sub/", "sub", "ünï çødé"])
    assert store.list("") == ["x/", "y"]
    assert store.list("x/sub/") == ["deep/"]
    assert store.list("nothing/") == []
    store.delete("x/sub/deep/three")
    assert store.list("x/sub/") == []
    assert "sub/" not in store.list("x/")


@pytest.mark.parametrize("bad", ["", "a/../b", "a//b", "./a", "a/\x00", "a/\x1b[31m"])
def test_invalid_paths_are_refused_by_every_backend(store: KeyValueStore, bad: str) -> None:
    """The same path rules everywhere: BadRequest, nothing stored."""
    with pytest.raises(BadRequest):
        store.put(bad, b"v")
    assert store.list("") == []


def test_the_whole_vault_runs_on_each_backend(store: KeyValueStore, tmp_path: Path) -> None:
    """init, unseal, KV v2 through hvac, a barrier rotation: the same answers on every backend."""
    served = start_vault(tmp_path, store)
    try:
        client = served.client()
        client.secrets.kv.v2.create_or_update_secret("app/db", secret={"password": "p1"})
        client.sys.rotate_encryption_key()
        client.secrets.kv.v2.create_or_update_secret("app/db", secret={"password": "p2"})
        read = client.secrets.kv.v2.read_secret_version("app/db", version=1, raise_on_deleted_version=True)
        assert read["data"]["data"] == {"password": "p1"}
        assert client.secrets.kv.v2.list_secrets("app")["data"]["keys"] == ["db"]
        served.service.seal_now()
        client.sys.submit_unseal_key(served.keys[0])
        assert client.secrets.kv.v2.read_secret_version("app/db", raise_on_deleted_version=True)["data"]["data"] == {
            "password": "p2"}
    finally:
        served.server.stop()


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["postgresql", "etcd"])
def test_backend_gone_mid_request_is_a_clear_503_and_recovers(backend: str, tmp_path: Path) -> None:
    """The server stops: requests get 503 naming the backend, nothing half-written; it returns: all works again."""
    server: Postgres | Etcd
    # Not under tmp_path: another pytest session resets /tmp/pytest-of-root to 0700, and the postgres user
    # then cannot reach its data directory (seen here with several sessions at once).
    own = Path(tempfile.mkdtemp(prefix="stratum-vault-pg-"))
    if backend == "postgresql":
        server = start_postgres(own)
        store: KeyValueStore = PostgresStore(server.url, timeout_s=2)
    else:
        server = start_etcd(tmp_path / "etcd")
        store = EtcdStore(server.url, timeout_s=2)
    served = start_vault(tmp_path / "v", store)
    try:
        client = served.client()
        client.secrets.kv.v2.create_or_update_secret("k", secret={"v": "1"})
        server.stop()
        answer = requests.post(f"{served.url}/v1/secret/data/k", json={"data": {"v": "2"}},
                               headers={"X-Vault-Token": served.root_token}, timeout=30)
        assert answer.status_code == 503, answer.text
        assert f"storage backend {backend} unavailable" in answer.json()["errors"][0]
        server.start()
        wait_for(lambda: _reads(client) is not None, 30, 0.2)
        read = client.secrets.kv.v2.read_secret_version("k", raise_on_deleted_version=True)
        assert read["data"]["data"] == {"v": "1"} and read["data"]["metadata"]["version"] == 1
        client.secrets.kv.v2.create_or_update_secret("k", secret={"v": "2"})
        assert client.secrets.kv.v2.read_secret_metadata("k")["data"]["current_version"] == 2
    finally:
        served.server.stop()
        if server.running():
            server.stop()
        if isinstance(store, PostgresStore):
            store.close()
        shutil.rmtree(own, ignore_errors=True)


def _reads(client: hvac.Client) -> object:
    try:
        return client.secrets.kv.v2.read_secret_version("k", raise_on_deleted_version=True)
    except (hvac.exceptions.VaultError, requests.RequestException):
        return None


WRITER = """
import sys
from pathlib import Path
from reconcilers.vault.service.barrier import Barrier
from reconcilers.vault.service.storage.file import FileStore
b = Barrier(FileStore(Path(sys.argv[1])))
b.unseal(bytes.fromhex(sys.argv[2]))
print("ready", flush=True)
i = 0
while True:
    b.put(f"k/{i % 50}", (f"value-{i}-" * 2000).encode())
    i += 1
"""


@pytest.mark.slow
def test_killed_during_writes_leaves_no_corrupt_entry(tmp_path: Path) -> None:
    """SIGKILL a process writing entries as fast as it can: after restart every entry decrypts whole."""
    root = os.urandom(32)
    Barrier(FileStore(tmp_path / "s")).initialize(root)
    proc = subprocess.Popen([sys.executable, "-c", WRITER, str(tmp_path / "s"), root.hex()], env=cli_env(),
                            cwd=ROOT, stdout=subprocess.PIPE)
    assert proc.stdout is not None and proc.stdout.readline().strip() == b"ready"
    wait_for(lambda: len(list((tmp_path / "s" / "k.d").glob("*.v"))) >= 40, 60)   # k/<n> entries, not core/
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    proc.stdout.close()
    barrier = Barrier(FileStore(tmp_path / "s"))       # reopening sweeps temporary files
    barrier.unseal(root)
    names = barrier.list("k/")
    assert len(names) >= 40
    for name in names:
        value = barrier.get("k/" + name)
        assert value is not None and value.startswith(b"value-") and len(value) % 2 == 0
    assert not [p for p in (tmp_path / "s").rglob(".tmp-*")]


def test_unavailable_is_a_vault_error_not_a_crash() -> None:
    """A store that cannot be reached raises StorageUnavailable with status 503 (no URL, no password)."""
    with pytest.raises(StorageUnavailable) as err:
        PostgresStore("postgresql://postgres:s3cret-pw@127.0.0.1:1/postgres", timeout_s=1)
    assert err.value.status == 503 and "s3cret-pw" not in str(err.value)
