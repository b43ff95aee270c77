"""KnowledgeReconciler: the daemon's view of `knowledge/**/*.md`.

1. load      parse every node file of the snapshot (per-blob cache; pure but for the cache)
2. validate  the Nickel front-matter contract, then graph rules (links, cycles, duplicate ids)
3. index     store new blobs, embed only new chunks, record the revision's tree (hook called by the pipeline)
4. plan      nothing to apply: knowledge has no target besides the index
5. record    `on_run_finished` writes an execution node, optionally committed to a branch
The MCP server is served on the daemon's HTTP listener at /mcp (`asgi_app`).

Embedding runs in a worker process (embed.py) that starts on first use and ends when idle
(`[knowledge] worker_idle_s` in the host's stratumd.toml, default 30 s). Building this reconciler imports
neither numpy nor the model's runtime: the store and indexer modules are imported on first use.
"""

from __future__ import annotations

import concurrent.futures as cf
import contextlib
import json
import time
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

import pygit2

from reconcilers.base import (
    InventoryItem,
    PolicyResource,
    Problem,
    ReconcilerEnv,
    RunRecord,
)
from reconcilers.errors import StratumError
from reconcilers.knowledge.contract import Contract
from reconcilers.knowledge.embed import WORKER_IDLE_S, Provider, load_provider
from reconcilers.knowledge.errors import KnowledgeError
from reconcilers.knowledge.execution import execution_markdown, execution_node
from reconcilers.knowledge.graph import Graph
from reconcilers.knowledge.loader import Checked, Loader, check
from reconcilers.knowledge.node import NAME, Node, Parsed
from reconcilers.knowledge.providers import check_choice, host_providers, resolve
from reconcilers.knowledge.settings import KnowledgeSettings
from reconcilers.lazylog import lazy_logger
from reconcilers.no_actions import NoActions
from reconcilers.ports import HttpMount, Snapshot, Tables

if TYPE_CHECKING:
    from reconcilers.knowledge.indexer import Indexed, IndexStats
    from reconcilers.knowledge.store import Store

log = lazy_logger("stratum.knowledge")
SETTINGS_STATE = "knowledge_settings"     # index state: the `knowledge` section of the revision indexed last


@dataclass(frozen=True, slots=True)
class Desired:
    """The parsed node files of one revision."""

    revision: str
    parsed: tuple[Parsed, ...]
    settings: KnowledgeSettings = field(default_factory=KnowledgeSettings)   # its stratum.ncl `knowledge`
    settings_error: str = ""                              # why that section could not be read ("" = fine)
    section: str = "{}"                                   # that section as canonical JSON (kept in the index)


