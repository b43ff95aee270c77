# ruff: noqa: E402 - imports follow the sys.path fix that must run first
"""Search latency at 10,000 nodes, one index, two versions of the search code (before / after a change).

    python bench/knowledge_search.py --data /tmp/kbs [--nodes 10000] [--queries 200] [--code DIR] [--label NAME]

bench/knowledge.py embeds every node with the shipped model (about 10 minutes at 10,000 nodes on this 2-core
machine when idle, far longer when loaded), so comparing two versions of the search with it costs two such
builds. Here the index is built once in `--data` (the generated corpus of bench/knowledge.py, stored without
the model) and every chunk gets the real model's vector of its service and failure (1,000 distinct texts, so
the vectors are real and similar nodes are close). Then `--code DIR` (a checkout; default this one) searches
that index: each query embedded by the model's worker (cache cleared), and again with its vector known.
Prints a table and merges {label: figures} into bench/results/knowledge_search.json. No assertions.
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
import json
import os
import random
import statistics
import time
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from daemon.git.source import GitSource
from daemon.index.store import Index
from reconcilers.base import ReconcilerEnv
from reconcilers.knowledge.embed import WorkerProvider
from reconcilers.knowledge.reconciler import KnowledgeReconciler
from reconcilers.knowledge.search import Searcher
from reconcilers.knowledge.store import Store


def _bench_module() -> Any:
    spec = importlib.util.spec_from_file_location("kbench", HERE / "bench" / "knowledge.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def build(data: Path, nodes: int, provider: WorkerProvider) -> tuple[str, list[str]]:
    """The index in `data` (built once) and the labelled queries of bench/knowledge.py."""
    kb = _bench_module()
    rng = random.Random(7)
    files, labels = kb.generated_corpus(nodes, rng)
    labelled = [(s, f) for (s, f), ids in sorted(labels.items()) if len(ids) >= 3]
    rng.shuffle(labelled)
    queries = [f"{kb.SERVICES[s]} {kb.FAILURES[f][1]}" for s, f in labelled]
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
    return (data / "built").read_text().strip(), queries


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", type=Path, required=True)
    ap.add_argument("--nodes", type=int, default=10_000)
    ap.add_argument("--queries", type=int, default=200)
    ap.add_argument("--code", type=Path, default=HERE)
    ap.add_argument("--label", default="after")
    args = ap.parse_args()
    provider = WorkerProvider(args.data / "model")
    try:
        revision, queries = build(args.data, args.nodes, provider)
        queries = queries[: args.queries]
        index = Index(args.data / "data" / "index.duckdb")
        searcher = Searcher(Store(index), provider)
        searcher.search(revision, queries[0], mode="hybrid")          # warm the generation and the worker
        out: dict[str, Any] = {"code": str(CODE), "nodes": args.nodes, "queries": len(queries)}
        for mode in ("lexical", "vector", "hybrid"):
            times: list[float] = []
            for q in queries:
                searcher._qvec.clear()                                 # the query's embedding is measured too
                t = time.perf_counter()
                searcher.search(revision, q, mode=mode, limit=10)
                times.append((time.perf_counter() - t) * 1000.0)
            out[f"{mode}_p50_ms"] = round(statistics.median(times), 2)
            out[f"{mode}_p95_ms"] = round(pct(times, 0.95), 2)
        cached: list[float] = []
        cpu: list[float] = []
        embed: list[float] = []
        for q in queries:
            t = time.perf_counter()
            provider.embed([q])
            embed.append((time.perf_counter() - t) * 1000.0)
            searcher.search(revision, q, mode="hybrid", limit=10)
            t, c = time.perf_counter(), time.process_time()
            searcher.search(revision, q, mode="hybrid", limit=10)
            cpu.append((time.process_time() - c) * 1000.0)
            cached.append((time.perf_counter() - t) * 1000.0)
        out["hybrid_cached_p50_ms"] = round(statistics.median(cached), 2)
        out["hybrid_cached_p95_ms"] = round(pct(cached, 0.95), 2)
        # CPU time of this process (every thread): what the search costs, less sensitive to a loaded machine
        # than wall-clock time (the clock ticks while other processes run).
        out["hybrid_cached_cpu_p50_ms"] = round(statistics.median(cpu), 2)
        out["hybrid_cached_cpu_p95_ms"] = round(pct(cpu, 0.95), 2)
        out["query_embedding_p50_ms"] = round(statistics.median(embed), 2)
        out["query_embedding_p95_ms"] = round(pct(embed, 0.95), 2)
        out["load1"] = round(os.getloadavg()[0], 2)
        index.close()
    finally:
        provider.close()
    results = HERE / "bench" / "results" / "knowledge_search.json"
    saved = json.loads(results.read_text()) if results.exists() else {}
    saved[args.label] = out
    results.parent.mkdir(parents=True, exist_ok=True)
    results.write_text(json.dumps(saved, indent=2) + "\n")
    labels = list(saved)
    print(f"{'metric':<24}" + "".join(f"{label:>14}" for label in labels))
    for key in out:
        if key != "code":
            print(f"{key:<24}" + "".join(f"{saved[label].get(key, '-')!s:>14}" for label in labels))
    print(f"\nwritten to {results.relative_to(HERE)}")


if __name__ == "__main__":
    main()
