"""The knowledge reconciler end to end: real git repos, real DuckDB files, the real shipped embedding model."""

from __future__ import annotations

import contextlib
import json
import threading
from collections.abc import Iterator, Sequence
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import numpy as np
import pygit2
import pytest

from daemon.git.source import GitSource
from daemon.index.store import Index
from daemon.run.ports import RepoGitWriter
from daemon.run.workspace import open_workspace
from reconcilers.base import ReconcilerEnv, RunRecord
from reconcilers.knowledge.embed import HttpProvider, ModelError, WorkerProvider, load_provider, prepare_model_dir
from reconcilers.knowledge.knowledge_base import KnowledgeBase
from reconcilers.knowledge.reconciler import KnowledgeReconciler
from reconcilers.knowledge.search import Filters, Searcher
from reconcilers.knowledge.store import KEEP_REVISIONS, PRUNE_SLACK, Store
from reconcilers.knowledge.text import CHUNK_CHARS
from reconcilers.ports import GitWriter
from tests.fixtures import WorkRepo

RUNBOOK, ADR, POST = ("11111111-1111-4111-8111-111111111111", "22222222-2222-4222-8222-222222222222",
                      "33333333-3333-4333-8333-333333333333")


def md(nid: str, ntype: str, title: str, body: str, extra: str = "") -> str:
    return f"---\nid: {nid}\ntype: {ntype}\ntitle: {json.dumps(title)}\ncreated: 2024-05-01\n{extra}---\n{body}\n"


FILES = {
    "knowledge/runbooks/restart.md": md(RUNBOOK, "note", "Restart the web service",
                                        "When users get 502 Bad Gateway, restart [[infra:app-service]].",
                                        "tags: [runbook]\n"),
    "knowledge/decisions/config.md": md(ADR, "decision", "Keep configuration in git",
                                        "The file [[infra:app-config]] is rendered from a template.",
                                        "status: accepted\n"),
    "knowledge/postmortems/outage.md": md(POST, "journal", "Postmortem: kitten pictures vanished",
                                          "The feline image store lost its disk. See [[Restart the web service]].",
                                          "tags: [postmortem]\n"),
}


@pytest.fixture(scope="module")
def provider(tmp_path_factory: pytest.TempPathFactory) -> Iterator[WorkerProvider]:
    p = WorkerProvider(tmp_path_factory.mktemp("model"))
    yield p
    p.close()


@pytest.fixture()
def repo(tmp_path: Path) -> WorkRepo:
    r = WorkRepo(tmp_path / "ops")
    r.commit(FILES, "knowledge")
    return r


def reconcile(rec: KnowledgeReconciler, repo: WorkRepo, index: Index) -> list[str]:
    snap = GitSource(str(repo.path), "main", repo.path / ".git").snapshot("main")
    desired = rec.load(snap)
    problems = [str(p) for p in rec.validate(desired)]
    rec.index(desired, index, snap.revision)
    rec.wait_embedded()                       # the daemon embeds after storing the nodes, off the run's path
    return problems


def make_reconciler(tmp_path: Path, provider: WorkerProvider | None, git_writer: GitWriter | None = None,
                    **knowledge: object) -> KnowledgeReconciler:
    rec = KnowledgeReconciler(ReconcilerEnv(tmp_path / "data", repo_settings={"knowledge": knowledge},
                                            git_writer=git_writer))
    rec._provider, rec._provider_loaded = provider, True
    return rec


# -- indexing ---------------------------------------------------------------------------------------------
def test_a_revision_is_indexed_and_only_the_changed_file_is_reembedded(tmp_path: Path, repo: WorkRepo,
                                                                      provider: WorkerProvider) -> None:
    rec = make_reconciler(tmp_path, provider)
    index = Index(tmp_path / "data" / "index.duckdb")
    assert reconcile(rec, repo, index) == []
    assert rec.last_stats is not None and rec.last_stats.nodes == 3 and rec.last_stats.embedded >= 3
    repo.commit({"knowledge/runbooks/restart.md": FILES["knowledge/runbooks/restart.md"] + "\nAlso check logs.\n"})
    parsed_before = rec.loader.parsed_count
    reconcile(rec, repo, index)
    assert rec.loader.parsed_count == parsed_before + 1
    assert (rec.last_stats.new_blobs, rec.last_stats.embedded) == (1, 1)
    assert rec.plan(None, None, []) == []


