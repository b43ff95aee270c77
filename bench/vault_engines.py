"""Benchmark: the vault's PKI and database engines (issue 15).

    python bench/vault_engines.py [--issue 1000] [--revoked 20000] [--revokes 20] [--no-naive]
                                  [--leases 10000] [--connections 1,4,8] [--skip-db]

PKI: issue rate per key type (ec, ml-dsa-65; each under a root of its own type), and the time to revoke one
certificate with 20,000 already on the CRL (target under 200 ms; Vault #9176 reports 2-3 s at 17,000), on an
in-memory store and on an encrypted file store like the vault's barrier (AES-256-GCM, atomic write + fsync per
entry). Beside it, once, the naive rebuild with `CertificateRevocationListBuilder` over the same entries (what
the engine avoids: the builder copies its list on every add).
Database: 10,000 live leases expiring together against a real PostgreSQL on loopback (started here with
tests/servers.py, as the tests do): the reaper's sweep time per connection limit, and the most connections
open at once, counted by the engine and sampled from pg_stat_activity.
No timing asserts. Prints tables and writes bench/results/vault_engines.json. The machine may be shared: the
load average is recorded.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from cryptography import x509
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.serialization import Encoding

from bench.common import ms, print_table, summary, verdict, write_result
from reconcilers.vault.pki import api, ca, certbuild, keys, revocation
from reconcilers.vault.pki.storage import KeyValueStore, MemoryStore

REVOKE_TARGET_MS = 200.0


class EncryptedFileStore:
    """A file per entry, AES-256-GCM with the path as associated data, written atomically with fsync: the cost
    profile of the vault's file barrier (which is being built in parallel and is not importable here yet)."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.aead = AESGCM(AESGCM.generate_key(256))
        self.sync = True                    # off only while the benchmark lays down its untimed setup

    def _file(self, path: str) -> Path:
        return self.root / path.replace("/", "%")

    def get(self, path: str) -> bytes | None:
        try:
            blob = self._file(path).read_bytes()
        except FileNotFoundError:
            return None
        return self.aead.decrypt(blob[:12], blob[12:], path.encode())

    def put(self, path: str, value: bytes) -> None:
        nonce = os.urandom(12)
        tmp = self._file(path).with_suffix(".tmp")
        with open(tmp, "wb") as f:
            f.write(nonce + self.aead.encrypt(nonce, value, path.encode()))
            if self.sync:
                f.flush()
                os.fsync(f.fileno())
        tmp.replace(self._file(path))

    def delete(self, path: str) -> None:
        self._file(path).unlink(missing_ok=True)

    def list(self, prefix: str) -> list[str]:
        names = [p.name.replace("%", "/") for p in self.root.iterdir() if not p.name.endswith(".tmp")]
        return sorted({n[len(prefix):].split("/")[0] for n in names if n.startswith(prefix)})


def _call(store: KeyValueStore, method: str, path: str, body: dict[str, Any]) -> dict[str, Any]:
    status, reply = api.handle(method, path, body, store)
    if status >= 300:
        raise SystemExit(f"bench: {method} {path} answered {status}: {reply}")
    return reply


def bench_issue(n: int) -> list[dict[str, Any]]:
    """Issue n certificates per key type under a root of the same type; certificates per second."""
    rows = []
    for key_type in ("ec", "ml-dsa-65"):
        store = MemoryStore()
        _call(store, "POST", "root/generate/internal", {"common_name": "bench", "key_type": key_type})
        _call(store, "POST", "roles/web", {"allow_any_name": True, "key_type": key_type})
        start, cpu = time.perf_counter(), time.process_time()
        for i in range(n):
            _call(store, "POST", "issue/web", {"common_name": f"h{i}.example.com", "ttl": "24h"})
        wall, cpu_used = time.perf_counter() - start, time.process_time() - cpu
        rows.append({"key_type": key_type, "certificates": n, "seconds": wall, "per_second": n / wall,
                     "cpu_per_second": n / cpu_used})
    return rows


def _fill(store: KeyValueStore, count: int, now: dt.datetime) -> list[int]:
    """`count` issued-certificate records, all revoked with one CRL signature, plus spares to revoke one by one
    (written without fsync: setup, not measured)."""
    if isinstance(store, EncryptedFileStore):
        store.sync = False
    serials = []
    for i in range(count + 200):
        serial = x509.random_serial_number()
        serials.append(serial)
        not_after = int((now + dt.timedelta(days=30 + i % 30)).timestamp())
        store.put(certbuild.storage_key(serial), b'{"certificate":"-","not_after":%d}' % not_after)
    revocation.revoke_many(store, ca.load(store), serials[:count], now)
    if isinstance(store, EncryptedFileStore):
        store.sync = True
    return serials[count:]


