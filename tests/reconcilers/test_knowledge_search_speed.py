"""What keeps a warm search within its budget, and what must not change while it gets faster: a warm
KnowledgeBase (the CLI's and the MCP server's view) asks DuckDB nothing per search, the vector scan over the
transposed matrix answers as DuckDB's own cosine scan does, the breakdown names every step, and the CLI and the
MCP server return the same results. Real git repos, real DuckDB files, the real shipped model.

Speed itself is measured by bench/knowledge_search.py (no timed assertions here).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import anyio
import pytest

from daemon.git.source import GitSource
from daemon.index.store import Index
from daemon.run.workspace import open_workspace
from reconcilers.base import ReconcilerEnv
from reconcilers.knowledge.embed import WorkerProvider
from reconcilers.knowledge.knowledge_base import KnowledgeBase
from reconcilers.knowledge.reconciler import KnowledgeReconciler
from tests.fixtures import GIT_ENV, WorkRepo

ROOT = Path(__file__).resolve().parents[2]
SERVICES = ["gateway", "billing", "ledger", "search", "mailer", "queue", "cache", "auth"]
FAILURES = [("the disk is full and writes fail", "storage capacity exhausted"),
            ("the TLS certificate expired", "https cert outdated"),
            ("the OOM killer ended the process", "RAM exhaustion crash"),
            ("replication lag grows on the replica", "secondary copy is behind")]
QUERIES = [f"{s} {f[1]}" for s in SERVICES[:4] for f in FAILURES] + ["restart the service", "zebra"]


def _files() -> dict[str, str]:
    files = {}
    for i, service in enumerate(SERVICES):
        for j, (desc, _) in enumerate(FAILURES):
            nid = f"{i:08d}-{j:04d}-4000-8000-000000000000"
            files[f"knowledge/notes/{service}-{j}.md"] = (
                f"---\nid: {nid}\ntype: note\ntitle: \"{service}: {desc}\"\ncreated: 2024-05-01\n---\n"
                f"# {service}\n\nWhen {desc} on {service}, restart the service and check the dashboard.\n")
    return files


class CountingIndex(Index):
    """Counts the statements sent to DuckDB through the Index (reads and writes)."""

    statements = 0

    def query(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        self.statements += 1
        return super().query(sql, params)

    def query_dicts(self, sql: str, params: Sequence[Any] = ()) -> list[dict[str, Any]]:
        self.statements += 1
        return super().query_dicts(sql, params)

    def execute(self, sql: str, params: Sequence[Any] = ()) -> None:
        self.statements += 1
        super().execute(sql, params)


@pytest.fixture(scope="module")
def provider(tmp_path_factory: pytest.TempPathFactory) -> Iterator[WorkerProvider]:
    p = WorkerProvider(tmp_path_factory.mktemp("model"))
    yield p
    p.close()


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory) -> WorkRepo:
    r = WorkRepo(tmp_path_factory.mktemp("speed") / "ops")
    r.commit(_files(), "knowledge")
    return r


def test_a_warm_search_sends_nothing_to_duckdb(tmp_path: Path, repo: WorkRepo, provider: WorkerProvider) -> None:
    """After the first search of a revision, searches run on the in-memory index alone. Before, every hybrid
    search asked DuckDB whether vectors were pending: 1-15 ms each on this loaded host, more than the search."""
    index = CountingIndex(tmp_path / "data" / "index.duckdb")
    kb = KnowledgeBase(open_workspace(str(repo.path), tmp_path / "data", index=index), provider=provider)
    assert kb.search(QUERIES[0]).hits
    index.statements = 0
    for q in QUERIES[1:]:
        for mode in ("hybrid", "vector", "lexical"):
            kb.search(q, mode=mode)
    assert index.statements == 0
    # A new head is indexed (and checked) again: the memo is per revision.
    repo.commit({"knowledge/notes/extra.md": "---\nid: 99999999-0000-4000-8000-000000000000\ntype: note\n"
                 "title: \"Rotate the logs\"\ncreated: 2024-05-01\n---\nLogs of the gateway fill the disk.\n"})
    hits = kb.search("gateway logs fill the disk").hits
    assert index.statements > 0 and hits[0].node["title"] == "Rotate the logs"
    index.close()


def test_a_view_following_the_daemons_index_asks_duckdb_only_after_the_daemon_wrote(
        tmp_path: Path, provider: WorkerProvider) -> None:
    """What the daemon's MCP serves (follow_index): searches between two of the daemon's commits send nothing to
    DuckDB (before, each asked it for the indexed revision), and a revision the daemon indexes, with its vectors,
    is searched at the next call."""
    repo = WorkRepo(tmp_path / "ops")
    repo.commit(_files(), "knowledge")
    rec = KnowledgeReconciler(ReconcilerEnv(tmp_path / "data"))
    rec._provider, rec._provider_loaded = provider, True
    index = CountingIndex(tmp_path / "data" / "index.duckdb")

    def daemon_run() -> None:
        snap = GitSource(str(repo.path), "main", repo.path / ".git").snapshot("main")
        desired = rec.load(snap)
        rec.validate(desired)
        rec.index(desired, index, snap.revision)
        rec.wait_embedded()

    daemon_run()
    view = KnowledgeBase(open_workspace(str(repo.path), tmp_path / "data", index=index), follow_index=True,
                         provider=provider, settings=rec.indexed_settings)
    assert view.search(QUERIES[0]).hits
    index.statements = 0
    for q in QUERIES[1:6]:
        view.search(q)
    assert index.statements == 0
    repo.commit({"knowledge/notes/extra.md": "---\nid: 99999999-0000-4000-8000-000000000000\ntype: note\n"
                 "title: \"Rotate the logs\"\ncreated: 2024-05-01\n---\nLogs of the gateway fill the disk.\n"})
    daemon_run()
    found = view.search("the gateway's logs take all the space")
    assert found.hits[0].node["title"] == "Rotate the logs" and found.hits[0].vector_rank > 0
    rec.close()
    index.close()


def test_the_vector_scan_ranks_as_duckdbs_cosine_scan(tmp_path: Path, repo: WorkRepo,
                                                     provider: WorkerProvider) -> None:
    """The transposed-matrix product (NumPy) and array_cosine_similarity (SQL) give the same nodes in the same
    order with the same similarities, for every query."""
    index = Index(tmp_path / "data" / "index.duckdb")
    kb = KnowledgeBase(open_workspace(str(repo.path), tmp_path / "data", index=index), provider=provider)
    rev = kb.refresh()
    for q in QUERIES:
        mem = kb.searcher.vector(rev, q, 10)
        sql = kb.searcher.vector(rev, q, 10, engine="duckdb")
        assert [b for b, _, _ in mem] == [b for b, _, _ in sql], q
        assert [s for _, s, _ in mem] == pytest.approx([s for _, s, _ in sql], abs=1e-5)
    index.close()


def test_the_breakdown_names_every_step(tmp_path: Path, repo: WorkRepo, provider: WorkerProvider) -> None:
    """`timings` receives each step's milliseconds; the query's embedding is absent when its vector is cached."""
    index = Index(tmp_path / "data" / "index.duckdb")
    kb = KnowledgeBase(open_workspace(str(repo.path), tmp_path / "data", index=index), provider=provider)
    first: dict[str, float] = {}
    plain = kb.search("billing storage capacity exhausted")
    kb.searcher._qvec.clear()
    timed = kb.search("billing storage capacity exhausted", timings=first)
    assert [h.as_dict() for h in timed.hits] == [h.as_dict() for h in plain.hits]
    assert set(first) == {"refresh", "setup", "lexical", "embed", "embed_wait", "vector", "fusion", "rows"}
    assert all(v >= 0.0 for v in first.values())
    again: dict[str, float] = {}
    kb.search("billing storage capacity exhausted", timings=again)
    assert "embed" not in again and "vector" in again
    index.close()


def test_a_hybrid_search_embeds_its_query_without_a_thread(tmp_path: Path, repo: WorkRepo,
                                                          provider: WorkerProvider) -> None:
    """The query goes to the worker before BM25 and its vector is read after (WorkerProvider.send): no thread
    hand-off per search; the results are those of the vector read first (the LRU) and the breakdown names it."""
    import threading

    index = Index(tmp_path / "data" / "index.duckdb")
    kb = KnowledgeBase(open_workspace(str(repo.path), tmp_path / "data", index=index), provider=provider)
    kb.searcher._qvec.clear()
    before = set(threading.enumerate())           # (other tests' searchers may have left theirs running)
    timings: dict[str, float] = {}
    first = kb.search("ledger RAM exhaustion crash", timings=timings)
    assert "embed" in timings and first.mode == "hybrid" and first.hits
    assert not [t for t in set(threading.enumerate()) - before if t.name.startswith("query-embed")]
    again = kb.search("ledger RAM exhaustion crash")                    # from the LRU
    assert [h.as_dict() for h in again.hits] == [h.as_dict() for h in first.hits]
    index.close()


@pytest.mark.slow
def test_the_cli_and_the_mcp_server_return_the_same_results(tmp_path: Path, repo: WorkRepo) -> None:
    """`stratum kb search --json` and the MCP `search` tool (over stdio, `stratum kb mcp`), each in its own
    process with its own index of the same repo, answer every query with the same results."""
    from mcp import Client
    from mcp.client.stdio import StdioServerParameters

    env = {**os.environ, **GIT_ENV, "HOME": str(tmp_path), "PYTHONPATH": str(ROOT)}
    stratum = [sys.executable, "-c", "from daemon.cli.main import main; main()"]
    cli: list[list[dict[str, Any]]] = []
    for q in QUERIES[:6]:
        proc = subprocess.run([*stratum, "kb", "--repo", str(repo.path), "--data-dir", str(tmp_path / "cli"),
                               "search", q, "--json"], env=env, cwd=str(ROOT), capture_output=True, text=True,
                              timeout=300, check=False)
        assert proc.returncode == 0, proc.stderr
        cli.append(json.loads(proc.stdout)["results"])
    params = StdioServerParameters(command=sys.executable, args=[*stratum[1:], "kb", "mcp", "--repo",
                                   str(repo.path), "--data-dir", str(tmp_path / "mcp")], env=env, cwd=str(ROOT))

    async def ask() -> list[list[dict[str, Any]]]:
        out = []
        async with Client(params, read_timeout_seconds=300) as client:
            for q in QUERIES[:6]:
                result = await client.call_tool("search", {"query": q})
                out.append(json.loads(result.content[0].text)["results"])  # type: ignore[union-attr]
        return out

    mcp = anyio.run(ask)
    assert any(cli) and mcp == cli


def test_a_query_is_embedded_at_its_own_length(tmp_path: Path) -> None:
    """The shipped tokenizer.json pads every text to 128 tokens; the model resets that to the batch's longest,
    so a one-line query runs at its own length (8 tokens: ~10 ms of CPU here; padded to 128: ~72 ms)."""
    from reconcilers.knowledge.minilm import MiniLM
    from reconcilers.knowledge.model_files import prepare_model_dir

    model = MiniLM(prepare_model_dir(tmp_path / "model"))
    encoded = model.tokenizer.encode_batch(["gateway storage capacity exhausted"])[0]
    assert 4 <= len(encoded.ids) < 16 and all(encoded.attention_mask)
    assert model.embed(["gateway storage capacity exhausted"]) == pytest.approx(
        model.embed(["gateway storage capacity exhausted", "a much longer second text " * 8])[:1], abs=1e-5)



@pytest.mark.parametrize("user_set", [False, True])
def test_a_vector_search_runs_blas_on_one_thread(tmp_path: Path, repo: WorkRepo, user_set: bool) -> None:
    """After a hybrid search, the searching process's BLAS runs one thread (search.py: OpenBLAS's idle threads
    spun on this 2-core host, taking the CPU the embedding worker needed), unless the user set
    OPENBLAS_NUM_THREADS: that count is kept (before, the search forced 1 over it). In a fresh process with two
    BLAS threads (pytest's own process may have been limited by an earlier test): set by the user, or by
    NumPy imported before the knowledge package (as threadpool_limits does here, whatever the host's cores)."""
    script = (
        "import json, sys\n"
        "from pathlib import Path\n"
        "from threadpoolctl import threadpool_info, threadpool_limits\n"
        "import numpy\n"
        + ("" if user_set else "threadpool_limits(2, user_api='blas')\n") +
        "from daemon.index.store import Index\n"
        "from daemon.run.workspace import open_workspace\n"
        "from reconcilers.knowledge.embed import WorkerProvider\n"
        "from reconcilers.knowledge.knowledge_base import KnowledgeBase\n"
        "repo, data = sys.argv[1], Path(sys.argv[2])\n"
        "blas = lambda: [p['num_threads'] for p in threadpool_info() if p['user_api'] == 'blas']\n"
        "before = blas()\n"
        "provider = WorkerProvider(data / 'model')\n"
        "kb = KnowledgeBase(open_workspace(repo, data, index=Index(data / 'index.duckdb')), provider=provider)\n"
        "hits = kb.search('billing storage capacity exhausted').hits\n"
        "provider.close()\n"
        "print(json.dumps({'before': before, 'after': blas(), 'hits': len(hits)}))\n")
    env = {k: v for k, v in os.environ.items() if k != "OPENBLAS_NUM_THREADS"}
    if user_set:
        env["OPENBLAS_NUM_THREADS"] = "2"
    proc = subprocess.run([sys.executable, "-c", script, str(repo.path), str(tmp_path / "data")],
                          env={**env, **GIT_ENV, "PYTHONPATH": str(ROOT)},
                          cwd=str(ROOT), capture_output=True, text=True, timeout=300, check=False)
    assert proc.returncode == 0, proc.stderr
    seen = json.loads(proc.stdout.strip().splitlines()[-1])
    assert seen["hits"] > 0
    assert seen["before"] and all(n == 2 for n in seen["before"])
    assert seen["after"] and all(n == (2 if user_set else 1) for n in seen["after"])
