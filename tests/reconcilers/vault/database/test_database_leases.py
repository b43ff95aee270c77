"""Lease bookkeeping that needs no database: the expiry index, sys/leases/tidy, listing, and lease ids."""

from __future__ import annotations

from reconcilers.vault.database import api, leases, reaper
from reconcilers.vault.pki.storage import MemoryStore
from tests.servers import free_port

NOW = 1_800_000_000


def _lease(ident: str, expire: int, role: str = "app") -> leases.Lease:
    return leases.Lease(role, ident, "main", f"v-{ident}", NOW - 60, expire, expire + 3600)


def test_due_leases_reads_only_due_minutes_and_in_order() -> None:
    """Leases due now are found (oldest minute first); later ones and stray markers are not returned."""
    store = MemoryStore()
    for ident, expire in (("late", NOW + 3600), ("b", NOW - 10), ("a", NOW - 7200)):
        leases.save(store, _lease(ident, expire))
    store.put(f"expiry/{(NOW - 300) // 60:012d}/app.ghost", b"")          # a marker whose lease is gone
    assert [lease.id for lease in leases.due_leases(store, NOW)] == ["a", "b"]
    assert store.list(f"expiry/{(NOW - 300) // 60:012d}/") == []          # the stray marker was cleaned up


def test_tidy_removes_stray_markers_and_restores_missing_ones() -> None:
    """sys/leases/tidy drops markers without a lease and gives a lease whose marker was lost a new one."""
    store = MemoryStore()
    kept, lost = _lease("kept", NOW + 60), _lease("lost", NOW + 120)
    leases.save(store, kept)
    leases.save(store, lost)
    store.delete(f"expiry/{lost.due // 60:012d}/app.lost")
    store.put("expiry/000000000001/app.nothing", b"")
    status, reply = api.sys_leases("PUT", "tidy", {}, store)
    assert status == 202 and reply["data"] == {"stray_markers_removed": 1, "markers_restored": 1}
    assert [lease.id for lease in leases.due_leases(store, NOW + 600)] == ["kept", "lost"]


def test_listing_and_lookup_by_lease_id() -> None:
    """LIST sys/leases/lookup/<prefix> walks mount, creds and role; lookup needs a lease id of this mount."""
    store = MemoryStore()
    leases.save(store, _lease("x1", NOW + 60))
    leases.save(store, _lease("y1", NOW + 60, role="ro"))
    assert api.sys_leases("LIST", "lookup/database/", {}, store)[1]["data"]["keys"] == ["creds/"]
    assert api.sys_leases("LIST", "lookup/database/creds/", {}, store)[1]["data"]["keys"] == ["app/", "ro/"]
    assert api.sys_leases("LIST", "lookup/database/creds/app/", {}, store)[1]["data"]["keys"] == ["x1"]
    assert api.sys_leases("LIST", "lookup/other/", {}, store)[0] == 404
    status, reply = api.sys_leases("PUT", "lookup", {"lease_id": "database/creds/app/x1"}, store)
    assert status == 200 and reply["data"]["renewable"] is True
    for bad in ("database/creds/app", "other/creds/app/x1", "database/creds/app/nope", "../../etc"):
        assert api.sys_leases("PUT", "lookup", {"lease_id": bad}, store)[0] == 404


def test_a_lease_revoked_meanwhile_is_not_brought_back_as_pending() -> None:
    """When a sweep fails on a lease that another call already revoked and deleted, the lease stays gone."""
    store = MemoryStore()
    url = f"postgresql://{{{{username}}}}:{{{{password}}}}@127.0.0.1:{free_port()}/postgres"   # nothing listens
    assert api.handle("POST", "config/main", {"plugin_name": "postgresql", "connection_url": url,
                                              "username": "u", "password": "p", "allowed_roles": "*",
                                              "verify_connection": False}, store)[0] == 204
    gone = _lease("gone", NOW - 1)                 # never stored (as if deleted while the sweep ran)
    kept = _lease("kept", NOW - 1)
    leases.save(store, kept)
    report = reaper.revoke_leases(store, [gone, kept], NOW, 2)
    assert report.pending == 1
    assert [lease.id for lease in leases.all_leases(store)] == ["kept"]