class KnowledgeReconciler(NoActions["Desired"]):
    """Markdown nodes -> checked graph -> DuckDB index (+ MCP server). Applies nothing."""

    name = NAME

    def __init__(self, env: ReconcilerEnv) -> None:
        self.env = env
        self.settings = KnowledgeSettings.from_mapping(env.repo_settings.get("knowledge", {}))
        self._settings_error = ""
        self._section = "{}"
        # Those of the revision indexed last (what MCP serves), kept in the index so a restarted daemon serves
        # the last good revision at once, with its settings: read on first use (indexed_settings), since a CLI
        # plan opens the index on a thread while the revision loads (daemon/index/opening.py).
        self._indexed_settings: KnowledgeSettings | None = None
        self._unsaved_settings = self.settings          # ... when the index holds none
        # Embedding endpoints are host settings (providers.py); a malformed table stops this reconciler at start.
        self.host_providers = host_providers(env.settings)
        host = env.settings.get("knowledge") or {}
        self.worker_idle = float(host.get("worker_idle_s", WORKER_IDLE_S)) if isinstance(host, Mapping) \
            else WORKER_IDLE_S
        self.loader = Loader()
        # The front-matter contract runs in the host's Nickel worker when there is one (contract.py).
        self.contract = Contract(runner=getattr(env.evaluator, "run_source", None))
        self._provider: Provider | None = None
        self._provider_loaded = False
        self._provider_choice = self.settings.embedding_provider    # compared only once a provider loaded
        self.provider_error = ""
        self._repo: pygit2.Repository | None = None
        self._stores: dict[int, Store] = {}
        self._checked: dict[str, Checked] = {}
        self._indexed: dict[int, Indexed] = {}           # id(index) -> the revision indexed last into it
        self.last_stats: IndexStats | None = None
        self.last_index: Tables | None = None
        # Vectors are made after a revision's nodes are stored, one revision at a time, off the run's path.
        self.background = bool(host.get("embed_in_background", True)) if isinstance(host, Mapping) else True
        # A one-shot process (`stratum apply` without a daemon) ends before background embedding would: it
        # stores the nodes (found by words at once) and leaves them marked pending for the next process that
        # runs the model anyway (the daemon at start, `stratum kb search`), so infrastructure never waits.
        self.defer = self.background and bool(host.get("defer_embedding", False)) if isinstance(host, Mapping) \
            else False
        self._embedder = cf.ThreadPoolExecutor(max_workers=1, thread_name_prefix="knowledge-embed")

    @property
    def indexed_settings(self) -> KnowledgeSettings:
        """The settings of the revision indexed last: saved in the index, else this host's."""
        if self._indexed_settings is None:
            self._indexed_settings = self._unsaved_settings
            saved = self.env.index.get_state(SETTINGS_STATE) if self.env.index is not None else None
            if saved:
                with contextlib.suppress(ValueError, KnowledgeError):
                    self._indexed_settings = KnowledgeSettings.from_mapping(json.loads(saved))
        return self._indexed_settings

    @indexed_settings.setter
    def indexed_settings(self, value: KnowledgeSettings) -> None:
        self._indexed_settings = value

    @property
    def repo(self) -> pygit2.Repository | None:
        """The repository of the last loaded snapshot (for commits and the MCP view)."""
        return self._repo

    # -- the protocol ---------------------------------------------------------------------------------
    def configure(self, section: Mapping[str, Any]) -> None:
        """The `knowledge` section of the stratum.ncl of the revision about to be loaded (the pipeline calls
        this before each `load`; the section passed the contract in nickel/stratum.ncl)."""
        self._section = json.dumps(dict(section), sort_keys=True, default=str)
        try:
            self.settings, self._settings_error = KnowledgeSettings.from_mapping(section), ""
        except KnowledgeError as err:
            self.settings, self._settings_error = KnowledgeSettings(), err.render()

    def load(self, snap: Snapshot) -> Desired:
        """Parse every knowledge/**/*.md of the commit."""
        # The repository handle is kept for committing execution nodes to their branch (on_run_finished).
        self._repo = snap.repo
        return Desired(snap.revision, self.loader.load_snapshot(snap), self.settings, self._settings_error,
                       self._section)

    def _check(self, desired: Desired, extra: list[Any] | None = None) -> Checked:
        key = f"{desired.revision}:{desired.settings.allow_dangling_links}"
        cached = self._checked.get(key)
        if cached is None:
            # The last revision's result is the base: only files whose blob changed are checked again.
            previous = next(iter(self._checked.values()), None)
            if previous is not None and previous.allow_dangling != desired.settings.allow_dangling_links:
                previous = None
            cached = check(desired.parsed, self.contract, allow_dangling=desired.settings.allow_dangling_links,
                           extra=extra or [], previous=previous)
            self._checked = {key: cached}
        return cached

    def validate(self, desired: Desired) -> list[Problem]:
        """Settings, contract and graph problems, each with file:line and a hint."""
        if desired.settings_error:
            return [Problem(desired.settings_error, "stratum.ncl", reconciler=self.name)]
        problems = check_choice(desired.settings.embedding_provider, self.host_providers)
        return problems + list(self._check(desired).problems)

    def drift(self, desired: Desired, observed: None, inventory: list[InventoryItem]) -> list[Problem]:
        """Knowledge cannot drift: the index is derived from git."""
        return []

    # -- hooks the pipeline calls when present --------------------------------------------------------
    def provider(self) -> Provider | None:
        """The embedding provider (loaded once; None means lexical search only, with a logged warning)."""
        choice = self.indexed_settings.embedding_provider
        if not self._provider_loaded or choice != self._provider_choice:
            self._close_provider()
            chosen = resolve(choice, self.host_providers)
            if chosen is None:
                self._provider, self.provider_error = None, f"embedding provider {choice!r} is not declared by " \
                    "this host; search is lexical only"
            else:
                self._provider, self.provider_error = load_provider(chosen, self.env.data_dir,
                                                                    worker_idle=self.worker_idle)
            self._provider_loaded, self._provider_choice = True, choice
        return self._provider

    def policy_resources(self, desired: Desired) -> list[PolicyResource]:
        """What change control authorizes: each node (kind = its type, labels = its tags)."""
        return [PolicyResource(self.name, p.node.id, p.node.type, p.path, "knowledge",
                               {f"tag:{t}": "true" for t in p.node.tags}, p.blob_id[:16], p.path, 1)
                for p in desired.parsed if p.node is not None]

    def close(self) -> None:
        """Stop the embedding worker, if one runs (the daemon calls this at shutdown)."""
        # Revisions not embedded yet are embedded after the next start (the pending mark in the index says so).
        self._embedder.shutdown(wait=False, cancel_futures=True)
        self._close_provider()
        self._embedder.shutdown(wait=True)

    def _close_provider(self) -> None:
        closer = getattr(self._provider, "close", None)
        if closer is not None:
            closer()

    def store(self, index: Tables) -> Store:
        """The knowledge tables of `index` (migrated once)."""
        from reconcilers.knowledge.store import Store

        key = id(index)
        if key not in self._stores:
            self._stores[key] = Store(index)
        return self._stores[key]

    def index(self, desired: Desired, index: Tables, revision: str) -> None:
        """Index the valid nodes of the revision (invalid files are reported by validate and left out)."""
        from reconcilers.knowledge.indexer import STATE_PENDING, index_revision

        store = self.store(index)
        self.last_index = index
        self.indexed_settings = desired.settings  # the admitted revision's settings are the ones served
        if index.get_state(SETTINGS_STATE) != desired.section:      # a commit syncs the WAL: only on change
            index.set_state(SETTINGS_STATE, desired.section)
        checked = self._check(desired)
        provider = self.provider()
        later = provider is not None and self.background
        # The first revision this process indexes embeds every node lacking a vector when the last daemon
        # stopped before its queued embedding was done (the mark stays until a revision's vectors are in).
        sweep = later and id(index) not in self._indexed and index.get_state(STATE_PENDING) is not None
        self.last_stats, self._indexed[id(index)] = index_revision(store, checked, revision,
                                                                   None if later else provider,
                                                                   self._indexed.get(id(index)), pending=later)
        log.info("knowledge.indexed", revision=revision[:12], nodes=self.last_stats.nodes,
                 new_blobs=self.last_stats.new_blobs, embedded=self.last_stats.embedded,
                 problems=self.last_stats.problems, ms=round(self.last_stats.ms, 1), embedding_later=later)
        if later and provider is not None and not self.defer:
            self._embedder.submit(self._embed, store, provider, checked.nodes, self.last_stats, sweep)

    def _embed(self, store: Store, provider: Provider, nodes: tuple[Node, ...], stats: IndexStats,
               sweep: bool) -> None:
        from reconcilers.knowledge.indexer import embed_revision

        start = time.perf_counter()
        try:
            vectors = embed_revision(store, provider, nodes, stats.fresh, stats.revision, sweep)
        except Exception:   # embedding is a courtesy: keyword search works without it, and the next revision retries
            log.exception("knowledge.embedding_crashed", revision=stats.revision[:12])
            return
        if self.last_stats is stats:
            self.last_stats = replace(stats, embedded=len(vectors.hashes), warning=vectors.warning)
        log.info("knowledge.embedded", revision=stats.revision[:12], chunks=len(vectors.hashes),
                 ms=round((time.perf_counter() - start) * 1000.0, 1), warning=vectors.warning)

    def wait_embedded(self) -> None:
        """Block until the vectors of every revision indexed so far are written (tests, benchmarks)."""
        self._embedder.submit(lambda: None).result()

    def on_run_finished(self, record: RunRecord, index: Tables) -> None:
        """Write the run's execution node into the index; commit it to the configured branch when set."""
        from reconcilers.knowledge.indexer import add_execution, current_revision

        store = self.store(index)
        rev = current_revision(index) or record.revision
        checked = next((c for key, c in self._checked.items() if key.partition(":")[0] == rev), None)
        # The checked graph of the indexed revision is at hand; reading 10,000 nodes back costs a second.
        graph = checked.graph if checked is not None else Graph(store.nodes(rev))
        node = execution_node(record, graph, self.indexed_settings.executions_path)
        add_execution(store, self.provider(), node)
        branch = self.indexed_settings.executions_branch
        if branch and self.env.git_writer is None:
            log.warning("knowledge.execution_commit_skipped", branch=branch,
                        reason="no git writer was handed to the knowledge reconciler")
        elif branch and self.env.git_writer is not None:
            path, text = execution_markdown(record, graph, node.path)
            try:
                self.env.git_writer.commit_file(branch, path, text,
                                                f"stratum: execution {record.run_id} {record.status}")
            except (pygit2.GitError, StratumError) as err:
                # The index holds the record; a failed courtesy commit must not fail the run's finalizer.
                log.warning("knowledge.execution_commit_failed", branch=branch, error=str(err))

    def http_mounts(self) -> list[HttpMount]:
        """/mcp: the MCP streamable HTTP transport over this daemon's index, built on the first request."""
        return [HttpMount("/mcp", self._mcp_app)]

    def _mcp_app(self) -> Any:
        from reconcilers.knowledge.mcp_server import http_app

        return http_app(self)
