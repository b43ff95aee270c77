"""Benchmark: encrypted secret manifests per crypto backend, beside `age` (X25519 only) on the same payloads.

    python bench/secret_manifests.py [--manifests 1000] [--ops 200]

Measures, per available backend: sealing 1,000 manifests of 10 values (encrypt + sign + render), opening them
(parse + verify both signatures + unwrap + decrypt), checking them as the daemon's validate does (parse + both
signatures + path and trust checks, no decryption: `check.check_manifest`), and the per-operation cost of
ML-KEM-768 encapsulate / decapsulate and ML-DSA-65 sign / verify.
`--before FILE` prints the open and check figures of an earlier results file beside these (issue 9's "before
and after"), and keeps them in the JSON under "before".
`age` runs as a process per file (how it is used); its figures include process start-up, ours do not
(in-process library calls, as the daemon uses them). No timing asserts. The load average is recorded at start
and end, and open+verify also as CPU time, since shared machines skew wall time.
Prints a table and writes bench/results/secrets.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from reconcilers.vault import check, envelope, keys, manifest
from reconcilers.vault.backends import available, get_backend
from reconcilers.vault.backends.base import PQSecret


def payload(i: int) -> dict[str, Any]:
    """Ten values of mixed types, as a small service's secrets look."""
    return {
        "db": {"user": f"svc{i}", "password": os.urandom(12).hex(), "port": 5432 + i % 10, "tls": True},
        "api": {"token": os.urandom(20).hex(), "ratio": 0.25, "retries": 3},
        "smtp": {"host": "mail.example", "password": os.urandom(10).hex()},
        "extra": b"\x00\x01" * 8,
    }


def bench_backend(name: str, count: int, ops: int) -> dict[str, float]:
    """Seal and open `count` manifests, and time the primitives `ops` times."""
    b = get_backend(name)
    ident, signing = keys.generate(b)
    policy = envelope.Policy(((ident.recipient,),))
    ring = keys.KeyRing((ident,), (signing,))
    data = [payload(i) for i in range(count)]
    t0 = time.perf_counter()
    texts = [
        manifest.render(envelope.seal(b, d, path=f"secrets/s{i}.yaml", policy=policy, key=signing))
        for i, d in enumerate(data)
    ]
    t1 = time.perf_counter()
    c1 = time.process_time()
    for i, text in enumerate(texts):
        m = manifest.parse(text, f"secrets/s{i}.yaml")
        opened = envelope.open_manifest(b, m, ring, f"secrets/s{i}.yaml")
        assert opened.values == data[i]
    t2 = time.perf_counter()
    c2 = time.process_time()
    for i, text in enumerate(texts):
        checked, problems = check.check_manifest(b, text, f"secrets/s{i}.yaml", None)
        assert checked is not None and all("no rules file" in p.message for p in problems)
    t2c = time.perf_counter()
    c2c = time.process_time()
    # The threaded path: every manifest checked (check_manifests: parse, path, both signatures, trust) on one
    # thread per CPU (the signature checks release the GIL), then decrypted. The daemon checks serially: on
    # the 2-core host measured, threads were slower (see check.check_manifests).
    paths = [f"secrets/s{i}.yaml" for i in range(count)]
    checked = check.check_manifests(b, list(zip(texts, paths, strict=True)), None,
                                    workers=min(os.cpu_count() or 1, 4))
    t2p = time.perf_counter()
    c2p = time.process_time()
    for i, (m, _) in enumerate(checked):
        assert m is not None
        values = envelope.decrypt_values(b, m, envelope.data_key(b, m, ring, paths[i]), paths[i])
        assert values == data[i]
    t2d = time.perf_counter()
    c2d = time.process_time()
    pk, sk = b.kem_keygen()
    spk, ssk = b.sig_keygen()
    if name == "openssl":  # seed-form keys: the same objects the manifests use
        pk, sk, spk, ssk = ident.recipient.mlkem, ident.mlkem, signing.signer.mldsa, signing.mldsa
    t3 = time.perf_counter()
    cts = [b.kem_encaps(pk)[0] for _ in range(ops)]
    t4 = time.perf_counter()
    for ct in cts:
        b.kem_decaps(PQSecret(sk.seed, sk.expanded), ct)
    t5 = time.perf_counter()
    sigs = [b.sign(ssk, b"m" * 2000, b"ctx") for _ in range(ops)]
    t6 = time.perf_counter()
    for sig in sigs:
        assert b.verify(spk, b"m" * 2000, sig, b"ctx")
    t7 = time.perf_counter()
    return {
        "seal_total_s": t1 - t0,
        "open_verify_total_s": t2 - t1,
        "open_verify_cpu_s": c2 - c1,
        "check_total_s": t2c - t2,
        "check_cpu_s": c2c - c2,
        "check_threads_total_s": t2p - t2c,
        "check_threads_cpu_s": c2p - c2c,
        "open_verify_threads_total_s": t2d - t2c,
        "open_verify_threads_cpu_s": c2d - c2c,
        "threads": min(os.cpu_count() or 1, 4),
        "mlkem_encaps_us": (t4 - t3) / ops * 1e6,
        "mlkem_decaps_us": (t5 - t4) / ops * 1e6,
        "mldsa_sign_us": (t6 - t5) / ops * 1e6,
        "mldsa_verify_us": (t7 - t6) / ops * 1e6,
        "manifest_bytes_avg": sum(len(t) for t in texts) / len(texts),
    }


