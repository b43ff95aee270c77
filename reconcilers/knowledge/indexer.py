"""Writing one revision's checked nodes into the store: new blobs stored, only new chunks embedded."""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
import structlog

from daemon.index import Index
from reconcilers.knowledge.embed import Provider
from reconcilers.knowledge.errors import ModelError
from reconcilers.knowledge.loader import Checked
from reconcilers.knowledge.node import Node
from reconcilers.knowledge.store import Store

log = structlog.get_logger("stratum.knowledge")
STATE_REVISION = "knowledge.revision"
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


def embed_missing(store: Store, provider: Provider | None, blob_ids: list[str]) -> tuple[int, str]:
    """Embed the chunks of `blob_ids` that have no vector for the provider's model; (count, warning)."""
    if provider is None or not blob_ids:
        return 0, ""
    missing = store.chunks_without_vectors(blob_ids, provider.model_id)
    if not missing:
        return 0, ""
    try:
        matrix = provider.embed([text for _, text in missing])
    except ModelError as err:
        # The index stays searchable lexically; the next revision retries the missing vectors.
        log.warning("knowledge.embedding_failed", reason=err.what, chunks=len(missing))
        return 0, err.what
    store.add_vectors(provider.model_id, [h for h, _ in missing], np.asarray(matrix, dtype=np.float32))
    return len(missing), ""


@dataclass(frozen=True, slots=True)
class Indexed:
    """What a revision's tree was when it was indexed: the base for indexing the next one."""

    revision: str
    tree: dict[str, str]                      # path -> blob id of the indexed nodes


def index_revision(store: Store, checked: Checked, revision: str, provider: Provider | None,
                   previous: Indexed | None = None) -> tuple[IndexStats, Indexed]:
    """Store a revision: nodes of new blobs, their vectors, the revision's tree; returns what it did.

    `previous`, the revision indexed last into this store, lets this one touch only the paths that changed:
    the store is asked about their blobs only, and the tree is copied from the previous one inside DuckDB.
    """
    start = time.perf_counter()
    nodes = list(checked.nodes)
    tree = {n.path: n.blob_id for n in nodes}
    base = previous.tree if previous is not None and previous.revision != revision else None
    maybe = nodes if base is None else [n for n in nodes if base.get(n.path) != n.blob_id]
    known = store.known_blobs(n.blob_id for n in maybe)
    fresh = [n for n in maybe if n.blob_id not in known]
    store.add_nodes(fresh)
    targets = [n.blob_id for n in fresh]
    index = store.index
    swept = index.get_state(_STATE_MODEL)
    if provider is not None and swept != provider.model_id:
        # First revision with this model (or after a model switch): sweep every node, not only new blobs.
        targets = [n.blob_id for n in nodes]
    embedded, warning = embed_missing(store, provider, targets)
    if provider is not None and not warning and swept != provider.model_id:
        index.set_state(_STATE_MODEL, provider.model_id)
    copied = -1
    if base is not None and previous is not None:
        removed = [p for p in base if p not in tree]
        added = [(p, b) for p, b in tree.items() if base.get(p) != b]
        copied = store.set_tree_from(revision, previous.revision, removed, added, len(checked.problems))
    if copied != len(tree):
        store.set_tree(revision, list(tree.items()), len(checked.problems))
    index.set_state(STATE_REVISION, revision)
    ms = (time.perf_counter() - start) * 1000.0
    stats = IndexStats(revision, len(nodes), len(fresh), embedded, len(checked.problems), ms, warning)
    return stats, Indexed(revision, tree)


def add_execution(store: Store, provider: Provider | None, node: Node) -> None:
    """Store an execution node (visible from every revision) with its vectors."""
    store.add_extra(node)
    embed_missing(store, provider, [node.blob_id])


def current_revision(index: Index) -> str | None:
    """The last revision whose knowledge was indexed."""
    return index.get_state(STATE_REVISION)
