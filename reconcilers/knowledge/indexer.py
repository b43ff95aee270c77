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


def index_revision(store: Store, checked: Checked, revision: str, provider: Provider | None) -> IndexStats:
    """Store a revision: nodes of new blobs, their vectors, the revision's tree; returns what it did."""
    start = time.perf_counter()
    nodes = list(checked.nodes)
    known = store.known_blobs(n.blob_id for n in nodes)
    fresh = [n for n in nodes if n.blob_id not in known]
    store.add_nodes(fresh)
    targets = [n.blob_id for n in fresh]
    index = store.index
    if provider is not None and index.get_state(_STATE_MODEL) != provider.model_id:
        # First revision with this model (or after a model switch): sweep every node, not only new blobs.
        targets = [n.blob_id for n in nodes]
    embedded, warning = embed_missing(store, provider, targets)
    if provider is not None and not warning:
        index.set_state(_STATE_MODEL, provider.model_id)
    store.set_tree(revision, [(n.path, n.blob_id) for n in nodes], len(checked.problems))
    index.set_state(STATE_REVISION, revision)
    ms = (time.perf_counter() - start) * 1000.0
    return IndexStats(revision, len(nodes), len(fresh), embedded, len(checked.problems), ms, warning)


def add_execution(store: Store, provider: Provider | None, node: Node) -> None:
    """Store an execution node (visible from every revision) with its vectors."""
    store.add_extra(node)
    embed_missing(store, provider, [node.blob_id])


def current_revision(index: Index) -> str | None:
    """The last revision whose knowledge was indexed."""
    return index.get_state(STATE_REVISION)