def test_bad_files_are_reported_with_file_and_line_and_the_rest_stays_searchable(
        tmp_path: Path, repo: WorkRepo, provider: WorkerProvider) -> None:
    repo.commit({
        "knowledge/bad-utf8.md": b"---\nid: x\n---\n\xff\xfe broken\n",
        "knowledge/huge.md": b"---\n" + b"x" * (50 * 1024 * 1024) + b"\n",
        "knowledge/no-front.md": "# no header\n",
        "knowledge/long-field.md": md("44444444-4444-4444-8444-444444444444", "decision", "Long",
                                      "b", "context: " + "c" * 10_000 + "\n"),
        "knowledge/dup.md": md(ADR, "note", "Duplicate", "same id"),
        "knowledge/dangling.md": md("55555555-5555-4555-8555-555555555555", "note", "Dangling", "[[Nowhere]]"),
    })
    rec = make_reconciler(tmp_path, provider)
    index = Index(tmp_path / "data" / "index.duckdb")
    problems = reconcile(rec, repo, index)
    joined = "\n".join(problems)
    assert "knowledge/bad-utf8.md:4: not valid UTF-8" in joined
    assert "knowledge/huge.md:1: node file is 52428805 bytes" in joined
    assert "knowledge/no-front.md:1: missing front matter" in joined
    assert "knowledge/long-field.md:6: front matter: `context` is 10000 characters long" in joined
    assert "knowledge/dup.md:2: duplicate node id" in joined
    assert "knowledge/dangling.md:7: link to nowhere" in joined
    kb = KnowledgeBase(open_workspace(str(repo.path), tmp_path / "data", index=index), provider=provider)
    hits = kb.search("502 bad gateway").hits
    assert hits and hits[0].node["id"] == RUNBOOK


def test_semantic_search_finds_a_paraphrase_that_keywords_miss(tmp_path: Path, repo: WorkRepo,
                                                              provider: WorkerProvider) -> None:
    kb = KnowledgeBase(open_workspace(str(repo.path), tmp_path / "data"), provider=provider)
    assert kb.search("cat photos disappeared", mode="lexical").hits == ()
    hybrid = kb.search("cat photos disappeared")
    assert hybrid.mode == "hybrid" and hybrid.hits[0].node["id"] == POST and hybrid.hits[0].vector_rank == 1
    rev = kb.refresh()
    numpy_top = [b for b, _, _ in kb.searcher.vector(rev, "cat photos disappeared", 3)]
    sql_top = [b for b, _, _ in kb.searcher.vector(rev, "cat photos disappeared", 3, engine="duckdb")]
    assert numpy_top == sql_top


def test_filters_restrict_results(tmp_path: Path, repo: WorkRepo, provider: WorkerProvider) -> None:
    kb = KnowledgeBase(open_workspace(str(repo.path), tmp_path / "data"), provider=provider)
    hits = kb.search("service configuration git restart", filters=Filters(types=("decision",))).hits
    assert [h.node["id"] for h in hits] == [ADR]
    assert [h.node["id"] for h in kb.search("restart", filters=Filters(tags=("runbook",))).hits] == [RUNBOOK]
    assert kb.search("restart", filters=Filters(since="2030-01-01")).hits == ()


def test_without_a_model_search_falls_back_to_lexical_with_a_warning(tmp_path: Path, repo: WorkRepo) -> None:
    kb = KnowledgeBase(open_workspace(str(repo.path), tmp_path / "data"), provider=None)
    result = kb.search("502 bad gateway")
    assert result.mode == "lexical" and result.warning and result.hits[0].node["id"] == RUNBOOK


def test_a_link_to_a_node_committed_later_resolves_without_reindexing_the_source(
        tmp_path: Path, repo: WorkRepo) -> None:
    rec = make_reconciler(tmp_path, None, allow_dangling_links=True)
    index = Index(tmp_path / "data" / "index.duckdb")
    repo.commit({"knowledge/early.md": md("66666666-6666-4666-8666-666666666666", "note", "Early", "[[Later node]]")})
    reconcile(rec, repo, index)
    parsed = rec.loader.parsed_count
    repo.commit({"knowledge/later.md": md("77777777-7777-4777-8777-777777777777", "note", "Later node", "x")})
    reconcile(rec, repo, index)
    assert rec.loader.parsed_count == parsed + 1
    kb = KnowledgeBase(open_workspace(str(repo.path), tmp_path / "data", index=index), provider=None)
    assert kb.related("Early")["edges"][0]["target"] == "77777777-7777-4777-8777-777777777777"


