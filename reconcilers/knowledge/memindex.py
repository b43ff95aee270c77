"""The in-memory search index of one revision (a generation), derived from the previous one.

Search needs, per revision, each live node's summary and length, the BM25 postings by term and the chunk
vectors. Reading them all from DuckDB costs about a second at 10,000 nodes, and scoring postings row by row in
Python costs tens of milliseconds per common term. So a generation keeps them in NumPy arrays: postings in CSR
form (term -> slots, tf), vectors in one contiguous float32 matrix, stored transposed (one column per chunk):
`query @ matrix_t` ran in 0.7 ms at 10,000 x 384 where `matrix @ query` took 5-7 ms, both at load ~6.7 on
this 2-core host (OpenBLAS's kernel for the second form is the slow one here). Each node has a stable slot; a later
revision reuses the previous generation, reads only the rows of the blobs it adds (appended as a small second
CSR segment and matrix rows) and tombstones the slots it drops. Once dead or appended slots pass a quarter of
the whole, the next revision rebuilds everything from DuckDB (compaction).

Generations are never mutated once built (a search may hold one while a new revision is synced).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import numpy.typing as npt

from reconcilers.knowledge.store import DIM, EXTRA, Store

COMPACT_SHARE = 0.25
_I32 = np.int32


@dataclass(frozen=True, slots=True)
class Postings:
    """Postings in CSR form: the slots and term frequencies of term id t are [indptr[t], indptr[t + 1])."""

    indptr: npt.NDArray[np.int64]
    slots: npt.NDArray[np.int32]
    tfs: npt.NDArray[np.float64]

    @staticmethod
    def build(tids: npt.NDArray[np.int64], slots: npt.NDArray[np.int32], tfs: npt.NDArray[np.float64],
              n_terms: int) -> Postings:
        """CSR from (term id, slot, tf) triples, each term's postings in slot order."""
        order = np.lexsort((slots, tids))
        counts = np.bincount(tids, minlength=n_terms) if len(tids) else np.zeros(n_terms, dtype=np.int64)
        indptr = np.zeros(n_terms + 1, dtype=np.int64)
        np.cumsum(counts, out=indptr[1:])
        return Postings(indptr, slots[order].astype(_I32), tfs[order].astype(np.float64))

    def get(self, tid: int) -> tuple[npt.NDArray[np.int32], npt.NDArray[np.float64]]:
        """(slots, tfs) of one term (empty for a term this segment does not know)."""
        if tid + 1 >= len(self.indptr):
            return self.slots[:0], self.tfs[:0]
        lo, hi = int(self.indptr[tid]), int(self.indptr[tid + 1])
        return self.slots[lo:hi], self.tfs[lo:hi]


_EMPTY = Postings(np.zeros(1, dtype=np.int64), np.zeros(0, dtype=_I32), np.zeros(0, dtype=np.float64))


@dataclass(frozen=True, slots=True)
class Generation:
    """Everything search reads for one revision; see the module docstring."""

    revision: str
    model: str                                          # "" when built without vectors
    blobs: tuple[str, ...]                              # slot -> blob id
    slot: dict[str, int]
    live: npt.NDArray[np.bool_]
    meta: dict[str, dict[str, Any]]                     # live blob id -> node summary (path, id, type, ...)
    doc_len: npt.NDArray[np.float64]
    n_docs: int
    avgdl: float
    vocab: dict[str, int]
    base: Postings
    delta: Postings                                     # postings of the slots appended since `base`
    delta_rows: tuple[npt.NDArray[np.int64], npt.NDArray[np.int32], npt.NDArray[np.float64]]
    base_slots: int                                     # slots [0, base_slots) are in `base`
    # (DIM, rows): column r is chunk row r's vector (C-contiguous; see the module docstring for why transposed).
    matrix_t: npt.NDArray[np.float32] = field(default_factory=lambda: np.zeros((DIM, 0), dtype=np.float32))
    owner: npt.NDArray[np.int32] = field(default_factory=lambda: np.zeros(0, dtype=_I32))   # row -> slot
    chunk_text: tuple[str, ...] = ()

    @property
    def vectors_loaded(self) -> bool:
        """Whether the chunk matrix is here (generations for lexical search skip it)."""
        return bool(self.model)

    def postings(self, tid: int) -> tuple[npt.NDArray[np.int32], npt.NDArray[np.float64]]:
        """Live (slots, tfs) of a term across both segments."""
        s1, f1 = self.base.get(tid)
        s2, f2 = self.delta.get(tid)
        slots = np.concatenate((s1, s2)) if len(s2) else s1
        tfs = np.concatenate((f1, f2)) if len(s2) else f1
        keep = self.live[slots]
        if not keep.all():
            return slots[keep], tfs[keep]
        return slots, tfs

    def mask(self, accepts: Any) -> npt.NDArray[np.bool_]:
        """Live slots whose metadata passes `accepts(meta)`."""
        ok = np.zeros(len(self.blobs), dtype=bool)
        for blob, meta in self.meta.items():
            if accepts(meta):
                ok[self.slot[blob]] = True
        return ok


