# ruff: noqa: E402 - imports follow the sys.path fix that must run first
"""Search latency at 10,000 nodes, one index, two versions of the search code (before / after a change).

    python bench/knowledge_search.py --data /tmp/kbs [--nodes 10000] [--queries 200] [--code DIR] [--label NAME]

bench/knowledge.py embeds every node with the shipped model (about 10 minutes at 10,000 nodes on this 2-core
machine when idle, far longer when loaded), so comparing two versions of the search with it costs two such
builds. Here the index is built once in `--data` (the generated corpus of bench/knowledge.py, stored without
the model) and every chunk gets the real model's vector of its service and failure (1,000 distinct texts, so
the vectors are real and similar nodes are close). Then `--code DIR` (a checkout; default this one) searches
that index. Prints a table and merges {label: figures} into bench/results/knowledge_search.json (`--compare
LABEL...` prints earlier labels beside this one). No assertions.

What the figures include:
- `full_*`: the headline. `KnowledgeBase.search(query)` exactly as `stratum kb search` and the MCP `search` tool
  call it, in a warm process (index loaded, embedding worker running), one distinct query after another
  (`--queries`, 200 by default), the query-vector cache cleared before each: finding the head, the query's
  embedding (a round trip to the worker process), BM25, the vector top-k, fusion and the top rows' summaries.
  Wall time; CPU of this process (`full_cpu_*`); and with the worker's CPU for that call added
  (`full_cpu_with_worker_*`, from /proc/PID/task/*/schedstat). `full_step_*`: the breakdown measured inside
  that call (`timings=`: refresh, setup, lexical, embed [in its thread, overlapping lexical], embed_wait,
  vector, fusion, rows), for code that records one.
- `cached_*`: the same call with the query's vector in the LRU (an assistant repeating itself).
- `lexical/vector/hybrid_*`: Searcher.search alone per mode, the query embedded each time;
  `query_embedding_*`: the worker round trip alone.
- `recall@10_*`: per query, the share of its labelled nodes (its service and failure) in the top 10.
- `load1`/`load1_min`: the 1-minute load average during the run (2 cores): wall times are only comparable at
  similar load; CPU times much more so.
"""

from __future__ import annotations

import sys
from pathlib import Path

HERE = Path(__file__).resolve().parents[1]
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]


def _code_dir() -> Path:
    if "--code" in sys.argv:
        return Path(sys.argv[sys.argv.index("--code") + 1]).resolve()
    return HERE


CODE = _code_dir()
sys.path.insert(0, str(CODE))

import argparse
import importlib.util
import inspect
import json
import os
import random
import statistics
import time
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from daemon.git.source import GitSource
from daemon.index.store import Index
from daemon.run.workspace import open_workspace
from reconcilers.base import ReconcilerEnv
from reconcilers.knowledge.embed import WorkerProvider
from reconcilers.knowledge.knowledge_base import KnowledgeBase
from reconcilers.knowledge.reconciler import KnowledgeReconciler
from reconcilers.knowledge.search import recall_at
from reconcilers.knowledge.store import Store


