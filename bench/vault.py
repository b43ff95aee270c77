"""KV v2 read and write throughput and latency of the vault API over loopback, per storage backend, beside a
bare ASGI endpoint on the same server stack (daemon/http/server.py: uvicorn with our protocol guard).

The server runs in a child process (so the client does not share its GIL); the client is a bounded asyncio
HTTP/1.1 keep-alive client (`--connections` connections, `--requests` requests per phase). Phases:
  bare     GET of an ASGI app answering a fixed JSON body of the same size as a KV read
  read     GET /v1/secret/data/bench/k<i % 100> with the root token (token lookup, Cedar skipped for root, audit)
  write    POST /v1/secret/data/bench/w<i % 100> (a new version each time: metadata + data + audit)
  read-policy  as read, with a non-root token through a Cedar policy
Targets (file backend, 2 cores): >= 3,000 reads/s, read p99 < 10 ms, reads >= 0.5 x the bare endpoint.
PostgreSQL and etcd run as real local servers (tests/servers.py) when `--backends` names them.

Each phase also reports the CPU time per request of the server process (all threads, from /proc) and of this
client: on a busy machine wall-clock rates swing with the load, CPU per request much less ("CPU vs bare": the
bare endpoint's server CPU per request over the phase's, the rate ratio a server-bound run would show). `--code
before=DIR` measures another checkout (`git archive REV | tar -x -C DIR`) in the same run, round by round
(`--rounds`), so a change is seen against what it replaced under the same load.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import common
from common import print_table, verdict, write_result

TARGET_READS = 3000.0
TARGET_P99_MS = 10.0
TARGET_RATIO = 0.5
POLICY = 'permit(principal in Vault::Group::"bench", action == Vault::Action::"read", resource);'


def serve(backend: str, url: str, state: str, code: str) -> None:
    """Child: a vault on `backend`, initialized, unsealed, 100 secrets written; prints port, bare port, tokens.
    `code` is the checkout whose daemon and vault are measured (this one by default, or `--code` for a
    before/after comparison in one run)."""
    sys.path.insert(0, code)
    from daemon.http.server import HttpServer
    from reconcilers.vault.service.api.app import VaultApp
    from reconcilers.vault.service.config import open_storage
    from reconcilers.vault.service.core import VaultService
    from reconcilers.vault.service.request import ApiRequest

    store, kind = open_storage({"storage": backend, "storage_url": url}, Path(state))
    service = VaultService(store, Path(state) / "audit.log", kind)
    init = service.initialize(1, 1, "base64")
    service.unseal(init["keys"][0])
    root = init["root_token"]
    for i in range(100):
        service.handle(ApiRequest("POST", f"secret/data/bench/k{i}", {"data": {"password": f"value-{i:04d}"}},
                                  token=root))
    service.set_policies({"bench.cedar": POLICY})
    reader = service.handle(ApiRequest("POST", "auth/token/create", {"policies": ["bench"]}, token=root))[1]
    assert reader is not None
    body = json.dumps(service.handle(ApiRequest("GET", "secret/data/bench/k1", token=root))[1]).encode()

    async def bare(scope: dict[str, Any], receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})
        await send({"type": "http.response.body", "body": body})

    servers = [HttpServer("127.0.0.1:0", VaultApp(service)), HttpServer("127.0.0.1:0", bare)]
    for s in servers:
        s.start()
    while not all(s.server.started for s in servers):
        time.sleep(0.01)
    print(json.dumps({"port": servers[0].port, "bare": servers[1].port, "root": root,
                      "reader": reader["auth"]["client_token"]}), flush=True)
    sys.stdin.read()              # until the parent closes our stdin
    for s in servers:
        s.stop()


async def _exchange(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, raw: bytes) -> tuple[bytes, bool]:
    """One request and its answer: (status line, whether the server asked to close)."""
    writer.write(raw)
    status_line = await reader.readline()
    if not status_line:
        raise ConnectionResetError("closed before an answer")
    length, close = 0, False
    while True:
        line = await reader.readline()
        if line in (b"\r\n", b""):
            break
        name, _, value = line.partition(b":")
        if name.lower() == b"content-length":
            length = int(value)
        elif name.lower() == b"connection" and value.strip().lower() == b"close":
            close = True
    if length:
        await reader.readexactly(length)
    return status_line, close


async def _one_connection(port: int, requests: list[bytes], latencies: list[float]) -> int:
    """Send `requests` one after another on a keep-alive connection, reopening it when the server closes it
    (the listener's max_requests_per_connection: it closes after the 100th answer; that request is sent again
    on a new connection and timed from the retry); returns how many answers were not 200/204."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    errors = 0
    try:
        for raw in requests:
            for _attempt in range(3):
                t = time.perf_counter()
                try:
                    status_line, close = await _exchange(reader, writer, raw)
                    break
                except (ConnectionError, asyncio.IncompleteReadError):
                    writer.close()
                    reader, writer = await asyncio.open_connection("127.0.0.1", port)
            else:
                errors += 1
                continue
            latencies.append(time.perf_counter() - t)
            if not status_line.startswith((b"HTTP/1.1 200", b"HTTP/1.1 204")):
                errors += 1
            if close:
                writer.close()
                reader, writer = await asyncio.open_connection("127.0.0.1", port)
    finally:
        writer.close()
    return errors


