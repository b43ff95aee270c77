"""Hybrid search: BM25 over the token table in DuckDB, vector similarity over chunk embeddings, fused by
reciprocal rank (RRF, k = 60), with filters on type, tags, status, project and modification date.

The token table `kb_term` and the vectors in `kb_vec` are the durable index; queries run over the searched
revision's in-memory copy (memindex.py): BM25 as NumPy gathers over CSR postings summed with `bincount`
(scoring postings row by row in Python cost up to ~90 ms per query at 10,000 nodes), vector top-k as one
matrix product (over the transposed matrix: 0.7 ms where the other orientation took 5-7 ms) and
`argpartition` (DuckDB's `array_cosine_similarity` scan takes ~8 ms at 10,000 rows where a
matrix product takes 0.2 ms, PLATFORM.md). A new revision updates that copy with only the blobs it changed.
`engine="duckdb"` runs the vector query in SQL, and the tests hold the two to the same answer.
"""

from __future__ import annotations

import concurrent.futures as cf
import contextlib
import functools
import math
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import numpy as np
import numpy.typing as npt

from reconcilers.knowledge import memindex
from reconcilers.knowledge.embed import Provider
from reconcilers.knowledge.errors import KnowledgeError, ModelError
from reconcilers.knowledge.memindex import Generation
from reconcilers.knowledge.store import DIM, EXTRA, Store
from reconcilers.knowledge.text import terms

RRF_K = 60


@functools.cache
def _one_blas_thread() -> None:
    """Run BLAS (the query-vector product) on one thread in this process, once.

    Measured on this 2-core host, loaded (load ~5): OpenBLAS's two threads took the 10,000 x 384 product to
    p50 0.3-1.2 ms but p95 22-28 ms and 2.3-3.8 ms of CPU per call (its idle threads spin), CPU the embedding
    worker needed for the next query; one thread: p50 0.54 ms, 0.6 ms of CPU. Nothing else in the daemon or
    the CLI uses BLAS. Without threadpoolctl (or with another BLAS it cannot limit), BLAS stays as it is; so does
    a thread count the user set (OPENBLAS_NUM_THREADS, see the package's __init__).
    """
    from reconcilers.knowledge import BLAS_THREADS_SET_BY_USER

    if BLAS_THREADS_SET_BY_USER:
        return
    try:
        from threadpoolctl import threadpool_limits  # type: ignore[import-untyped]  # ships no type information

        threadpool_limits(1, user_api="blas")
    except Exception:  # noqa: BLE001 a speed setting: any failure leaves BLAS as it was
        return
_T = TypeVar("_T")
K1, B = 1.2, 0.75
MODES = ("hybrid", "lexical", "vector")
# The cosine similarity a node's best chunk needs to count as a semantic match. Measured with the shipped model
# (all-MiniLM-L6-v2) on the template's knowledge: paraphrases of a node score 0.27-0.37 against it, unrelated
# queries ("how do I bake sourdough bread", "zebra") at most 0.14. Below it a node matches only by keywords.
# One default for every interface (CLI, MCP over stdio and over HTTP).
MIN_SIMILARITY = 0.2


@dataclass(frozen=True, slots=True)
class Filters:
    """Restrict results: any of `types`, all of `tags`, any of `status`, a project, a modified-date range."""

    types: tuple[str, ...] = ()
    tags: tuple[str, ...] = ()
    status: tuple[str, ...] = ()
    project: str = ""
    since: str = ""
    until: str = ""

    def active(self) -> bool:
        """True when any filter is set."""
        return bool(self.types or self.tags or self.status or self.project or self.since or self.until)

    def accepts(self, meta: dict[str, Any]) -> bool:
        """Whether one node's metadata passes."""
        if self.types and meta["type"] not in self.types:
            return False
        if self.tags and not set(self.tags) <= set(meta["tags"]):
            return False
        if self.status and meta["status"] not in self.status:
            return False
        if self.project and meta["project"] != self.project:
            return False
        if self.since and (meta["modified"] or "") < self.since:
            return False
        return not (self.until and (meta["modified"] or "9999") > self.until)