def bench_revoke(store: KeyValueStore, label: str, revoked: int, revokes: int) -> dict[str, Any]:
    """Time single revocations (API call: record, append, re-sign the CRL, store it) with `revoked` on the CRL."""
    now = dt.datetime.now(dt.UTC)
    _call(store, "POST", "root/generate/internal", {"common_name": "bench", "key_type": "ec"})
    spare = _fill(store, revoked, now)
    times, cpu = [], []
    for serial in spare[:revokes]:
        start, cpu_start = time.perf_counter(), time.process_time()
        _call(store, "POST", "revoke", {"serial_number": certbuild.serial_text(serial)})
        times.append(time.perf_counter() - start)
        cpu.append(time.process_time() - cpu_start)
    crl = x509.load_der_x509_crl(_call(store, "GET", "crl", {})["_raw"])
    assert len(crl) == revoked + revokes, "bench: the CRL does not hold every revocation"
    return {"store": label, "on_crl": revoked, "crl_bytes": len(crl.public_bytes(Encoding.DER)),
            "revoke_ms": {k: (ms(v) if k != "n" else v) for k, v in summary(times).items()},
            "revoke_cpu_ms": {k: (ms(v) if k != "n" else v) for k, v in summary(cpu).items()}}


def bench_naive(revoked: int) -> float:
    """One CRL over `revoked` entries with cryptography's builder, as a per-revocation rebuild would sign it."""
    key = keys.generate("ec")
    now = dt.datetime.now(dt.UTC)
    start = time.perf_counter()
    builder = (x509.CertificateRevocationListBuilder().issuer_name(certbuild.name("naive"))
               .last_update(now).next_update(now + dt.timedelta(days=3)))
    for _ in range(revoked):
        builder = builder.add_revoked_certificate(x509.RevokedCertificateBuilder()
                                                  .serial_number(x509.random_serial_number())
                                                  .revocation_date(now).build())
    builder.sign(key, keys.hash_for(key))
    return time.perf_counter() - start


def _lease_setup(store: KeyValueStore, pg: Any, count: int, now: int, tag: str) -> None:
    """`count` database roles made in one statement and their leases written straight to the store, all due at
    `now` (setup, not measured: making them one creds call at a time would take minutes)."""
    from reconcilers.vault.database import leases

    pg.psql(f"DO $$ BEGIN FOR i IN 1..{count} LOOP EXECUTE format('CREATE ROLE %I LOGIN', "
            f"'v-bench-{tag}-' || i); END LOOP; END $$")
    for i in range(1, count + 1):
        leases.save(store, leases.Lease(role="bench", id=f"{tag}{i:06d}", db_name="main",
                                        username=f"v-bench-{tag}-{i}", issue_time=now - 3600,
                                        expire_time=now - 1, max_expire_time=now))


class _Sampler:
    """Counts the engine's connections as PostgreSQL sees them (pg_stat_activity), every 20 ms, on a thread."""

    def __init__(self, url: str) -> None:
        import threading

        import psycopg
        self.conn = psycopg.connect(url, autocommit=True)
        self.peak = 0
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while not self.stop.is_set():
            row = self.conn.execute("SELECT count(*) FROM pg_stat_activity WHERE application_name = "
                                    "'stratum-reaper'").fetchone()
            self.peak = max(self.peak, int(row[0]) if row else 0)
            time.sleep(0.02)

    def close(self) -> int:
        self.stop.set()
        self.thread.join(timeout=10)
        self.conn.close()
        return self.peak