def bench_age(count: int) -> dict[str, float] | None:
    """age-keygen once, then one `age` process per file to encrypt and to decrypt the same YAML payloads."""
    if shutil.which("age") is None or shutil.which("age-keygen") is None:
        return None
    with tempfile.TemporaryDirectory() as tmp:
        d = Path(tmp)
        subprocess.run(["age-keygen", "-o", str(d / "key.txt")], check=True, capture_output=True)
        recipient = next(ln.split(": ")[1] for ln in (d / "key.txt").read_text().splitlines() if "public key" in ln)
        plains = [manifest.dump_yaml(payload(i)).encode() for i in range(count)]
        t0 = time.perf_counter()
        encrypted = [
            subprocess.run(["age", "-r", recipient], input=p, capture_output=True, check=True).stdout for p in plains
        ]
        t1 = time.perf_counter()
        for p, e in zip(plains, encrypted, strict=True):
            out = subprocess.run(["age", "-d", "-i", str(d / "key.txt")], input=e, capture_output=True, check=True)
            assert out.stdout == p
        t2 = time.perf_counter()
        return {
            "seal_total_s": t1 - t0,
            "open_verify_total_s": t2 - t1,
            "manifest_bytes_avg": sum(len(e) for e in encrypted) / count,
        }


def main() -> None:
    """Run, print the table, write the JSON."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--manifests", type=int, default=1000)
    parser.add_argument("--ops", type=int, default=200)
    parser.add_argument("--backends", default="", help="comma-separated subset (default: every available one)")
    parser.add_argument("--no-age", action="store_true", help="skip the age comparison")
    parser.add_argument("--before", type=Path, help="an earlier results JSON to print beside these")
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "results" / "secrets.json")
    args = parser.parse_args()
    wanted = {n for n in args.backends.split(",") if n}
    results: dict[str, Any] = {
        "manifests": args.manifests,
        "values_per_manifest": 10,
        "ops": args.ops,
        "machine": {"python": platform.python_version(), "cpus": os.cpu_count(), "loadavg_start": os.getloadavg()},
        "backends": {},
    }
    for name, state in available().items():
        if wanted and name not in wanted:
            continue
        results["backends"][name] = (
            bench_backend(name, args.manifests, args.ops) if state == "ok" else {"unavailable": state}
        )
    results["age"] = None if args.no_age else bench_age(args.manifests)
    results["machine"]["loadavg_end"] = os.getloadavg()
    header = (
        f"{'backend':10} {'seal 1k (s)':>12} {'open+verify 1k (s)':>19} {'(cpu s)':>8} {'encaps us':>10} "
        f"{'decaps us':>10} {'sign us':>9} {'verify us':>10} {'bytes/file':>11} {'check 1k (s)':>13} "
        f"{'check, threads':>15} {'open+verify, threads':>21} {'(cpu s)':>8}"
    )
    print(header)
    print("-" * len(header))
    rows = [*results["backends"].items(), ("age (proc)", results["age"] or {"unavailable": "skipped or not installed"})]
    for name, r in rows:
        if "unavailable" in r:
            print(f"{name:10} unavailable: {r['unavailable']}")
            continue

        def f(k: str, fmt: str, r: dict[str, Any] = r) -> str:
            return format(r[k], fmt) if k in r else "-"

        print(
            f"{name:10} {f('seal_total_s', '12.3f')} {f('open_verify_total_s', '19.3f')} "
            f"{f('open_verify_cpu_s', '8.3f'):>8} "
            f"{f('mlkem_encaps_us', '10.1f'):>10} {f('mlkem_decaps_us', '10.1f'):>10} {f('mldsa_sign_us', '9.1f'):>9} "
            f"{f('mldsa_verify_us', '10.1f'):>10} {f('manifest_bytes_avg', '11.0f'):>11} "
            f"{f('check_total_s', '13.3f'):>13} {f('check_threads_total_s', '15.3f'):>15} "
            f"{f('open_verify_threads_total_s', '21.3f'):>21} {f('open_verify_threads_cpu_s', '8.3f'):>8}"
        )
    scale = args.manifests / 1000
    load = results["machine"]
    print(
        f"\n(totals for {args.manifests} manifests; target: open+verify of 1,000 with openssl under 0.8 s; "
        f"scale {scale:g}; cpu s = this process's CPU time for open+verify; "
        f"'threads' = check.check_manifests on one thread per CPU (at most 4), then decrypt; "
        f"load average "
        f"{' '.join(f'{x:.2f}' for x in load['loadavg_start'])} at start, "
        f"{' '.join(f'{x:.2f}' for x in load['loadavg_end'])} at end, {load['cpus']} cpus)"
    )
    if args.before is not None:
        before = json.loads(args.before.read_text())
        results["before"] = {"source": str(args.before), "machine": before.get("machine"),
                             "backends": before.get("backends")}
        print(f"\n{'before -> after (s per ' + str(args.manifests) + ')':36} {'open+verify':>22} {'(cpu)':>16} "
              f"{'check (daemon validate)':>24}")
        for name, now in results["backends"].items():
            old = (before.get("backends") or {}).get(name, {})
            if "unavailable" in now or not old:
                continue

            def pair(key: str, old: dict[str, Any] = old, now: dict[str, Any] = now) -> str:
                return f"{old[key]:.3f} -> {now[key]:.3f}" if key in old else f"    - -> {now[key]:.3f}"

            print(f"{name:36} {pair('open_verify_total_s'):>22} {pair('open_verify_cpu_s'):>16} "
                  f"{pair('check_total_s'):>24}")
            if "open_verify_threads_total_s" in now:
                # Before's serial figures beside the threaded checks now (the same work on one thread per CPU).
                def vs(key: str, new: str, old: dict[str, Any] = old, now: dict[str, Any] = now) -> str:
                    return f"{old[key]:.3f} -> {now[new]:.3f}" if key in old else f"    - -> {now[new]:.3f}"

                label = name + ", threaded checks"
                print(f"{label:36} {vs('open_verify_total_s', 'open_verify_threads_total_s'):>22} "
                      f"{vs('open_verify_cpu_s', 'open_verify_threads_cpu_s'):>16} "
                      f"{vs('check_total_s', 'check_threads_total_s'):>24}")
    out = args.out
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