@dataclass(frozen=True, slots=True)
class Hit:
    """One result: the node summary, a readable score, and where it ranked in each list (0 = absent).

    `score` (0-1) is the better of the two ways it matched: `similarity` (the cosine of its best chunk, as a
    semantic match) and `coverage` (the share of the query's words it contains). Results are ordered by
    `rrf`, the reciprocal-rank fusion of both lists, which no user can read (0.0147-0.0164 for anything).
    """

    node: dict[str, Any]
    score: float
    lexical_rank: int
    vector_rank: int
    similarity: float
    snippet: str
    coverage: float = 0.0
    rrf: float = 0.0

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        return {**self.node, "score": round(self.score, 4), "lexical_rank": self.lexical_rank,
                "vector_rank": self.vector_rank, "similarity": round(self.similarity, 4),
                "coverage": round(self.coverage, 4), "rrf": round(self.rrf, 6), "snippet": self.snippet}


@dataclass(frozen=True, slots=True)
class Result:
    """Hits plus the mode actually used and any warning (e.g. no embedding model: lexical only)."""

    hits: tuple[Hit, ...]
    mode: str
    warning: str = ""


class Searcher:
    """Searches one Store; keeps the searched revision's in-memory index (memindex.Generation), derived from the
    previous revision's, and recent query vectors."""

    def __init__(self, store: Store, provider: Provider | None, provider_error: str = "") -> None:
        self.store = store
        self.provider = provider
        self.provider_error = provider_error
        self._gen: Generation | None = None
        self._stale = False
        self._masks: OrderedDict[Filters, tuple[Generation, npt.NDArray[np.bool_]]] = OrderedDict()
        self._qvec: OrderedDict[str, npt.NDArray[np.float32]] = OrderedDict()
        self._lock = threading.RLock()
        # Per generation: each slot's rank in blob-id order (ties are broken by blob id, vectorised) and the
        # node summaries as returned to users (without the internal keys).
        self._derived: tuple[Generation, npt.NDArray[np.int64], dict[str, dict[str, Any]]] | None = None
        # Embeds the query while the keyword half of a hybrid search runs, for providers without `send` (the
        # shipped model's worker takes the query without a thread: WorkerProvider.send).
        self._pool = cf.ThreadPoolExecutor(max_workers=1, thread_name_prefix="query-embed")

    def invalidate(self) -> None:
        """Re-read the indexed tree on the next search (after an index write); unchanged blobs are kept."""
        with self._lock:
            self._stale = True

    def reload(self) -> None:
        """Read everything again on the next search (vectors were added to blobs already searched)."""
        with self._lock:
            self._gen, self._stale = None, False

    def _revision(self, revision: str, with_vectors: bool) -> Generation:
        with self._lock:
            gen = self._gen
            model = self.provider.model_id if with_vectors and self.provider is not None else ""
            if gen is None or gen.revision != revision or self._stale:
                gen = memindex.advance(self.store, gen, revision, model)
                self._stale = False
            elif model and not gen.vectors_loaded:
                gen = memindex.with_vectors(self.store, gen, model)
            self._gen = gen
            return gen

    def _mask(self, gen: Generation, filters: Filters) -> npt.NDArray[np.bool_]:
        """Live slots passing `filters`, memoised for the current generation (assistants repeat filters)."""
        with self._lock:
            hit = self._masks.get(filters)
            if hit is not None and hit[0] is gen:
                return hit[1]
            ok = gen.mask(filters.accepts)
            self._masks[filters] = (gen, ok)
            if len(self._masks) > 32:
                self._masks.popitem(last=False)
            return ok

    def _rank(self, gen: Generation) -> tuple[npt.NDArray[np.int64], dict[str, dict[str, Any]]]:
        with self._lock:
            derived = self._derived
            if derived is None or derived[0] is not gen:
                rank = np.empty(len(gen.blobs), dtype=np.int64)
                rank[np.argsort(np.array(gen.blobs, dtype=object), kind="stable")] = np.arange(len(gen.blobs))
                derived = (gen, rank, {})
                self._derived = derived
            return derived[1], derived[2]

    def _public(self, gen: Generation, blob: str) -> dict[str, Any]:
        public = self._rank(gen)[1]
        found = public.get(blob)
        if found is None:
            found = {k: v for k, v in gen.meta[blob].items() if not k.startswith("_") and k != "blob_id"}
            public[blob] = found
        return dict(found)

    def query_vector(self, query: str) -> npt.NDArray[np.float32]:
        """The embedding of a query (LRU-cached: assistants repeat themselves)."""
        assert self.provider is not None
        with self._lock:
            vec = self._qvec.get(query)
            if vec is not None:
                self._qvec.move_to_end(query)
                return vec
        vec = np.asarray(self.provider.embed([query])[0], dtype=np.float32)
        with self._lock:
            self._qvec[query] = vec
            if len(self._qvec) > 512:
                self._qvec.popitem(last=False)
        return vec

    def _embed_meanwhile(self, query: str, clock: _Clock) -> Callable[[], npt.NDArray[np.float32]]:
        """Start embedding `query` (while BM25 runs); the result waits for its vector, which it caches. The
        shipped model's worker takes the request at once (WorkerProvider.send: no thread); other providers are
        waited for in a thread."""
        send = getattr(self.provider, "send", None)
        if send is None:
            future = self._pool.submit(clock.timed, "embed", self.query_vector, query)
            return future.result
        start = time.perf_counter()
        try:
            receive = send(query)
        except ModelError as err:
            failure = err

            def failed() -> npt.NDArray[np.float32]:
                raise failure

            return failed

        def vector() -> npt.NDArray[np.float32]:
            vec = np.asarray(receive(), dtype=np.float32)
            clock.record("embed", start)
            with self._lock:
                self._qvec[query] = vec
                if len(self._qvec) > 512:
                    self._qvec.popitem(last=False)
            return vec

        return vector

    # -- the two retrievers ------------------------------------------------------------------------
    def lexical(self, revision: str, query: str, limit: int, filters: Filters = Filters()) -> list[tuple[str, float]]:
        """(blob id, BM25 score), best first (ties by blob id)."""
        return [(b, score) for b, score, _ in self._lexical(revision, query, limit, filters)]

    def _lexical(self, revision: str, query: str, limit: int,
                 filters: Filters = Filters()) -> list[tuple[str, float, float]]:
        """(blob id, BM25 score, share of the query's terms it holds), best first (ties by blob id)."""
        gen = self._revision(revision, with_vectors=False)
        qterms = sorted(set(terms(query)))
        if not qterms or not gen.n_docs:
            return []
        # Document frequencies count every live node, filtered or not (as the scores are meant to compare).
        n, avgdl = float(gen.n_docs), gen.avgdl
        hit_slots: list[npt.NDArray[np.int32]] = []
        hit_scores: list[npt.NDArray[np.float64]] = []
        for t in qterms:
            tid = gen.vocab.get(t)
            if tid is None:
                continue
            slots, tfs = gen.postings(tid)
            df = len(slots)
            if not df:
                continue
            idf = math.log(1.0 + (n - df + 0.5) / (df + 0.5))
            norm = tfs + K1 * (1.0 - B + B * gen.doc_len[slots] / avgdl)
            hit_slots.append(slots)
            hit_scores.append(idf * tfs * (K1 + 1.0) / norm)
        if not hit_slots:
            return []
        every = np.concatenate(hit_slots)
        scores = np.bincount(every, weights=np.concatenate(hit_scores), minlength=len(gen.blobs))
        matched = np.bincount(every, minlength=len(gen.blobs))      # distinct query terms each slot holds
        touched = np.flatnonzero(matched)                            # (np.unique of `every` cost ~7 ms here)
        if filters.active():
            touched = touched[self._mask(gen, filters)[touched]]
        if not len(touched):
            return []
        cand = scores[touched]
        if len(cand) > limit:
            # Keep every slot scoring at least the limit-th best, so ties are broken by blob id below.
            kth = np.partition(cand, len(cand) - limit)[len(cand) - limit]
            touched, cand = touched[cand >= kth], cand[cand >= kth]
        rank, _ = self._rank(gen)
        best = np.lexsort((rank[touched], -cand))[:limit]            # score descending, then blob id
        share = matched[touched[best]] / len(qterms)
        return [(gen.blobs[int(slot)], float(v), float(c))
                for slot, v, c in zip(touched[best].tolist(), cand[best].tolist(), share.tolist(), strict=True)]

    def vector(self, revision: str, query: str, limit: int, filters: Filters = Filters(),
               engine: str = "numpy", qvec: npt.NDArray[np.float32] | None = None) -> list[tuple[str, float, int]]:
        """(blob id, cosine similarity, best chunk row) per node, best first (`qvec`: the query's embedding,
        when the caller has it)."""
        if self.provider is None:
            return []
        gen = self._revision(revision, with_vectors=True)
        if not len(gen.owner):
            return []
        qv = self.query_vector(query) if qvec is None else qvec
        if engine == "duckdb":
            return self._vector_sql(revision, qv, limit, filters, gen)
        _one_blas_thread()
        sims = qv @ gen.matrix_t                                   # (see memindex: why the matrix is transposed)
        valid = self._mask(gen, filters) if filters.active() else gen.live
        sims = np.where(valid[gen.owner], sims, -np.inf)
        # Enough chunk candidates to fill `limit` distinct nodes in all but pathological cases.
        take = min(len(sims), max(limit * 8, 64))
        part = np.argpartition(-sims, take - 1)[:take]
        part = part[np.isfinite(sims[part])]
        owners = gen.owner[part]
        rank, _ = self._rank(gen)
        # Similarity descending; equal ones (the same chunk text in two nodes) by blob id, then row.
        part = part[np.lexsort((part, rank[owners], -sims[part]))]
        owners = gen.owner[part]
        _, first = np.unique(owners, return_index=True)            # each node's best chunk
        keep = part[np.sort(first)[:limit]]
        return [(gen.blobs[int(o)], float(v), int(r))
                for o, v, r in zip(gen.owner[keep].tolist(), sims[keep].tolist(), keep.tolist(), strict=True)]

    def _vector_sql(self, revision: str, qv: npt.NDArray[np.float32], limit: int, filters: Filters,
                    gen: Generation) -> list[tuple[str, float, int]]:
        assert self.provider is not None
        rows = self.store.index.query(
            f"SELECT c.blob_id, max(array_cosine_similarity(v.vec, ?::FLOAT[{DIM}])) AS sim "
            "FROM (SELECT DISTINCT blob_id FROM kb_tree WHERE revision IN (?, ?)) t JOIN kb_chunk c USING (blob_id) "
            "JOIN kb_vec v ON v.hash = c.hash AND v.model = ? GROUP BY c.blob_id ORDER BY sim DESC",
            [qv.tolist(), revision, EXTRA, self.provider.model_id])
        out = [(str(b), float(s), -1) for b, s in rows if not filters.active() or filters.accepts(gen.meta[b])]
        return out[:limit]

    # -- fusion --------------------------------------------------------------------------------------
    def search(self, revision: str, query: str, *, mode: str = "hybrid", limit: int = 10,
               filters: Filters = Filters(), threshold: float | None = None,
               timings: dict[str, float] | None = None) -> Result:
        """Search one revision. A node is a result when it holds a query word or its best chunk's cosine
        similarity reaches `threshold` (default MIN_SIMILARITY); nodes matching neither way are left out.

        `timings`, when given, receives the milliseconds of each step (see `_Clock`): what the benchmark reports
        as the breakdown of a search, measured inside the call it times."""
        clock = _Clock(timings)
        threshold = MIN_SIMILARITY if threshold is None else threshold
        if mode not in MODES:
            raise KnowledgeError(f"unknown search mode {mode!r}", hint=f"use one of: {', '.join(MODES)}")
        if not query.strip():
            raise KnowledgeError("empty search query", hint="give some words to search for")
        warning = ""
        if mode != "lexical" and self.provider is None:
            warning = self.provider_error or "no embedding model: lexical search only"
            mode = "lexical"
        depth = max(limit * 5, 50)
        vec: list[tuple[str, float, int]] = []
        nearest: list[tuple[str, float, int]] = []     # under the threshold too: a keyword hit's similarity
        pending = None
        if mode == "hybrid":
            with self._lock:
                cached = self._qvec.get(query)
            if cached is None:
                pending = self._embed_meanwhile(query, clock)
        clock.lap("setup")
        try:
            lex = self._lexical(revision, query, depth, filters) if mode != "vector" else []
        except BaseException:
            if pending is not None:
                with contextlib.suppress(Exception):
                    pending()                   # the worker is this search's until its answer is read
            raise
        clock.lap("lexical")
        if mode != "lexical":
            try:
                qvec = pending() if pending is not None else None
                clock.lap("embed_wait")
                if qvec is None and mode == "vector":
                    qvec = clock.timed("embed", self.query_vector, query)
                nearest = self.vector(revision, query, depth, filters, qvec=qvec)
                vec = [v for v in nearest if v[1] >= threshold]
                clock.lap("vector")
            except ModelError as err:
                # The model stopped answering (a dead endpoint, a worker that cannot load): keywords still work.
                warning, mode = f"{err.what}: lexical search only", "lexical"
        gen = self._revision(revision, with_vectors=mode != "lexical")
        fused: dict[str, float] = {}
        lex_rank = {b: i + 1 for i, (b, _, _) in enumerate(lex)}
        coverage = {b: c for b, _, c in lex}
        vec_rank = {b: i + 1 for i, (b, _, _) in enumerate(vec)}
        vec_info = {b: (max(s, 0.0), row) for b, s, row in nearest}
        for ranks in (lex_rank, vec_rank):
            for b, r in ranks.items():
                fused[b] = fused.get(b, 0.0) + 1.0 / (RRF_K + r)
        best = sorted(fused, key=lambda b: (-fused[b], b))[:limit]
        clock.lap("fusion")
        hits = []
        for b in best:
            meta = self._public(gen, b)
            sim, row = vec_info.get(b, (0.0, -1))
            snippet = gen.chunk_text[row][:240] if row >= 0 and row < len(gen.chunk_text) else ""
            cov = coverage.get(b, 0.0)
            hits.append(Hit(meta, max(sim, cov), lex_rank.get(b, 0), vec_rank.get(b, 0), sim, snippet, cov,
                            fused[b]))
        clock.lap("rows")
        return Result(tuple(hits), mode, warning)


