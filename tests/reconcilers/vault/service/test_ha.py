"""Active/standby with two real stratumd on different data directories sharing one PostgreSQL or etcd: one is
active, the other redirects (307) and says who leads; killing the active one makes the standby active within
the lease time, and every acknowledged write is still there."""

from __future__ import annotations

import uuid
from pathlib import Path

import hvac
import pytest
import requests

from reconcilers.vault.service.core import VaultService
from reconcilers.vault.service.storage.etcd import EtcdStore
from reconcilers.vault.service.storage.postgresql import PostgresStore
from tests.fixtures import WorkRepo, bare_repo, infra, resource
from tests.proc import DaemonProc, wait_for
from tests.servers import free_port

pytestmark = pytest.mark.slow


def _leader(url: str) -> dict[str, object] | None:
    try:
        return dict(requests.get(f"{url}/v1/sys/leader", timeout=2).json())
    except (requests.RequestException, ValueError):
        return None


@pytest.mark.parametrize("backend", ["postgresql", "etcd"])
def test_standby_redirects_and_takes_over_when_the_active_node_dies(backend: str, tmp_path: Path,
                                                                     request: pytest.FixtureRequest) -> None:
    """A active, B standby (429 on health, 307 to A, sys/leader names A); writes through B land; A is killed:
    B becomes active within the lease and serves every acknowledged write."""
    if backend == "postgresql":
        pg = request.getfixturevalue("postgres")
        name = "ha_" + uuid.uuid4().hex[:10]
        pg.psql(f"CREATE DATABASE {name}")
        url = pg.url.rsplit("/", 1)[0] + "/" + name
        store: PostgresStore | EtcdStore = PostgresStore(url)
        namespace = ""
    else:
        url = request.getfixturevalue("etcd").url
        namespace = f"ha-{uuid.uuid4().hex[:10]}/"
        store = EtcdStore(url, namespace=namespace)
    init = VaultService(store, tmp_path / "init-audit.log", backend).initialize(1, 1, "base64")
    if isinstance(store, PostgresStore):
        store.close()
    keyfile = tmp_path / "unseal"
    keyfile.write_text(init["keys"][0] + "\n")
    keyfile.chmod(0o600)
    remote = bare_repo(tmp_path / "remote.git")
    work = WorkRepo(tmp_path / "work", remote=remote)
    first = work.commit({"infra/motd.ncl": infra(resource("motd", "file", path="etc/motd", content="hi\n"))})
    work.push()
    nodes: dict[str, str] = {}
    daemons: dict[str, DaemonProc] = {}
    try:
        for name in ("a", "b"):
            port = free_port()
            nodes[name] = f"http://127.0.0.1:{port}"
            config = tmp_path / f"{name}.toml"
            storage_ns = f'storage_namespace = "{namespace}"\n' if backend == "etcd" else ""
            config.write_text(f'[vault]\nlisten = "127.0.0.1:{port}"\nstorage = "{backend}"\n'
                              f'storage_url = "{url}"\n{storage_ns}ha = true\nha_lease_s = 3\n'
                              f'unseal_key_file = "{keyfile}"\n')
            daemons[name] = DaemonProc(str(remote), tmp_path / f"data-{name}", tmp_path / f"root-{name}",
                                       "--config", str(config))
            wait_for(lambda n=name: (_leader(nodes[n]) or {}).get("leader_address"), 60)  # type: ignore[misc]
        daemons["a"].wait_run(first)
        a, b = _leader(nodes["a"]), _leader(nodes["b"])
        assert a is not None and b is not None
        assert (a["is_self"], b["is_self"]) == (True, False)
        assert a["leader_address"] == b["leader_address"] == nodes["a"]
        assert requests.get(f"{nodes['b']}/v1/sys/health", timeout=5).status_code == 429
        raw = requests.get(f"{nodes['b']}/v1/secret/data/x", headers={"X-Vault-Token": init["root_token"]},
                           allow_redirects=False, timeout=5)
        assert raw.status_code == 307 and raw.headers["location"] == f"{nodes['a']}/v1/secret/data/x"
        via_b = hvac.Client(url=nodes["b"], token=init["root_token"])          # follows the redirects
        for i in range(5):
            via_b.secrets.kv.v2.create_or_update_secret("acked", secret={"n": str(i)})
        daemons["a"].kill()
        wait_for(lambda: (_leader(nodes["b"]) or {}).get("is_self") is True, 60, 0.1)
        b_only = hvac.Client(url=nodes["b"], token=init["root_token"])
        read = b_only.secrets.kv.v2.read_secret_version("acked", raise_on_deleted_version=True)
        assert read["data"]["data"] == {"n": "4"} and read["data"]["metadata"]["version"] == 5
        b_only.secrets.kv.v2.create_or_update_secret("after", secret={"ok": "yes"})
        assert requests.get(f"{nodes['b']}/v1/sys/health", timeout=5).status_code == 200
    finally:
        for d in daemons.values():
            if d.proc.poll() is None:
                d.stop()


