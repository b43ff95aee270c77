"""The query embedding alone, two embedding workers interleaved query by query (A/B in one run).

    python bench/knowledge_embed_ab.py --model DIR [--a CODE_DIR[:THREADS]] [--b CODE_DIR[:THREADS]] [--label NAME]

Each side is `python -m reconcilers.knowledge.embed_worker` of a checkout (default: this one) with an
intra-op thread count (0: onnxruntime's default), fed the same one-line queries of bench/knowledge.py's corpus
in alternating order, so both see the same load on this shared host (bench/knowledge_search.py runs two
versions one after the other: minutes apart, under other load). Per side: the round trip's wall time (write the
request, read the reply) and the worker's CPU for it (every thread, from /proc/PID/task/*/schedstat). Prints a
table and merges {label: figures} into bench/results/knowledge_embed_ab.json. No assertions.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parents[1]


def _worker(model: Path, side: str) -> subprocess.Popen[bytes]:
    code, _, threads = side.partition(":")
    return subprocess.Popen([sys.executable, "-m", "reconcilers.knowledge.embed_worker", str(model), "120",
                             threads or "0"], stdin=subprocess.PIPE, stdout=subprocess.PIPE, cwd="/",
                            env={**os.environ, "PYTHONPATH": str(Path(code).resolve())})


def _cpu_ms(pid: int) -> float:
    total = 0
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            total += int((task / "schedstat").read_text().split()[0])
        except (OSError, ValueError, IndexError):
            continue
    return total / 1e6


def _ask(proc: subprocess.Popen[bytes], query: str) -> None:
    assert proc.stdin is not None and proc.stdout is not None
    proc.stdin.write(json.dumps({"texts": [query]}).encode() + b"\n")
    proc.stdin.flush()
    reply = proc.stdout.readline()
    if b'"f32"' not in reply:
        raise SystemExit(f"the worker failed: {reply[:300]!r}")


def _queries(n: int) -> list[str]:
    spec = importlib.util.spec_from_file_location("kbench", HERE / "bench" / "knowledge.py")
    assert spec is not None and spec.loader is not None
    kb = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(kb)
    pairs = [f"{s} {f[1]}" for s in kb.SERVICES for f in kb.FAILURES]
    return [pairs[i % len(pairs)] for i in range(n)]


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def main() -> None:
    import time

    ap = argparse.ArgumentParser()
    ap.add_argument("--model", type=Path, required=True, help="a model directory (bench/knowledge_search.py's)")
    ap.add_argument("--a", default=str(HERE))
    ap.add_argument("--b", default=str(HERE))
    ap.add_argument("--queries", type=int, default=400)
    ap.add_argument("--label", default="ab")
    args = ap.parse_args()
    sides = {"a": _worker(args.model, args.a), "b": _worker(args.model, args.b)}
    try:
        queries = _queries(args.queries)
        for q in queries[:10]:                                        # both loaded and warm
            for proc in sides.values():
                _ask(proc, q)
        wall: dict[str, list[float]] = {k: [] for k in sides}
        cpu: dict[str, list[float]] = {k: [] for k in sides}
        loads = [os.getloadavg()[0]]
        for i, q in enumerate(queries):
            for name in (("a", "b") if i % 2 == 0 else ("b", "a")):
                proc = sides[name]
                c0, t0 = _cpu_ms(proc.pid), time.perf_counter()
                _ask(proc, q)
                wall[name].append((time.perf_counter() - t0) * 1000.0)
                cpu[name].append(_cpu_ms(proc.pid) - c0)
        loads.append(os.getloadavg()[0])
    finally:
        for proc in sides.values():
            if proc.stdin is not None:
                proc.stdin.close()
            proc.wait(timeout=30)
    out: dict[str, Any] = {"a": args.a, "b": args.b, "queries": len(queries), "load1": round(max(loads), 2),
                           "load1_min": round(min(loads), 2)}
    for name in sides:
        out[f"{name}_wall_p50_ms"] = round(statistics.median(wall[name]), 2)
        out[f"{name}_wall_p95_ms"] = round(_pct(wall[name], 0.95), 2)
        out[f"{name}_cpu_p50_ms"] = round(statistics.median(cpu[name]), 2)
        out[f"{name}_cpu_p95_ms"] = round(_pct(cpu[name], 0.95), 2)
    results = HERE / "bench" / "results" / "knowledge_embed_ab.json"
    saved = json.loads(results.read_text()) if results.exists() else {}
    saved[args.label] = out
    results.write_text(json.dumps(saved, indent=2) + "\n")
    for key, value in out.items():
        print(f"{key:<20} {value}")


if __name__ == "__main__":
    main()