def phase(port: int, make: Any, total: int, connections: int, server_pid: int) -> dict[str, Any]:
    """`total` requests over `connections` keep-alive connections: throughput, latency percentiles, and the CPU
    time the server process (all its threads) and this client spent per request (load disturbs CPU time far
    less than wall time: on a busy machine it is the steadier figure)."""
    per = total // connections
    latencies: list[float] = []

    async def run() -> int:
        jobs = [_one_connection(port, [make(c * per + i) for i in range(per)], latencies) for c in range(connections)]
        return sum(await asyncio.gather(*jobs))

    server_before, client_before = common.cpu_ticks(server_pid)[0], time.process_time()
    t = time.perf_counter()
    errors = asyncio.run(run())
    wall = time.perf_counter() - t
    server_cpu = (common.cpu_ticks(server_pid)[0] - server_before) / os.sysconf("SC_CLK_TCK")
    client_cpu = time.process_time() - client_before
    ms = [x * 1000 for x in latencies]
    stats = common.summary(ms)
    n = max(1, len(ms))
    return {"requests": len(ms), "errors": errors, "wall_s": wall, "per_s": len(ms) / wall, "p50_ms": stats["p50"],
            "p99_ms": stats["p99"], "server_cpu_us": server_cpu / n * 1e6, "client_cpu_us": client_cpu / n * 1e6,
            "loadavg": os.getloadavg()[0]}


def get(path: str, token: str) -> bytes:
    return f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Vault-Token: {token}\r\n\r\n".encode()


def post(path: str, token: str, body: dict[str, Any]) -> bytes:
    data = json.dumps(body).encode()
    return (f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Vault-Token: {token}\r\nContent-Type: application/json"
            f"\r\nContent-Length: {len(data)}\r\n\r\n").encode() + data