# -- execution nodes and guidelines -----------------------------------------------------------------------
def test_a_finished_run_becomes_an_execution_node_committed_to_the_branch(tmp_path: Path, repo: WorkRepo) -> None:
    repo.commit({"knowledge/decisions/config.md": FILES["knowledge/decisions/config.md"].replace(
        "status: accepted\n", "status: accepted\nrelates_to: [infra:app-config]\n")})
    writer = RepoGitWriter(GitSource(str(repo.path), "main", tmp_path / "src"))   # what the daemon hands it
    rec = make_reconciler(tmp_path, None, writer, executions={"branch": "stratum/executions"})
    index = Index(tmp_path / "data" / "index.duckdb")
    reconcile(rec, repo, index)
    head = pygit2.Repository(str(repo.path)).head.target
    record = RunRecord("run123456789", str(head), "succeeded", 1_700_000_000.0, 1_700_000_002.5,
                       (("infra:app-config", "update", "succeeded"),), ("infra:app-config",), "applied")
    rec.on_run_finished(record, index)
    kb = KnowledgeBase(open_workspace(str(repo.path), tmp_path / "data", index=index), provider=None)
    [execution] = kb.nodes(Filters(types=("execution",)))
    assert execution.field("outcome") == "succeeded" and execution.field("implements") == [ADR]
    branch = pygit2.Repository(str(repo.path)).branches["stratum/executions"].peel(pygit2.Commit)
    blob = branch.tree["executions/2023-11-14-run123456789.md"]
    assert isinstance(blob, pygit2.Blob) and "type: execution" in blob.data.decode()
    assert pygit2.Repository(str(repo.path)).head.shorthand == "main"


class CountingIndex(Index):
    """An Index that counts its DuckDB commits: top-level transactions and autocommitted statements."""

    commits = 0

    @contextlib.contextmanager
    def transaction(self) -> Iterator[Any]:
        top = not self._in_txn
        with super().transaction() as con:
            yield con
        self.commits += int(top)

    def execute(self, sql: str, params: Sequence[Any] = ()) -> None:
        self.commits += int(not self._in_txn)
        super().execute(sql, params)


class RecordingProvider:
    """A provider that remembers what it was asked to embed, answering with the shipped model's vectors."""

    def __init__(self, inner: WorkerProvider) -> None:
        self.inner = inner
        self.texts: list[str] = []
        self.model_id = inner.model_id

    def embed(self, texts: Sequence[str]) -> Any:
        self.texts.extend(texts)
        return self.inner.embed(texts)


def test_an_incremental_revision_and_an_execution_node_are_one_commit_each(tmp_path: Path, repo: WorkRepo,
                                                                           provider: WorkerProvider) -> None:
    """Each DuckDB commit syncs the WAL (10-30 ms here): nodes, tree and state go in one, and the vectors
    (made afterwards, off the run's path) in one more."""
    rec = make_reconciler(tmp_path, provider)
    index = CountingIndex(tmp_path / "data" / "index.duckdb")
    reconcile(rec, repo, index)
    repo.commit({"knowledge/runbooks/restart.md": FILES["knowledge/runbooks/restart.md"] + "\nAlso check logs.\n"})
    index.commits = 0
    reconcile(rec, repo, index)
    assert rec.last_stats is not None and rec.last_stats.embedded == 1 and index.commits == 2
    head = str(pygit2.Repository(str(repo.path)).head.target)
    index.commits = 0
    rec.on_run_finished(RunRecord("run-one-commit", head, "succeeded", 1.0, 2.0), index)
    assert index.commits == 1


def test_a_large_run_embeds_one_short_text_and_keeps_every_action_searchable(tmp_path: Path, repo: WorkRepo,
                                                                             provider: WorkerProvider) -> None:
    """1,000 actions: one chunk (summary and first actions) is embedded; the body and BM25 keep all 1,000."""
    recording = RecordingProvider(provider)
    rec = make_reconciler(tmp_path, None)
    index = Index(tmp_path / "data" / "index.duckdb")
    reconcile(rec, repo, index)
    rec._provider = recording
    actions = tuple((f"infra:file-{i:04d}", "create", "succeeded") for i in range(1000))
    head = str(pygit2.Repository(str(repo.path)).head.target)
    rec.on_run_finished(RunRecord("run-large", head, "succeeded", 1.0, 9.0, actions,
                                  tuple(a for a, _, _ in actions), "1000 action(s) applied"), index)
    [text] = recording.texts
    assert len(text) <= CHUNK_CHARS and "1000 action(s) applied" in text and "infra:file-0000" in text
    kb = KnowledgeBase(open_workspace(str(repo.path), tmp_path / "data", index=index), provider=None)
    [execution] = kb.nodes(Filters(types=("execution",)))
    assert "| infra:file-0999 | create | succeeded |" in execution.body
    assert kb.search("infra:file-0999", mode="lexical").hits[0].node["type"] == "execution"


