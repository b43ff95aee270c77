"""The knowledge reconciler inside the real pipeline: only admitted revisions reach what search and MCP serve,
and each revision's stratum.ncl `knowledge` section takes effect. Real git repos, DuckDB files, Cedar policies,
Nickel, and a loopback HTTP server standing in for an embedding endpoint."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, ClassVar

import pygit2
import pytest
from click.testing import CliRunner

from daemon.cli.main import cli
from daemon.control.admission import admission_settings
from daemon.nickel.evaluator import Evaluator
from daemon.run.pipeline import Pipeline
from daemon.run.ports import RepoGitWriter
from daemon.run.workspace import open_workspace
from daemon.settings import load_settings
from reconcilers.base import ReconcilerEnv
from reconcilers.knowledge.indexer import current_revision
from reconcilers.knowledge.knowledge_base import KnowledgeBase
from reconcilers.knowledge.reconciler import KnowledgeReconciler
from tests.fixtures import Stack, WorkRepo, commit_with, infra, resource

ALICE, BOB = "alice@example.com", "bob@example.com"
A_ID, B_ID = "aaaaaaaa-1111-4111-8111-111111111111", "bbbbbbbb-2222-4222-8222-222222222222"
POLICY = '@id("alice")\npermit(principal == Stratum::User::"alice@example.com", action, resource);\n'
NO_EMBED = '{ knowledge = { embedding = { provider = "none" } } }\n'


def node(nid: str, title: str, body: str) -> str:
    return f"---\nid: {nid}\ntype: note\ntitle: {json.dumps(title)}\ncreated: 2024-05-01\n---\n{body}\n"


def commit(repo: WorkRepo, files: dict[str, str | None], author: str = ALICE) -> str:
    env = {"GIT_AUTHOR_NAME": author.split("@")[0], "GIT_AUTHOR_EMAIL": author,
           "GIT_COMMITTER_NAME": "CI", "GIT_COMMITTER_EMAIL": "ci@example.com"}
    return commit_with(repo, files, message="change", env=env)


class Embedder(BaseHTTPRequestHandler):
    """An OpenAI-compatible embeddings endpoint on loopback that records every request it receives; requests
    with a text containing `hold_on` wait until `release` is set (a slow model)."""

    seen: ClassVar[list[dict[str, Any]]] = []
    hold_on: ClassVar[str] = ""
    fail_on: ClassVar[str] = ""                  # texts containing it get a 500 (a model that broke down)
    release: ClassVar[threading.Event] = threading.Event()

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        type(self).seen.append({"path": self.path, "auth": self.headers.get("Authorization", ""), "body": body})
        if self.fail_on and any(self.fail_on in t for t in body["input"]):
            self.send_error(500)
            return
        if self.hold_on and any(self.hold_on in t for t in body["input"]):
            self.release.wait(60)
        vec = [1.0] + [0.0] * 383
        data = json.dumps({"data": [{"index": i, "embedding": vec} for i in range(len(body["input"]))]}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args: Any) -> None:
        return None


Endpoint = tuple[str, list[dict[str, Any]], type[Embedder]]


@pytest.fixture()
def endpoint() -> Iterator[Endpoint]:
    """(base URL, the requests it received, its handler class) of a fresh loopback embeddings endpoint."""
    seen: list[dict[str, Any]] = []
    handler: type[Embedder] = type("Recorder", (Embedder,), {"seen": seen, "release": threading.Event()})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/v1", seen, handler
    handler.release.set()
    server.shutdown()
    server.server_close()
    thread.join(5)


class KStack:
    """Stack's pipeline with the knowledge reconciler beside infra, and the host settings of `toml`."""

    def __init__(self, tmp: Path, repo: WorkRepo, evaluator: Evaluator, toml: str = "") -> None:
        self.base = Stack(tmp, repo.path, evaluator=evaluator)
        config = tmp / "stratumd.toml"
        config.write_text(toml)
        settings = load_settings({"repo": str(repo.path), "data_dir": self.base.data}, env={}, config=config)
        self.knowledge = KnowledgeReconciler(ReconcilerEnv(data_dir=self.base.data,
                                                           settings=settings.reconciler_settings(),
                                                           evaluator=evaluator, revisions=self.base.source,
                                                           git_writer=RepoGitWriter(self.base.source)))
        self.pipeline = Pipeline(source=self.base.source, index=self.base.index,
                                 reconcilers={"infra": self.base.infra, "knowledge": self.knowledge},
                                 evaluator=evaluator, admission=admission_settings(settings, str(config)))
        self.index = self.base.index

    def view(self) -> KnowledgeBase:
        """What MCP serves: a view that follows the daemon's index (as mcp_server.http_app builds it)."""
        ws = open_workspace(str(self.base.source.location), self.base.data, index=self.index,
                            host=self.knowledge.env.settings)
        return KnowledgeBase(ws, follow_index=True, provider=self.knowledge.provider(),
                             settings=self.knowledge.indexed_settings)

    def close(self) -> None:
        self.pipeline.close()
        self.knowledge.close()
        self.base.close()