def bench_leases(count: int, connection_limits: list[int]) -> list[dict[str, Any]]:
    """Sweep `count` expired leases per connection limit against a real PostgreSQL on loopback."""
    from reconcilers.vault.database import api as db_api
    from reconcilers.vault.database import reaper
    from tests.servers import start_postgres

    rows = []
    with tempfile.TemporaryDirectory(prefix="stratum-bench-db-") as tmp:
        pg = start_postgres(Path(tmp) / "pg")
        try:
            for limit in connection_limits:
                store = MemoryStore()
                url = pg.url.replace("postgres@", "{{username}}@") + "?application_name=stratum-reaper"
                status, reply = db_api.handle("POST", "config/main", {
                    "plugin_name": "postgresql", "connection_url": url, "username": "postgres",
                    "allowed_roles": "*", "max_open_connections": limit}, store)
                assert status < 300, reply
                status, reply = db_api.handle("POST", "roles/bench", {
                    "db_name": "main", "creation_statements": 'CREATE ROLE "{{name}}" LOGIN',
                    "revocation_statements": 'DROP ROLE IF EXISTS "{{name}}"'}, store)
                assert status < 300, reply
                now = int(time.time())
                _lease_setup(store, pg, count, now, f"c{limit}")
                sampler = _Sampler(pg.url)
                report = reaper.reap(store, now, max_connections=limit)
                seen = sampler.close()
                left = pg.psql(f"SELECT count(*) FROM pg_roles WHERE rolname LIKE 'v-bench-c{limit}-%'")
                rows.append({"leases": count, "max_connections": limit, "seconds": report.seconds,
                             "per_second": report.revoked / report.seconds, "revoked": report.revoked,
                             "pending": report.pending, "peak_connections_engine": report.max_open_connections,
                             "peak_connections_postgres": seen, "roles_left": int(left)})
        finally:
            pg.stop()
    print_table(f"Lease expiry sweep: {count:,} leases due at once (real PostgreSQL on loopback; lease store in "
                "memory)", ["max conns", "seconds", "leases/s", "revoked", "pending", "peak conns (engine)",
                            "peak conns (pg_stat_activity)", "roles left"],
                [[r["max_connections"], r["seconds"], r["per_second"], r["revoked"], r["pending"],
                  r["peak_connections_engine"], r["peak_connections_postgres"], r["roles_left"]] for r in rows])
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--issue", type=int, default=1000)
    parser.add_argument("--revoked", type=int, default=20000)
    parser.add_argument("--revokes", type=int, default=20)
    parser.add_argument("--no-naive", action="store_true")
    parser.add_argument("--leases", type=int, default=10000)
    parser.add_argument("--connections", default="1,4,8", help="reaper connection limits to sweep with")
    parser.add_argument("--skip-db", action="store_true", help="PKI only (no PostgreSQL here)")
    args = parser.parse_args()
    load_start = os.getloadavg()
    result: dict[str, Any] = {"loadavg_at_start": load_start}

    issue_rows = bench_issue(args.issue)
    result["issue"] = issue_rows
    print_table(f"PKI issue ({args.issue} certificates each; load average {load_start[0]:.2f})",
                ["key type", "seconds", "certs/s", "certs/s of CPU"],
                [[r["key_type"], r["seconds"], r["per_second"], r["cpu_per_second"]] for r in issue_rows])

    revoke_rows = [bench_revoke(MemoryStore(), "memory", args.revoked, args.revokes)]
    with tempfile.TemporaryDirectory(prefix="stratum-bench-pki-") as tmp:
        revoke_rows.append(bench_revoke(EncryptedFileStore(Path(tmp)), "encrypted file + fsync", args.revoked,
                                        args.revokes))
    result["revoke"] = revoke_rows
    table = [[r["store"], r["on_crl"], r["crl_bytes"], r["revoke_ms"]["p50"], r["revoke_ms"]["p99"],
              r["revoke_ms"]["max"], r["revoke_cpu_ms"]["p50"], verdict(r["revoke_ms"]["p99"], REVOKE_TARGET_MS)]
             for r in revoke_rows]
    if not args.no_naive:
        naive = bench_naive(args.revoked)
        result["naive_builder_rebuild_ms"] = ms(naive)
        table.append(["naive: builder over all entries", args.revoked, "-", ms(naive), "-", "-", "-",
                      verdict(ms(naive), REVOKE_TARGET_MS)])
    print_table(f"PKI revoke one with {args.revoked:,} on the CRL (target < {REVOKE_TARGET_MS:.0f} ms)",
                ["store", "on CRL", "CRL bytes", "p50 ms", "p99 ms", "max ms", "CPU p50 ms", "target"], table)

    if not args.skip_db:
        result["leases"] = bench_leases(args.leases, [int(c) for c in args.connections.split(",")])

    result["loadavg_at_end"] = os.getloadavg()
    write_result("vault_engines", result)


if __name__ == "__main__":
    main()