def test_a_node_that_lost_its_lock_cannot_write_postgresql(postgres: object) -> None:
    """Fencing (review finding: a stalled active kept writing past its lease): node A's lock session ends (as
    when the server drops a stalled client), B takes the lock; A's fenced writes are refused, B's go through."""
    from reconcilers.vault.service.ha import PostgresLease
    from reconcilers.vault.service.storage.base import StorageUnavailable

    pg = postgres
    name = "fence_" + uuid.uuid4().hex[:10]
    pg.psql(f"CREATE DATABASE {name}")  # type: ignore[attr-defined]
    url = pg.url.rsplit("/", 1)[0] + "/" + name  # type: ignore[attr-defined]
    store_a, store_b = PostgresStore(url), PostgresStore(url)
    lease_a, lease_b = PostgresLease(url), PostgresLease(url)
    try:
        assert lease_a.hold() and not lease_b.hold()
        lease_a.fence(store_a, True)
        store_a.put("k", b"from-a")
        pid = lease_a._conn.info.backend_pid
        pg.psql(f"SELECT pg_terminate_backend({pid})")  # type: ignore[attr-defined]
        wait_for(lambda: lease_b.hold(), 30, 0.1)
        lease_b.fence(store_b, True)
        with pytest.raises(StorageUnavailable, match="no longer holds"):
            store_a.put("k", b"late-from-a")
        with pytest.raises(StorageUnavailable, match="no longer holds"):
            store_a.delete("k")
        store_b.put("k", b"from-b")
        assert store_b.get("k") == b"from-b"
    finally:
        for closing in (lease_a, lease_b):
            closing.release()
        store_a.close()
        store_b.close()


def test_a_node_that_lost_its_lease_cannot_write_etcd(etcd: object) -> None:
    """The same with etcd: A's lease is gone (revoked, as when it expires while A stalls), B takes the lock;
    A's writes are refused by the guarded transaction."""
    from reconcilers.vault.service.ha import EtcdLease
    from reconcilers.vault.service.storage.base import StorageUnavailable

    url = etcd.url  # type: ignore[attr-defined]
    ns = f"fence-{uuid.uuid4().hex[:10]}/"
    store_a, store_b = EtcdStore(url, namespace=ns), EtcdStore(url, namespace=ns)
    lease_a, lease_b = EtcdLease(url, 10, ns), EtcdLease(url, 10, ns)
    try:
        assert lease_a.hold() and not lease_b.hold()
        lease_a.fence(store_a, True)
        store_a.put("k", b"from-a")
        assert lease_a.lock.lease is not None
        lease_a.lock.lease.revoke()
        wait_for(lambda: lease_b.hold(), 30, 0.1)
        lease_b.fence(store_b, True)
        with pytest.raises(StorageUnavailable, match="no longer holds"):
            store_a.put("k", b"late-from-a")
        store_b.put("k", b"from-b")
        assert store_b.get("k") == b"from-b"
    finally:
        lease_b.release()