@pytest.fixture()
def kstack(tmp_path: Path, repo: WorkRepo, evaluator: Evaluator) -> Iterator[KStack]:
    s = KStack(tmp_path, repo, evaluator)
    yield s
    s.close()


# -- 1. rejected revisions never reach the index hooks ----------------------------------------------------------
def test_a_revision_admission_rejects_changes_nothing_search_or_mcp_serve(repo: WorkRepo, kstack: KStack) -> None:
    """bob's commit (Cedar permits only alice) adds a node: the run is rejected, and the indexed revision,
    the nodes listed and the search results stay those of alice's applied commit."""
    good = commit(repo, {"stratum.ncl": NO_EMBED, "policies/base.cedar": POLICY,
                         "knowledge/a.md": node(A_ID, "Rotate the keys", "Rotate the signing keys yearly.")})
    assert kstack.pipeline.run(good).status == "succeeded"
    bad = commit(repo, {"knowledge/b.md": node(B_ID, "Zebra crossing", "The zebra runbook of bob.")}, author=BOB)
    result = kstack.pipeline.run(bad)
    assert result.status == "rejected", result
    assert any("bob@example.com" in p.message for p in result.problems)
    assert current_revision(kstack.index) == good
    view = kstack.view()
    assert [n.id for n in view.nodes() if n.type != "execution"] == [A_ID]
    assert view.search("zebra", mode="lexical").hits == ()
    assert [h.node["id"] for h in view.search("signing keys", mode="lexical").hits] == [A_ID]


# -- 2. each revision's settings reach the reconciler -------------------------------------------------------------
def test_allow_dangling_links_in_the_revision_takes_effect(repo: WorkRepo, kstack: KStack) -> None:
    """A link to a node not committed yet rejects the revision by default, and passes once the same commit's
    stratum.ncl says `knowledge.allow_dangling_links = true`."""
    files: dict[str, str | None] = {
        "stratum.ncl": NO_EMBED,
        "knowledge/a.md": node(A_ID, "Rotate the keys", "See [[Key ceremony checklist]] first.")}
    strict = kstack.pipeline.run(commit(repo, files))
    assert strict.status == "rejected"
    assert any(p.path == "knowledge/a.md" and "Key ceremony checklist" in p.message for p in strict.problems)
    relaxed = commit(repo, {"stratum.ncl": '{ knowledge = { allow_dangling_links = true, '
                                           'embedding = { provider = "none" } } }\n'})
    assert kstack.pipeline.run(relaxed).status == "succeeded"
    assert current_revision(kstack.index) == relaxed


def test_embedding_provider_none_in_the_revision_turns_vectors_off(repo: WorkRepo, kstack: KStack) -> None:
    """`knowledge.embedding.provider = "none"`: nothing is embedded (no model worker is started) and search says
    it is keyword-only."""
    rev = commit(repo, {"stratum.ncl": NO_EMBED,
                        "knowledge/a.md": node(A_ID, "Rotate the keys", "Rotate the signing keys yearly.")})
    assert kstack.pipeline.run(rev).status == "succeeded"
    assert kstack.knowledge.provider() is None
    assert kstack.knowledge.last_stats is not None and kstack.knowledge.last_stats.embedded == 0
    result = kstack.view().search("signing keys")
    assert result.mode == "lexical" and "disabled" in result.warning


def test_executions_path_in_the_revision_takes_effect(repo: WorkRepo, kstack: KStack) -> None:
    """`knowledge.executions.path` names where the run's execution node lives."""
    rev = commit(repo, {"stratum.ncl": '{ knowledge = { executions = { path = "runs-log" }, '
                                       'embedding = { provider = "none" } } }\n',
                        "knowledge/a.md": node(A_ID, "Rotate the keys", "Rotate the signing keys yearly.")})
    assert kstack.pipeline.run(rev).status == "succeeded"
    kstack.pipeline.wait_hooks()
    paths = [n.path for n in kstack.view().nodes() if n.type == "execution"]
    assert paths and all(p.startswith("runs-log/") for p in paths), paths