def test_an_execution_node_waits_for_the_model_rather_than_starting_it(tmp_path: Path, repo: WorkRepo) -> None:
    """A run alone never starts the embedding worker; its node is embedded with the next one that finds the
    worker up (an idle daemon applying infrastructure never loads the model)."""
    cold = WorkerProvider(tmp_path / "model")
    try:
        rec = make_reconciler(tmp_path, None)
        index = Index(tmp_path / "data" / "index.duckdb")
        reconcile(rec, repo, index)
        rec._provider = cold
        head = str(pygit2.Repository(str(repo.path)).head.target)
        rec.on_run_finished(RunRecord("run-cold", head, "succeeded", 1.0, 2.0), index)
        store = rec.store(index)
        assert cold.starts == 0 and len(store.pending_extras(cold.model_id)) == 1
        cold.embed(["a semantic search started the worker"])
        rec.on_run_finished(RunRecord("run-warm", head, "succeeded", 3.0, 4.0), index)
        assert store.pending_extras(cold.model_id) == [] and cold.starts == 1
        assert index.query("SELECT count(*) FROM kb_tree WHERE revision = '*'")[0][0] == 2
    finally:
        cold.close()


def test_old_revisions_are_pruned_together_and_only_their_own_blobs_go(tmp_path: Path, repo: WorkRepo) -> None:
    """Past KEEP_REVISIONS, nothing is swept until PRUNE_SLACK more revisions piled up; then blobs that only
    the pruned revisions held are deleted, and blobs still in a kept revision stay."""
    rec = make_reconciler(tmp_path, None)
    index = Index(tmp_path / "data" / "index.duckdb")
    reconcile(rec, repo, index)
    store = rec.store(index)
    first_blobs = {str(r[0]) for r in index.query("SELECT blob_id FROM kb_tree WHERE revision = ?",
                                                  [store.revisions()[0]])}
    for i in range(KEEP_REVISIONS + PRUNE_SLACK):        # the last one makes KEEP + SLACK + 1: a sweep
        repo.commit({"knowledge/notes/churn.md": md("88888888-8888-4888-8888-888888888888", "note", "Churn",
                                                    f"version {i}")})
        reconcile(rec, repo, index)
        revisions = i + 2                                      # the first one, then one per churn
        assert len(store.revisions()) == (revisions if revisions <= KEEP_REVISIONS + PRUNE_SLACK
                                          else KEEP_REVISIONS), i
    stored = {str(r[0]) for r in index.query("SELECT blob_id FROM kb_node")}
    assert first_blobs <= stored                               # the three original files are in every revision
    churn = {str(r[0]) for r in index.query("SELECT DISTINCT blob_id FROM kb_term")} - first_blobs
    assert len(churn) == KEEP_REVISIONS                        # one churn version per kept revision
    assert index.query("SELECT count(*) FROM kb_chunk WHERE blob_id NOT IN (SELECT blob_id FROM kb_tree)")[0][0] == 0


def test_project_guidelines_override_a_base_repo_by_id_and_category(tmp_path: Path, repo: WorkRepo) -> None:
    base = WorkRepo(tmp_path / "org")
    g = "---\nid: {id}\ntype: guideline\ntitle: {title}\ncategory: {cat}\npriority: {prio}\n---\nbody\n"
    base.commit({
        "knowledge/guidelines/a.md": g.format(id="a0000000-0000-4000-8000-000000000001", title="Org review",
                                              cat="review", prio=50),
        "knowledge/guidelines/b.md": g.format(id="a0000000-0000-4000-8000-000000000002", title="Org naming",
                                              cat="naming", prio=40)})
    repo.commit({"knowledge/guidelines/p.md": g.format(id="b0000000-0000-4000-8000-000000000001",
                                                      title="Project review", cat="review", prio=90)})
    kb = KnowledgeBase(open_workspace(str(repo.path), tmp_path / "data"), provider=None)
    object.__setattr__(kb, "_settings", None)
    from reconcilers.knowledge.settings import KnowledgeSettings
    kb._settings = KnowledgeSettings.from_mapping({"guidelines": {"bases": [{"source": str(base.path)}]}})
    found, warnings = kb.guidelines()
    assert warnings == []
    assert [(x.node.title, x.source.endswith("@main") or x.source) for x in found] == [
        ("Project review", "project"), ("Org naming", True)]
    assert found[0].overrides == (f"{base.path}@main: Org review",)