def measure(backend: str, url: str, total: int, connections: int, code: str) -> dict[str, Any]:
    """Start a server child on `backend` running the checkout `code`, run the phases, stop it."""
    with tempfile.TemporaryDirectory(prefix="stratum-bench-vault-") as state:
        child = subprocess.Popen([sys.executable, __file__, "--serve", backend, "--url", url, "--state", state,
                                  "--code-dir", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE, cwd=code,
                                 env={**os.environ, "PYTHONPATH": code})
        assert child.stdout is not None and child.stdin is not None
        info = json.loads(child.stdout.readline())
        try:
            root, reader = info["root"], info["reader"]
            pid = child.pid
            return {
                "bare": phase(info["bare"], lambda i: get("/", root), total, connections, pid),
                "read": phase(info["port"], lambda i: get(f"/v1/secret/data/bench/k{i % 100}", root), total,
                              connections, pid),
                "read-policy": phase(info["port"], lambda i: get(f"/v1/secret/data/bench/k{i % 100}", reader),
                                     total, connections, pid),
                "write": phase(info["port"], lambda i: post(f"/v1/secret/data/bench/w{i % 100}", root,
                                                            {"data": {"v": str(i)}}), max(200, total // 5),
                               connections, pid),
            }
        finally:
            child.stdin.close()
            child.wait(30)
            child.stdout.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backends", default="file", help="comma-separated: file,postgresql,etcd")
    parser.add_argument("--requests", type=int, default=5000)
    parser.add_argument("--connections", type=int, default=16)
    parser.add_argument("--code", action="append", default=[], metavar="LABEL=DIR",
                        help="also measure the checkout DIR (e.g. before=/tmp/old: `git archive REV | tar -x -C "
                             "/tmp/old`), interleaved with this one round by round: before/after in one run")
    parser.add_argument("--rounds", type=int, default=1, help="rounds of every variant (the table shows each; "
                        "the verdict reads this checkout's median round)")
    parser.add_argument("--name", default="vault", help="results file name (bench/results/NAME.json)")
    parser.add_argument("--serve", help=argparse.SUPPRESS)
    parser.add_argument("--url", default="", help=argparse.SUPPRESS)
    parser.add_argument("--state", default="", help=argparse.SUPPRESS)
    parser.add_argument("--code-dir", default=str(common.PROJECT_DIR), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        serve(args.serve, args.url, args.state, args.code_dir)
        return
    sys.path.insert(0, str(common.PROJECT_DIR))
    variants = [("this", str(common.PROJECT_DIR))]
    for spec in args.code:
        label, _, path = spec.partition("=")
        variants.append((label, str(Path(path).resolve())))
    results: dict[str, list[dict[str, Any]]] = {label: [] for label, _ in variants}
    servers: list[Any] = []
    try:
        urls = {}
        for backend in args.backends.split(","):
            urls[backend] = ""
            if backend in ("postgresql", "etcd"):
                from tests import servers as test_servers

                root = Path(tempfile.mkdtemp(prefix=f"stratum-bench-{backend}-"))
                srv = test_servers.start_postgres(root) if backend == "postgresql" else test_servers.start_etcd(root)
                servers.append(srv)
                urls[backend] = srv.url
        for _round in range(args.rounds):
            for label, code in variants:
                results[label].append({backend: measure(backend, url, args.requests, args.connections, code)
                                       for backend, url in urls.items()})
    finally:
        for srv in servers:
            srv.stop()
    rows = []
    for label, rounds in results.items():
        for n, by_backend in enumerate(rounds, 1):
            for backend, phases in by_backend.items():
                bare = phases["bare"]["per_s"]
                bare_cpu = phases["bare"]["server_cpu_us"]
                for name, p in phases.items():
                    rows.append([label, n, backend, name, p["requests"], p["errors"], p["per_s"], p["p50_ms"],
                                 p["p99_ms"], f"{p['per_s'] / bare:.2f}x" if name != "bare" else "-",
                                 f"{bare_cpu / p['server_cpu_us']:.2f}x" if name != "bare" and p["server_cpu_us"]
                                 else "-", p["server_cpu_us"], p["client_cpu_us"], p["loadavg"]])
    print_table(f"vault KV v2 over loopback ({args.connections} connections, {args.requests} requests a phase; "
                f"{os.cpu_count()} CPUs)",
                ["code", "round", "backend", "phase", "requests", "errors", "req/s", "p50 ms", "p99 ms", "vs bare",
                 "CPU vs bare", "server CPU us/req", "client CPU us/req", "load 1m"], rows)
    files = [r["file"] for r in results["this"] if "file" in r]
    if files:
        files.sort(key=lambda r: r["read"]["per_s"])
        mid = files[len(files) // 2]
        read = mid["read"]
        ratio = read["per_s"] / mid["bare"]["per_s"]
        cpu_ratio = mid["bare"]["server_cpu_us"] / max(read["server_cpu_us"], 1e-9)
        print(f"file reads: server CPU {read['server_cpu_us']:.0f} us/req, bare {mid['bare']['server_cpu_us']:.0f} "
              f"us/req: {cpu_ratio:.2f}x the bare rate where the server's CPU is the limit (a busy host moves "
              "wall-clock rates far more than CPU per request; this is the steadier reading of the ratio)")
        print(f"file reads/s {read['per_s']:,.0f} (target {TARGET_READS:,.0f}): "
              f"{verdict(read['per_s'], TARGET_READS, lower_is_better=False)}; p99 {read['p99_ms']:.1f} ms "
              f"(target {TARGET_P99_MS}): {verdict(read['p99_ms'], TARGET_P99_MS)}; vs bare {ratio:.2f} "
              f"(target {TARGET_RATIO}): {verdict(ratio, TARGET_RATIO, lower_is_better=False)}")
    write_result(args.name, {"requests": args.requests, "connections": args.connections, "rounds": args.rounds,
                             "variants": dict(variants), "results": results})


if __name__ == "__main__":
    main()
