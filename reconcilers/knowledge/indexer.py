"""Writing one revision's checked nodes into the store: new blobs stored, only new chunks embedded.

Embedding (seconds, in a worker process) happens outside the index's lock; every write of a revision goes into
one DuckDB commit (each commit syncs the WAL: 10-30 ms here). The daemon stores a revision's nodes at once and
embeds them afterwards (`embed_revision`, in the background): infrastructure never waits for the model, and
search is keyword-only for the nodes whose vectors are not there yet.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import structlog

from reconcilers.knowledge.embed import Provider
from reconcilers.knowledge.errors import ModelError
from reconcilers.knowledge.loader import Checked
from reconcilers.knowledge.node import Node
from reconcilers.knowledge.store import Store
from reconcilers.knowledge.text import chunk_hash, chunks
from reconcilers.ports import Tables

if TYPE_CHECKING:
    import numpy as np
    import numpy.typing as npt

log = structlog.get_logger("stratum.knowledge")
STATE_REVISION = "knowledge.revision"
STATE_VECTORS = "knowledge.vectors"           # changes whenever vectors are added: searchers reload them
STATE_PENDING = "knowledge.embedding_pending"  # the last revision queued for embedding, until it is embedded

# Per index file, a count bumped after each commit of this process that changed STATE_REVISION or STATE_VECTORS.
# A view following the daemon's index (KnowledgeBase(follow_index=True), the daemon's MCP) compares it instead of
# asking DuckDB before every search (1-15 ms per query on a loaded host, more than the search itself).
_MARKS: dict[str, int] = {}
_MARKS_LOCK = threading.Lock()


def _mark_key(index: Tables) -> str:
    path = getattr(index, "path", None)
    return "" if path is None or str(path) == ":memory:" else str(Path(path).resolve())


def _bump(index: Tables) -> None:
    key = _mark_key(index)
    if key:
        with _MARKS_LOCK:
            _MARKS[key] = _MARKS.get(key, 0) + 1


def state_mark(index: Tables) -> int | None:
    """The count of knowledge state changes this process committed to `index`'s file; None when none yet (or
    the index has no file): then only DuckDB knows."""
    key = _mark_key(index)
    return _MARKS.get(key) if key else None
_STATE_MODEL = "knowledge.embedded_model"


@dataclass(frozen=True, slots=True)
class IndexStats:
    """What indexing a revision did."""

    revision: str
    nodes: int
    new_blobs: int
    embedded: int
    problems: int
    ms: float
    warning: str = ""
    fresh: tuple[str, ...] = ()               # blob ids stored by this revision (what `embed_revision` embeds)


@dataclass(frozen=True, slots=True)
class Vectors:
    """Embeddings computed for chunks that had none: (hash per row, matrix), or why there are none."""

    model: str = ""
    hashes: tuple[str, ...] = ()
    matrix: npt.NDArray[np.float32] | None = None
    warning: str = ""

    def write(self, store: Store) -> int:
        """Store the vectors (inside the caller's transaction); how many."""
        if self.matrix is not None and self.hashes:
            store.add_vectors(self.model, self.hashes, self.matrix)
        return len(self.hashes)


def embed_missing(store: Store, provider: Provider | None, nodes: Sequence[Node]) -> Vectors:
    """Embed the chunks of `nodes` that have no vector for the provider's model yet (nothing is written),
    and with them the execution nodes' chunks still waiting for the model (see `add_execution`).

    Chunks are cut from the nodes in memory, so nodes not stored yet need no round trip through DuckDB.
    """
    if provider is None or not nodes:
        return Vectors()
    texts: dict[str, str] = {}
    for n in nodes:
        for text in chunks(n):
            texts.setdefault(chunk_hash(text), text)
    missing = [h for h in texts if h not in store.vector_hashes(texts, provider.model_id)]
    if not missing:
        return Vectors(provider.model_id)
    for h, text in store.pending_extras(provider.model_id):
        if h not in texts:
            texts[h] = text
            missing.append(h)
    try:
        matrix = provider.embed([texts[h] for h in missing])
    except ModelError as err:
        # The index stays searchable lexically; the next revision retries the missing vectors.
        log.warning("knowledge.embedding_failed", reason=err.what, chunks=len(missing))
        return Vectors(provider.model_id, warning=err.what)
    return Vectors(provider.model_id, tuple(missing), matrix)


@dataclass(frozen=True, slots=True)
class Indexed:
    """What a revision's tree was when it was indexed: the base for indexing the next one."""

    revision: str
    tree: dict[str, str]                      # path -> blob id of the indexed nodes


def index_revision(store: Store, checked: Checked, revision: str, provider: Provider | None,
                   previous: Indexed | None = None, pending: bool = False) -> tuple[IndexStats, Indexed]:
    """Store a revision: nodes of new blobs, their vectors, the revision's tree; returns what it did.

    1. find the nodes whose blobs are new (with `previous`, the revision indexed last into this store, only
       the paths that changed are asked about)
    2. embed their chunks that have no vector yet (all nodes' on the first revision with a model)
    3. write nodes, vectors, the tree (copied from the previous one inside DuckDB) and the state: one commit
    """
    start = time.perf_counter()
    index = store.index
    nodes = list(checked.nodes)
    tree = {n.path: n.blob_id for n in nodes}
    base = previous.tree if previous is not None and previous.revision != revision else None
    maybe = nodes if base is None else [n for n in nodes if base.get(n.path) != n.blob_id]
    known = store.known_blobs(n.blob_id for n in maybe)
    fresh = list({n.blob_id: n for n in maybe if n.blob_id not in known}.values())
    swept = index.get_state(_STATE_MODEL)
    sweep = provider is not None and swept != provider.model_id
    # First revision with this model (or after a model switch): every node, not only new blobs.
    vectors = embed_missing(store, provider, nodes if sweep else fresh)
    with index.transaction():
        store.add_nodes(fresh, known=known)
        embedded = vectors.write(store)
        if provider is not None and sweep and not vectors.warning:
            index.set_state(_STATE_MODEL, provider.model_id)
        copied = -1
        if base is not None and previous is not None:
            removed = [p for p in base if p not in tree]
            added = [(p, b) for p, b in tree.items() if base.get(p) != b]
            copied = store.set_tree_from(revision, previous.revision, removed, added, len(checked.problems))
        if copied != len(tree):
            store.set_tree(revision, list(tree.items()), len(checked.problems))
        index.set_state(STATE_REVISION, revision)
        if pending:                                   # `embed_revision` follows; cleared when it is done
            index.set_state(STATE_PENDING, revision)
        if embedded:
            index.set_state(STATE_VECTORS, f"{revision}:{time.time_ns()}")
    _bump(index)                                      # committed: followers read the state again
    ms = (time.perf_counter() - start) * 1000.0
    stats = IndexStats(revision, len(nodes), len(fresh), embedded, len(checked.problems), ms, vectors.warning,
                       tuple(n.blob_id for n in fresh))
    return stats, Indexed(revision, tree)


def embed_revision(store: Store, provider: Provider, nodes: Sequence[Node], fresh: Sequence[str],
                   revision: str, sweep: bool = False) -> Vectors:
    """The vectors `index_revision` would have made (run after it, off the path to apply): the chunks of the
    nodes of new blobs, or of every node (`sweep`: the first revision with this model, or after a daemon
    stopped before the last queued revision was embedded); written in one commit."""
    index = store.index
    sweep = sweep or index.get_state(_STATE_MODEL) != provider.model_id
    wanted = set(fresh)
    vectors = embed_missing(store, provider, list(nodes) if sweep else [n for n in nodes if n.blob_id in wanted])
    with index.transaction():
        written = vectors.write(store)
        if sweep and not vectors.warning:
            index.set_state(_STATE_MODEL, provider.model_id)
        if written:
            index.set_state(STATE_VECTORS, f"{provider.model_id}:{time.time_ns()}")
        if not vectors.warning and index.get_state(STATE_PENDING) == revision:
            index.set_state(STATE_PENDING, None)      # a later revision queued since keeps its own mark
    if written:
        _bump(index)
    return vectors


def add_execution(store: Store, provider: Provider | None, node: Node) -> None:
    """Store an execution node (visible from every revision) with its vectors, in one commit.

    Every run writes one, so one alone never starts the model's worker: when no worker runs, the node waits
    (found by words meanwhile) and is embedded the next time the model runs anyway, for changed knowledge or
    for a run finishing while a worker is up. An idle daemon applying infrastructure never loads the model.
    """
    warm = bool(getattr(provider, "warm", True))         # providers without a process are always ready
    vectors = embed_missing(store, provider if warm else None, [node])
    with store.index.transaction():
        store.add_extra(node)
        vectors.write(store)


def current_revision(index: Tables) -> str | None:
    """The last revision whose knowledge was indexed."""
    return index.get_state(STATE_REVISION)