class _Clock:
    """Milliseconds per step of one search, into `out` (nothing is measured without one).

    Steps: setup (checks, the query handed to the model), lexical (BM25), embed_wait (waiting for the query's
    vector once BM25 is done), embed (from handing the query to the model until its vector is read: overlaps
    lexical; absent when the vector was cached), vector (matrix product, top-k, per-node best chunk), fusion
    (reciprocal rank), rows (the top hits' summaries and snippets)."""

    __slots__ = ("_out", "_t")

    def __init__(self, out: dict[str, float] | None) -> None:
        self._out = out
        self._t = time.perf_counter() if out is not None else 0.0

    def lap(self, step: str) -> None:
        """Charge the time since the previous lap to `step`."""
        if self._out is not None:
            now = time.perf_counter()
            self._out[step] = self._out.get(step, 0.0) + (now - self._t) * 1000.0
            self._t = now

    def record(self, step: str, since: float) -> None:
        """Charge the time from `since` (perf_counter) to now to `step` (no lap is moved)."""
        if self._out is not None:
            self._out[step] = (time.perf_counter() - since) * 1000.0

    def timed(self, step: str, fn: Callable[[str], _T], arg: str) -> _T:
        """fn(arg), its duration charged to `step` (runs in the embedding thread: no lap is moved)."""
        if self._out is None:
            return fn(arg)
        start = time.perf_counter()
        try:
            return fn(arg)
        finally:
            self._out[step] = (time.perf_counter() - start) * 1000.0


def recall_at(expected: Sequence[str], got: Sequence[str], k: int = 10) -> float:
    """The share of `expected` ids found in the first k of `got`."""
    if not expected:
        return 1.0
    return len(set(expected) & set(got[:k])) / len(expected)