# -- reading from the store ---------------------------------------------------------------------------------
def _tree(store: Store, revision: str) -> dict[str, str]:
    """blob id -> its first path in the revision (execution nodes included)."""
    rows = store.index.query("SELECT blob_id, min(path) FROM kb_tree WHERE revision IN (?, ?) GROUP BY blob_id",
                             [revision, EXTRA])
    return {str(b): str(p) for b, p in rows}


def _meta(store: Store, paths: dict[str, str]) -> dict[str, dict[str, Any]]:
    if not paths:
        return {}
    rows = store.index.query_dicts(
        "SELECT blob_id, node_id AS id, type, title, status, project, tags, modified, doc_len FROM kb_node "
        "WHERE blob_id IN (SELECT unnest(?))", [list(paths)])
    out: dict[str, dict[str, Any]] = {}
    for r in rows:
        blob = str(r["blob_id"])
        # Key order as before (path first): the summaries are returned to users as they are.
        out[blob] = {"path": paths[blob], "blob_id": blob, "id": r["id"], "type": r["type"], "title": r["title"],
                     "status": r["status"], "project": r["project"], "tags": list(r["tags"] or []),
                     "modified": r["modified"], "_len": r["doc_len"]}
    return out


def _slot_rows(store: Store, sql: str, blobs: Sequence[str], first_slot: int,
               params: Sequence[Any] = ()) -> dict[str, Any]:
    """Run `sql` (which joins `slots_d(b, s)`) for `blobs` numbered from `first_slot`; columns as arrays."""
    # slots_d is read by DuckDB's replacement scan (the SQL names it), not by Python.
    slots_d = {"b": np.array(list(blobs), dtype=object),  # noqa: F841
               "s": np.arange(first_slot, first_slot + len(blobs), dtype=_I32)}
    with store.index.connection() as con:
        res: dict[str, Any] = con.execute(sql, list(params)).fetchnumpy()
    return res


def _term_rows(store: Store, blobs: Sequence[str], first_slot: int,
               vocab: dict[str, int]) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.int32], npt.NDArray[np.float64]]:
    """(term id, slot, tf) of the blobs' postings; new terms are added to `vocab`."""
    if not blobs:
        return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=_I32), np.zeros(0, dtype=np.float64)
    res = _slot_rows(store, "SELECT s.s AS slot, k.term, k.tf FROM kb_term k JOIN slots_d s ON s.b = k.blob_id",
                     blobs, first_slot)
    tids = np.fromiter((vocab.setdefault(t, len(vocab)) for t in res["term"].tolist()), dtype=np.int64,
                       count=len(res["term"]))
    return tids, np.asarray(res["slot"], dtype=_I32), np.asarray(res["tf"], dtype=np.float64)


def _vector_rows(store: Store, blobs: Sequence[str], first_slot: int,
                 model: str) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.int32], list[str]]:
    """(transposed matrix: one column per row, owner slot per row, chunk text per row) of the blobs' embedded
    chunks, by slot then seq."""
    if not blobs:
        return np.zeros((DIM, 0), dtype=np.float32), np.zeros(0, dtype=_I32), []
    res = _slot_rows(store, "SELECT s.s AS slot, c.text, v.vec FROM kb_chunk c JOIN slots_d s ON s.b = c.blob_id "
                            "JOIN kb_vec v ON v.hash = c.hash AND v.model = ? ORDER BY s.s, c.seq",
                     blobs, first_slot, [model])
    vecs = res["vec"]
    matrix = (np.stack([np.asarray(v, dtype=np.float32) for v in vecs]) if len(vecs)
              else np.zeros((0, DIM), dtype=np.float32))
    return np.ascontiguousarray(matrix.T), np.asarray(res["slot"], dtype=_I32), [str(t) for t in res["text"]]


