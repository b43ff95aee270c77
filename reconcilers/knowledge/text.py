"""Text processing shared by indexing and querying: BM25 terms and embedding chunks (pure functions)."""

from __future__ import annotations

import hashlib
import re
from collections import Counter

from reconcilers.knowledge.node import Node

TITLE_WEIGHT = 3                              # a title word counts like three body words
CHUNK_CHARS = 700                             # ~180 tokens: under the model's 256-token window
EXECUTION_ACTION_LINES = 20                   # action lines of an execution node that are embedded
_WORD = re.compile(r"[a-z0-9]+")
# Resource ids and error codes ("app-config", "ERR_CONN_RESET", "vault:db/creds") are searched whole too.
_COMPOUND = re.compile(r"[a-z0-9]+(?:[-_.:/][a-z0-9]+)+")
STOPWORDS = frozenset(
    "a an and are as at be but by can could did do does for from has have how i if in into is it its may me my "  # noqa: SIM905 - a readable word list
    "of on or our should so that the their then there these this to was we were what when where which who why "
    "will with would you your".split(" "))


def _stem(word: str) -> str:
    # Deliberately tiny: plural "s" only. A real stemmer would merge ops terms it should not ("ssl" -> "ss").
    if len(word) > 4 and word.endswith("s") and not word.endswith("ss"):
        return word[:-1]
    return word


def terms(text: str) -> list[str]:
    """The BM25 terms of a text: lower-cased words without stop words, plus compound identifiers whole."""
    low = text.lower()
    out = [_stem(w) for w in _WORD.findall(low) if w not in STOPWORDS]
    out.extend(_COMPOUND.findall(low))
    return out


def node_terms(node: Node) -> Counter[str]:
    """Term frequencies of a node: title (weighted), tags, and body."""
    counts: Counter[str] = Counter()
    for term in terms(node.title):
        counts[term] += TITLE_WEIGHT
    counts.update(terms(" ".join(node.tags)))
    counts.update(terms(node.body))
    for key in ("context", "decision", "consequences", "problem", "solution"):
        value = node.field(key)
        if isinstance(value, str):
            counts.update(terms(value))
    return counts


def chunks(node: Node) -> list[str]:
    """The texts embedded for a node: paragraphs packed up to CHUNK_CHARS, the title leading the first.

    An execution node is one chunk: its summary and first action lines. Its full action table (1,000 rows
    of a large run: ~60 chunks and ~10 s of embedding) stays in its body and terms, searchable by words.
    """
    if node.type == "execution":
        return [execution_digest(node)]
    paragraphs = [p.strip() for p in re.split(r"\n\s*\n", node.body) if p.strip()]
    head = node.title
    for key in ("context", "decision", "problem"):
        value = node.field(key)
        if isinstance(value, str) and value.strip():
            head += ". " + value.strip()
    out: list[str] = []
    current = head
    for para in paragraphs:
        for piece in _split_long(para):
            if len(current) + len(piece) + 2 > CHUNK_CHARS and current:
                out.append(current)
                current = piece
            else:
                current = f"{current}\n\n{piece}" if current else piece
    if current:
        out.append(current)
    return out


def execution_digest(node: Node) -> str:
    """An execution node's embedded text: title, summary lines, then the first EXECUTION_ACTION_LINES actions."""
    summary: list[str] = []
    actions: list[str] = []
    for line in node.body.splitlines():
        text = line.strip()
        if not text or text.startswith("#") or text.startswith("| ---") or text == "| action | kind | status |":
            continue
        if text.startswith("|"):
            if len(actions) < EXECUTION_ACTION_LINES:
                actions.append(" ".join(cell.strip() for cell in text.strip("|").split("|") if cell.strip()))
        else:
            summary.append(text)
    return "\n".join([node.title, *summary, *actions])[:CHUNK_CHARS]


def _split_long(para: str) -> list[str]:
    if len(para) <= CHUNK_CHARS:
        return [para]
    return [para[i:i + CHUNK_CHARS] for i in range(0, len(para), CHUNK_CHARS)]


def chunk_hash(text: str) -> str:
    """The content address of a chunk (vectors are stored once per distinct text and model)."""
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:32]