def _bench_module() -> Any:
    spec = importlib.util.spec_from_file_location("kbench", HERE / "bench" / "knowledge.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def build(data: Path, nodes: int, provider: WorkerProvider) -> tuple[str, list[str], list[list[str]]]:
    """The index in `data` (built once), the labelled queries of bench/knowledge.py and each one's expected node
    ids (the nodes of that service and failure)."""
    kb = _bench_module()
    rng = random.Random(7)
    files, labels = kb.generated_corpus(nodes, rng)
    labelled = [(s, f) for (s, f), ids in sorted(labels.items()) if len(ids) >= 3]
    rng.shuffle(labelled)
    queries = [f"{kb.SERVICES[s]} {kb.FAILURES[f][1]}" for s, f in labelled]
    expected = [labels[(s, f)] for s, f in labelled]
    repo = data / "repo"
    if not (data / "built").exists():
        repo.mkdir(parents=True, exist_ok=True)
        kb.git(repo, "init", "-q", "-b", "main")
        kb.commit(repo, files)
        rec = KnowledgeReconciler(ReconcilerEnv(data / "data", repo_settings={
            "knowledge": {"embedding": {"provider": "none"}}}))
        index = Index(data / "data" / "index.duckdb")
        snap = GitSource(str(repo), "main", repo / ".git").snapshot("main")
        desired = rec.load(snap)
        rec.validate(desired)
        rec.index(desired, index, snap.revision)
        # Each chunk gets the model's vector of its node's service and failure (found in its text).
        store = Store(index)
        rows = index.query("SELECT DISTINCT hash, text FROM kb_chunk")
        pairs = {(s, f): f"{svc}: {desc}" for s, svc in enumerate(kb.SERVICES)
                 for f, (desc, _) in enumerate(kb.FAILURES)}
        keys = list(pairs)
        matrix = provider.embed([pairs[k] for k in keys])
        by_pair = {k: matrix[i] for i, k in enumerate(keys)}
        hashes, vecs = [], []
        for h, text in rows:
            s = next((i for i, svc in enumerate(kb.SERVICES) if f"[[infra:{svc}]]" in text), 0)
            f = next((i for i, (desc, _) in enumerate(kb.FAILURES) if desc[:40] in text), 0)
            hashes.append(str(h))
            vecs.append(by_pair[(s, f)])
        import numpy as np

        with index.transaction():
            store.add_vectors(provider.model_id, hashes, np.stack(vecs).astype(np.float32))
            index.set_state("knowledge.embedded_model", provider.model_id)
        index.close()
        (data / "built").write_text(snap.revision)
    return (data / "built").read_text().strip(), queries, expected


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def worker_cpu_ms(pid: int | None) -> float:
    """CPU time so far of every thread of the embedding worker (ns-exact, from /proc/PID/task/*/schedstat)."""
    if pid is None:
        return 0.0
    total = 0
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            total += int((task / "schedstat").read_text().split()[0])
        except (OSError, ValueError, IndexError):
            continue                                                    # a thread that just ended
    return total / 1e6


def takes(fn: Any, name: str) -> bool:
    """Whether `fn` (of the code measured, maybe an older checkout) accepts keyword `name`."""
    return name in inspect.signature(fn).parameters


def full_call(kb: Any, provider: WorkerProvider, queries: list[str], *, cached: bool) -> dict[str, Any]:
    """`KnowledgeBase.search` as `stratum kb search` and the MCP `search` tool call it, in a warm process: one
    distinct query after another, its embedding computed (cache cleared) unless `cached`. Wall time, the CPU of
    this process and of the embedding worker, and the per-step breakdown (code that records one)."""
    searcher = kb.searcher
    breakdown = takes(kb.search, "timings")
    wall: list[float] = []
    cpu: list[float] = []
    cpu_all: list[float] = []
    steps: dict[str, list[float]] = {}
    for q in queries:
        if cached:
            kb.search(q, limit=10)                                      # its vector is now in the LRU
        else:
            searcher._qvec.clear()                                      # the query's embedding is measured too
        timings: dict[str, float] = {}
        kwargs: dict[str, Any] = {"timings": timings} if breakdown else {}
        w0 = worker_cpu_ms(provider.pid)
        t, c = time.perf_counter(), time.process_time()
        kb.search(q, limit=10, **kwargs)
        cpu.append((time.process_time() - c) * 1000.0)
        wall.append((time.perf_counter() - t) * 1000.0)
        cpu_all.append(cpu[-1] + worker_cpu_ms(provider.pid) - w0)
        for step, ms in timings.items():
            steps.setdefault(step, []).append(ms)
    tag = "cached" if cached else "full"
    out: dict[str, Any] = {f"{tag}_p50_ms": round(statistics.median(wall), 2),
                           f"{tag}_p95_ms": round(pct(wall, 0.95), 2),
                           f"{tag}_cpu_p50_ms": round(statistics.median(cpu), 2),
                           f"{tag}_cpu_p95_ms": round(pct(cpu, 0.95), 2)}
    if not cached:
        out[f"{tag}_cpu_with_worker_p50_ms"] = round(statistics.median(cpu_all), 2)
        out[f"{tag}_cpu_with_worker_p95_ms"] = round(pct(cpu_all, 0.95), 2)
    for step, values in steps.items():
        out[f"{tag}_step_{step}_p50_ms"] = round(statistics.median(values), 3)
        out[f"{tag}_step_{step}_p95_ms"] = round(pct(values, 0.95), 3)
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", type=Path, required=True)
    ap.add_argument("--nodes", type=int, default=10_000)
    ap.add_argument("--queries", type=int, default=200)
    ap.add_argument("--code", type=Path, default=HERE)
    ap.add_argument("--label", default="after")
    ap.add_argument("--compare", nargs="*", default=[], help="earlier labels to print beside this one")
    args = ap.parse_args()
    provider = WorkerProvider(args.data / "model")
    try:
        revision, queries, expected = build(args.data, args.nodes, provider)
        queries, expected = queries[: args.queries], expected[: args.queries]
        index = Index(args.data / "data" / "index.duckdb")
        kb = KnowledgeBase(open_workspace(str(args.data / "repo"), args.data / "data", index=index),
                           provider=provider)
        searcher = kb.searcher
        kb.search(queries[0])                                          # warm the generation and the worker
        out: dict[str, Any] = {"code": str(CODE), "nodes": args.nodes, "queries": len(queries)}
        loads = [os.getloadavg()[0]]
        # The headline: the whole call as the CLI and MCP serve it, query embedding included.
        out.update(full_call(kb, provider, queries, cached=False))
        out.update(full_call(kb, provider, queries, cached=True))
        loads.append(os.getloadavg()[0])
        for mode in ("lexical", "vector", "hybrid"):
            times: list[float] = []
            for q in queries:
                searcher._qvec.clear()                                 # the query's embedding is measured too
                t = time.perf_counter()
                searcher.search(revision, q, mode=mode, limit=10)
                times.append((time.perf_counter() - t) * 1000.0)
            out[f"{mode}_p50_ms"] = round(statistics.median(times), 2)
            out[f"{mode}_p95_ms"] = round(pct(times, 0.95), 2)
        embed: list[float] = []
        for q in queries:
            t = time.perf_counter()
            provider.embed([q])
            embed.append((time.perf_counter() - t) * 1000.0)
        out["query_embedding_p50_ms"] = round(statistics.median(embed), 2)
        out["query_embedding_p95_ms"] = round(pct(embed, 0.95), 2)
        # Recall guard: the share of each query's labelled nodes (its service and failure) in the top 10.
        for mode in ("lexical", "vector", "hybrid"):
            got = [[h.node["id"] for h in kb.search(q, mode=mode, limit=10).hits] for q in queries]
            out[f"recall@10_{mode}"] = round(statistics.mean(
                recall_at(e[:10], g, 10) for e, g in zip(expected, got, strict=True)), 3)
        loads.append(os.getloadavg()[0])
        out["load1"] = round(max(loads), 2)
        out["load1_min"] = round(min(loads), 2)
        index.close()
    finally:
        provider.close()
    results = HERE / "bench" / "results" / "knowledge_search.json"
    # Figures of other labels kept (earlier runs); `--compare` prints some of them beside this one.
    saved = json.loads(results.read_text()) if results.exists() else {}
    saved[args.label] = out
    results.parent.mkdir(parents=True, exist_ok=True)
    results.write_text(json.dumps(saved, indent=2) + "\n")
    labels = [label for label in args.compare if label in saved and label != args.label] + [args.label]
    width = max(16, *(len(label) + 2 for label in labels))
    print(f"{'metric':<34}" + "".join(f"{label:>{width}}" for label in labels))
    for key in out:
        if key != "code":
            print(f"{key:<34}" + "".join(f"{saved[label].get(key, '-')!s:>{width}}" for label in labels))
    print(f"\nwritten to {results.relative_to(HERE)}")


if __name__ == "__main__":
    main()