def test_executions_branch_in_the_revision_takes_effect(repo: WorkRepo, kstack: KStack) -> None:
    """`knowledge.executions.branch` gets each run's execution node committed to that branch (main untouched)."""
    rev = commit(repo, {"stratum.ncl": '{ knowledge = { executions = { branch = "ops/runs" }, '
                                       'embedding = { provider = "none" } } }\n',
                        "knowledge/a.md": node(A_ID, "Rotate the keys", "Rotate the signing keys yearly.")})
    result = kstack.pipeline.run(rev)
    assert result.status == "succeeded"
    kstack.pipeline.wait_hooks()
    git = pygit2.Repository(str(repo.path))
    tip = git.references["refs/heads/ops/runs"].peel(pygit2.Commit)
    assert result.run_id in tip.message
    assert str(git.references["refs/heads/main"].target) == rev


def test_commit_notes_in_the_revision_takes_effect_for_kb_new(repo: WorkRepo, tmp_path: Path) -> None:
    """`knowledge.commit_notes = true`: `stratum kb new` commits the node it writes (default: only writes it)."""
    commit(repo, {"stratum.ncl": '{ knowledge = { commit_notes = true, embedding = { provider = "none" } } }\n'})
    before = str(pygit2.Repository(str(repo.path)).head.target)
    out = CliRunner().invoke(cli, ["kb", "new", "note", "Rotate the keys", "--repo", str(repo.path),
                                  "--data-dir", str(tmp_path / "cli"), "-o", "json"])
    assert out.exit_code == 0, out.output
    git = pygit2.Repository(str(repo.path))
    head = git.head.peel(pygit2.Commit)
    assert str(head.id) != before and json.loads(out.stdout)["path"].endswith(".md")
    assert any(p.startswith("knowledge/notes/") for p in _paths(head.tree))


def _paths(tree: pygit2.Tree, prefix: str = "") -> list[str]:
    out: list[str] = []
    for entry in tree:
        if isinstance(entry, pygit2.Tree):
            out += _paths(entry, f"{prefix}{entry.name}/")
        else:
            out.append(f"{prefix}{entry.name}")
    return out


# -- 7. the repo never chooses where texts and credentials go ------------------------------------------------------
def test_a_repo_naming_an_embedding_url_is_rejected_and_the_url_receives_nothing(
        repo: WorkRepo, kstack: KStack, endpoint: Endpoint,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """`knowledge.embedding = { provider = "openai", url, api_key_env }` in the repo is a located validate error,
    at the daemon and at `stratum kb search`, and the URL is never contacted."""
    url, seen, _handler = endpoint
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "canary-not-a-real-key")
    hostile = ('{ knowledge = { embedding = { provider = "openai", url = "' + url + '", '
               'api_key_env = "AWS_SECRET_ACCESS_KEY" } } }\n')
    rev = commit(repo, {"stratum.ncl": hostile,
                        "knowledge/a.md": node(A_ID, "Rotate the keys", "Rotate the signing keys yearly.")})
    result = kstack.pipeline.run(rev)
    assert result.status == "rejected"
    assert any(p.path == "stratum.ncl" and "host setting" in p.message for p in result.problems), result.problems
    out = CliRunner().invoke(cli, ["kb", "search", "signing keys", "--repo", str(repo.path),
                                   "--data-dir", str(kstack.base.tmp / "cli")])
    assert out.exit_code != 0
    assert "stratum.ncl" in out.stderr and "host setting" in out.stderr and "Traceback" not in out.output
    assert seen == []