# -- providers ----------------------------------------------------------------------------------------------
def test_the_shipped_model_is_verified_by_sha256(tmp_path: Path) -> None:
    from reconcilers.knowledge.embed import shipped_model_files

    model, tokenizer = shipped_model_files()
    bad = tmp_path / "model.onnx"
    bad.write_bytes(model.read_bytes()[:-1] + b"\x00")
    with pytest.raises(ModelError, match="sha256"):
        prepare_model_dir(tmp_path / "out", (bad, tokenizer))


def test_the_shipped_model_ranks_related_words_closer(provider: WorkerProvider) -> None:
    cat, kitten, revenue = provider.embed(["cat", "kitten", "quarterly revenue"])
    assert float(cat @ kitten) > float(cat @ revenue) + 0.2
    assert abs(float(np.linalg.norm(cat)) - 1.0) < 1e-4


class _EmbeddingAPI(BaseHTTPRequestHandler):
    """A real OpenAI/Ollama embeddings endpoint on loopback, answering with the shipped model's vectors."""

    model: WorkerProvider

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        vectors = self.model.embed(body["input"]).tolist()
        if self.path == "/v1/embeddings":
            payload = {"data": [{"index": i, "embedding": v} for i, v in enumerate(vectors)]}
        else:
            payload = {"embeddings": vectors}
        data = json.dumps(payload).encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args: object) -> None:
        return None


@pytest.fixture()
def api(provider: WorkerProvider) -> Iterator[str]:
    handler = type("H", (_EmbeddingAPI,), {"model": provider})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_openai_and_ollama_providers_speak_their_apis(api: str, provider: WorkerProvider) -> None:
    expected = provider.embed(["restart the service"])
    for p in (HttpProvider("openai", api + "/v1", "m"), HttpProvider("ollama", api, "m")):
        assert np.allclose(p.embed(["restart the service"]), expected, atol=1e-5)


def test_an_unreachable_endpoint_falls_back_to_lexical(tmp_path: Path, repo: WorkRepo) -> None:
    prov, _why = load_provider({"provider": "ollama", "url": "http://127.0.0.1:9"}, tmp_path)
    assert prov is not None
    kb = KnowledgeBase(open_workspace(str(repo.path), tmp_path / "data"), provider=prov)
    rev = kb.refresh()
    assert kb.last_stats is not None and kb.last_stats.warning and "failed" in kb.last_stats.warning
    assert Store(kb.index).chunks_without_vectors([h for h in ["x"]], prov.model_id) == []
    assert kb.searcher.lexical(rev, "502", 5)
    assert load_provider({"provider": "none"}, tmp_path)[0] is None


def test_a_searcher_carried_across_revisions_answers_as_a_fresh_one(tmp_path: Path, repo: WorkRepo,
                                                                    provider: WorkerProvider) -> None:
    rec = make_reconciler(tmp_path, provider)
    index = Index(tmp_path / "data" / "index.duckdb")
    reconcile(rec, repo, index)
    store = rec.store(index)
    carried = Searcher(store, provider)
    queries = ["restart the web service", "kitten pictures", "configuration in git", "502"]
    first = GitSource(str(repo.path), "main", repo.path / ".git").resolve("main")
    assert carried.search(first, queries[0]).hits
    # One file edited, one removed, one added: the carried searcher updates only those blobs.
    (repo.path / "knowledge/decisions/config.md").unlink()
    repo.commit({"knowledge/runbooks/restart.md": FILES["knowledge/runbooks/restart.md"] + "\nKitten logs too.\n",
                 "knowledge/notes/new.md": md("66666666-6666-4666-8666-666666666666", "note", "Rotate the logs",
                                              "Logs of [[infra:app-service]] fill the disk.")})
    reconcile(rec, repo, index)
    second = GitSource(str(repo.path), "main", repo.path / ".git").resolve("main")
    fresh = Searcher(store, provider)

    def answer(searcher: Searcher, q: str, mode: str) -> list[tuple[object, ...]]:
        return [(h.node, round(h.score, 9), h.lexical_rank, h.vector_rank, round(h.similarity, 5), h.snippet)
                for h in searcher.search(second, q, mode=mode).hits]

    for q in [*queries, "logs fill the disk"]:
        for mode in ("lexical", "vector", "hybrid"):
            assert answer(carried, q, mode) == answer(fresh, q, mode), (q, mode)
    assert carried._revision(second, True).n_docs == 3