def _stats(live: npt.NDArray[np.bool_], doc_len: npt.NDArray[np.float64]) -> tuple[int, float]:
    n = int(live.sum())
    return n, (float(doc_len[live].sum()) / n) if n else 1.0


# -- building -------------------------------------------------------------------------------------------------
def build(store: Store, revision: str, model: str) -> Generation:
    """A generation read whole from the store (`model` "" to skip vectors)."""
    paths = _tree(store, revision)
    meta = _meta(store, paths)
    blobs = tuple(sorted(meta))
    slot = {b: i for i, b in enumerate(blobs)}
    live = np.ones(len(blobs), dtype=bool)
    doc_len = np.array([float(meta[b]["_len"]) for b in blobs], dtype=np.float64)
    vocab: dict[str, int] = {}
    tids, slots, tfs = _term_rows(store, blobs, 0, vocab)
    n_docs, avgdl = _stats(live, doc_len)
    empty = (np.zeros(0, dtype=np.int64), np.zeros(0, dtype=_I32), np.zeros(0, dtype=np.float64))
    gen = Generation(revision, "", blobs, slot, live, meta, doc_len, n_docs, avgdl, vocab,
                     Postings.build(tids, slots, tfs, len(vocab)), _EMPTY, empty, len(blobs))
    return with_vectors(store, gen, model) if model else gen


def with_vectors(store: Store, gen: Generation, model: str) -> Generation:
    """The same generation with the chunk matrix of every slot (live or not) for `model`."""
    matrix, owner, text = _vector_rows(store, gen.blobs, 0, model)
    return replace(gen, model=model, matrix_t=matrix, owner=owner, chunk_text=tuple(text))


def advance(store: Store, prev: Generation | None, revision: str, model: str) -> Generation:
    """The generation of `revision`: `prev` plus the blobs added, minus those dropped, or a rebuild."""
    if prev is None or (model and prev.model and prev.model != model):
        return build(store, revision, model)
    paths = _tree(store, revision)
    added = [b for b in paths if b not in prev.meta]
    dropped = [b for b in prev.meta if b not in paths]
    moved = [b for b in paths if b in prev.meta and prev.meta[b]["path"] != paths[b]]
    dead = len(prev.blobs) - prev.n_docs + len(dropped)
    appended = len(prev.blobs) - prev.base_slots + len(added)
    if dead + appended > COMPACT_SHARE * max(len(paths), 1):
        return build(store, revision, model)
    if not (added or dropped or moved):
        return replace(prev, revision=revision)
    fresh = _meta(store, {b: paths[b] for b in added})
    added = [b for b in added if b in fresh]          # a tree row without its node row is not searchable
    first = len(prev.blobs)
    blobs = prev.blobs + tuple(added)
    slot = dict(prev.slot)
    slot.update((b, first + i) for i, b in enumerate(added))
    live = np.concatenate((prev.live, np.ones(len(added), dtype=bool)))
    for b in dropped:
        live[slot[b]] = False
    meta = dict(prev.meta)
    for b in dropped:
        del meta[b]
    meta.update(fresh)
    for b in moved:
        meta[b] = {**meta[b], "path": paths[b]}
    doc_len = np.concatenate((prev.doc_len, np.array([float(fresh[b]["_len"]) for b in added], dtype=np.float64)))
    vocab = dict(prev.vocab)
    tids, slots, tfs = _term_rows(store, added, first, vocab)
    d_t, d_s, d_f = prev.delta_rows
    rows = (np.concatenate((d_t, tids)), np.concatenate((d_s, slots)), np.concatenate((d_f, tfs)))
    n_docs, avgdl = _stats(live, doc_len)
    gen = Generation(revision, prev.model, blobs, slot, live, meta, doc_len, n_docs, avgdl, vocab, prev.base,
                     Postings.build(*rows, len(vocab)), rows, prev.base_slots, prev.matrix_t, prev.owner,
                     prev.chunk_text)
    if prev.model and added:
        matrix, owner, text = _vector_rows(store, added, first, prev.model)
        gen = replace(gen, matrix_t=np.ascontiguousarray(np.concatenate((prev.matrix_t, matrix), axis=1)),
                      owner=np.concatenate((prev.owner, owner)),
                      chunk_text=prev.chunk_text + tuple(text))
    if model and not gen.model:
        gen = with_vectors(store, gen, model)
    return gen