def test_a_repo_picks_a_host_declared_provider_by_name_only(repo: WorkRepo, tmp_path: Path, evaluator: Evaluator,
                                                            endpoint: Endpoint,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    """A name the host did not declare is a validate error at stratum.ncl; a declared one is used with the
    host's URL and the host's key variable."""
    url, seen, _handler = endpoint
    monkeypatch.setenv("CORP_EMBED_KEY", "host-key-1")
    toml = f'[embedding.providers.corp]\nkind = "openai"\nurl = "{url}"\napi_key_env = "CORP_EMBED_KEY"\n'
    s = KStack(tmp_path, repo, evaluator, toml)
    try:
        a = node(A_ID, "Rotate the keys", "Rotate the signing keys yearly.")
        undeclared = commit(repo, {"stratum.ncl": '{ knowledge = { embedding = { provider = "openai" } } }\n',
                                   "knowledge/a.md": a})
        result = s.pipeline.run(undeclared)
        assert result.status == "rejected"
        assert [(p.path, "not an embedding provider this host declared" in p.message) for p in result.problems] \
            == [("stratum.ncl", True)]
        assert seen == []
        declared = commit(repo, {"stratum.ncl": '{ knowledge = { embedding = { provider = "corp" } } }\n'})
        assert s.pipeline.run(declared).status == "succeeded"
        s.knowledge.wait_embedded()      # the vectors are made in the background, after the run (a race before)
        assert seen and {r["auth"] for r in seen} == {"Bearer host-key-1"}
        assert all(r["path"] == "/v1/embeddings" for r in seen)
    finally:
        s.close()


def test_malformed_host_providers_stop_the_reconciler_with_a_located_error(tmp_path: Path) -> None:
    """A host provider of an unknown kind is refused when the reconciler is built, naming the table."""
    from reconcilers.knowledge.errors import KnowledgeError

    with pytest.raises(KnowledgeError) as err:
        KnowledgeReconciler(ReconcilerEnv(tmp_path, settings={"embedding": {"providers": {"x": {"kind": "ftp"}}}}))
    assert "[embedding.providers.x]" in err.value.render()


# -- embedding never delays infrastructure ---------------------------------------------------------------------
def test_infrastructure_is_applied_while_the_model_is_still_embedding(
        repo: WorkRepo, tmp_path: Path, evaluator: Evaluator,
        endpoint: Endpoint) -> None:
    """With a model that takes its time over the nodes, the run applies the infra file and succeeds before
    any vector exists; search meanwhile answers by keywords; once the vectors land it ranks semantically too."""
    url, _seen, handler = endpoint
    s = KStack(tmp_path, repo, evaluator, f'[embedding.providers.slow]\nkind = "openai"\nurl = "{url}"\n')
    handler.hold_on = "Rotate"
    try:
        rev = commit(repo, {"stratum.ncl": '{ knowledge = { embedding = { provider = "slow" } } }\n',
                            "infra/base.ncl": infra(resource("motd", "file", path="etc/motd", content="hi\n")),
                            "knowledge/a.md": node(A_ID, "Rotate the keys", "Rotate the signing keys yearly.")})
        result = s.pipeline.run(rev)
        assert result.status == "succeeded", result
        assert (s.base.root / "etc/motd").read_text() == "hi\n"
        assert not handler.release.is_set()            # the model is still busy with the node
        s.pipeline.wait_hooks()          # the run's execution node is indexed by a hook: not racing it below
        view = s.view()
        hits = view.search("signing keys").hits
        assert [(h.node["id"], h.vector_rank) for h in hits if h.node.get("type") != "execution"] == [(A_ID, 0)]
        handler.release.set()
        s.knowledge.wait_embedded()
        assert s.knowledge.last_stats is not None and s.knowledge.last_stats.embedded >= 1
        ranks = {h.node["id"]: h.vector_rank for h in view.search("signing keys").hits}
        assert ranks[A_ID] > 0                          # a semantic match now (the execution node is one too)
    finally:
        handler.release.set()
        s.close()


def test_nodes_left_unembedded_by_a_stopped_daemon_are_embedded_after_the_next_start(
        repo: WorkRepo, tmp_path: Path, evaluator: Evaluator, endpoint: Endpoint) -> None:
    """The model fails while the background embeds a revision (or the daemon stops first): the next daemon's
    first run embeds what is missing, though no node is new to it."""
    url, _seen, handler = endpoint
    toml = f'[embedding.providers.slow]\nkind = "openai"\nurl = "{url}"\n'
    handler.fail_on = "Rotate"
    base = commit(repo, {"stratum.ncl": '{ knowledge = { embedding = { provider = "slow" } } }\n',
                         "knowledge/b.md": node(B_ID, "Zebra crossing", "The zebra runbook.")})
    rev = commit(repo, {"knowledge/a.md": node(A_ID, "Rotate the keys", "Rotate the signing keys yearly.")})
    first = KStack(tmp_path / "one", repo, evaluator, toml)
    try:
        assert first.pipeline.run(base).status == "succeeded"      # the model works: every node has vectors
        first.knowledge.wait_embedded()
        assert first.pipeline.run(rev).status == "succeeded"       # ... and breaks down over the new node
        first.knowledge.wait_embedded()
        assert first.knowledge.last_stats is not None and first.knowledge.last_stats.warning
    finally:
        first.pipeline.close()
        first.knowledge.close()
        first.index.close()
    handler.fail_on = ""
    second = KStack(tmp_path / "one", repo, evaluator, toml)       # the same data directory, a new daemon
    try:
        assert second.pipeline.run(rev).status == "succeeded"
        second.knowledge.wait_embedded()
        ranks = {h.node["id"]: h.vector_rank for h in second.view().search("signing keys").hits}
        assert ranks[A_ID] > 0
    finally:
        second.close()
