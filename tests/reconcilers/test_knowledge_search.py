"""Search quality with the real shipped embedding model: paraphrases that share no word with the node they
mean find it, with a score a user can read, and nodes that match neither way are not results."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from daemon.run.workspace import open_workspace
from reconcilers.knowledge.knowledge_base import KnowledgeBase
from reconcilers.knowledge.search import MIN_SIMILARITY
from reconcilers.knowledge.text import terms
from tests.fixtures import WorkRepo

pytestmark = pytest.mark.slow

NODES = {
    "disk": ("Disk full on the database host",
             "The disk is full and writes fail with ENOSPC. Delete old logs, then grow the volume."),
    "tls": ("TLS certificate expired",
            "Clients reject the handshake because the certificate expired. Renew it with certbot."),
    "oom": ("Out of memory killer terminated the worker",
            "The kernel OOM killer ended the process. Lower the batch size or raise the memory limit."),
    "budget": ("Quarterly marketing budget", "Plan campaign spend per region and review agency invoices."),
    "lunch": ("Team lunch rota", "Who orders pizza on Fridays, and which salads the vegetarians like."),
}
IDS = {key: f"{i:08d}-0000-4000-8000-000000000000" for i, key in enumerate(NODES, 1)}
# (query, the node it means): no query term occurs in that node (checked below).
PARAPHRASES = [
    ("storage capacity exhausted", "disk"),
    ("https cert outdated, browsers complain", "tls"),
    ("RAM exhaustion crash", "oom"),
]


@pytest.fixture(scope="module")
def kb(tmp_path_factory: pytest.TempPathFactory) -> Iterator[KnowledgeBase]:
    tmp = tmp_path_factory.mktemp("search")
    repo = WorkRepo(tmp / "ops")
    repo.commit({f"knowledge/notes/{key}.md": f"---\nid: {IDS[key]}\ntype: note\ntitle: {json.dumps(title)}\n"
                 f"created: 2024-05-01\n---\n# {title}\n\n{body}\n" for key, (title, body) in NODES.items()}, "kb")
    base = KnowledgeBase(open_workspace(str(repo.path), Path(tmp / "data")))
    yield base
    base.close()


@pytest.mark.parametrize(("query", "meant"), PARAPHRASES)
def test_a_paraphrase_sharing_no_word_finds_its_node_first_with_a_readable_score(
        kb: KnowledgeBase, query: str, meant: str) -> None:
    """The node meant is first; its score is its cosine similarity (well above the rest, not RRF's ~0.016);
    the unrelated budget and lunch notes are not results at all."""
    title, body = NODES[meant]
    assert not set(terms(query)) & set(terms(f"{title} {body}")), "the query must share no word with the node"
    result = kb.search(query)
    assert result.mode == "hybrid", result.warning
    hits = result.hits
    assert hits and hits[0].node["id"] == IDS[meant], [(h.node["title"], h.score) for h in hits]
    top = hits[0]
    assert top.lexical_rank == 0 and top.score == pytest.approx(top.similarity) and top.score >= MIN_SIMILARITY
    assert all(h.score < top.score for h in hits[1:])
    assert not {IDS["budget"], IDS["lunch"]} & {h.node["id"] for h in hits}


def test_a_query_matching_nothing_either_way_returns_nothing(kb: KnowledgeBase) -> None:
    """No shared word and no similar meaning: no results (every node used to come back, scores 0.0147-0.0164)."""
    assert kb.search("zebra giraffe savanna migration").hits == ()


def test_a_keyword_match_scores_its_share_of_the_query_words(kb: KnowledgeBase) -> None:
    """A node holding every word of the query scores 1.0 whatever its similarity."""
    hits = kb.search("certbot handshake").hits
    assert hits[0].node["id"] == IDS["tls"] and hits[0].coverage == 1.0 and hits[0].score == 1.0
