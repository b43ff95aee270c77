"""The knowledge tables in the DuckDB index (component "knowledge"), content-addressed by blob id.

A node's parsed form, terms, edges and chunks are keyed by its blob id, so a blob is parsed and embedded once
whatever revisions contain it. `kb_tree` maps a revision to its (path, blob) pairs; execution nodes, which no
commit contains, live under the pseudo-revision `*`. Links are stored as written and resolved when read, so a
link to a node committed later resolves without touching the linking node.

Bulk writes go through DuckDB's scan of dicts of NumPy arrays: `executemany` over Python lists costs seconds
for 10,000 vectors (PLATFORM.md). Writes join the caller's `transaction()` when there is one (indexing a
revision is one commit); alone, each write method is its own.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any

from reconcilers.knowledge.node import Link, Node
from reconcilers.knowledge.text import chunk_hash, chunks, node_terms

if TYPE_CHECKING:
    import numpy as np
    import numpy.typing as npt

    from reconcilers.ports import Tables

DIM = 384
EXTRA = "*"                                   # the pseudo-revision of execution nodes
KEEP_REVISIONS = 20
PRUNE_SLACK = 10                              # revisions past KEEP_REVISIONS before old ones are swept, together

MIGRATIONS: tuple[str, ...] = (
    f"""
    CREATE TABLE kb_node (
        blob_id TEXT PRIMARY KEY, node_id TEXT, type TEXT, title TEXT, status TEXT, project TEXT, tags TEXT[],
        created TEXT, modified TEXT, front TEXT, body TEXT, body_line INTEGER, links TEXT, key_lines TEXT,
        doc_len INTEGER);
    CREATE TABLE kb_tree (revision TEXT, path TEXT, blob_id TEXT);
    CREATE TABLE kb_edge (blob_id TEXT, rel TEXT, target TEXT, line INTEGER, origin TEXT);
    CREATE TABLE kb_term (blob_id TEXT, term TEXT, tf INTEGER);
    CREATE TABLE kb_chunk (blob_id TEXT, seq INTEGER, hash TEXT, text TEXT);
    CREATE TABLE kb_vec (hash TEXT, model TEXT, vec FLOAT[{DIM}], PRIMARY KEY (hash, model));
    CREATE TABLE kb_revision (revision TEXT PRIMARY KEY, indexed_at DOUBLE, nodes INTEGER, problems TEXT);
    """,
    # 2: postings are looked up by term on every query; an ART index turns the scan into point lookups.
    "CREATE INDEX kb_term_term ON kb_term (term)",
)


SMALL_WRITE = 2000        # rows up to which a write goes through unnest(?) of Python lists rather than NumPy


def _unnested(columns: dict[str, list[Any]]) -> tuple[str, list[Any]]:
    """A FROM source zipping equally long Python lists (one parameter per column), and its parameters."""
    return "(SELECT " + ", ".join(f"unnest(?) AS {k}" for k in columns) + ")", list(columns.values())


def _arr(values: Sequence[Any], dtype: Any = object) -> npt.NDArray[Any]:
    # NumPy is imported where it is used: a revision without new knowledge (most infra commits, a CLI apply
    # of infra files) never pays its import (~0.1-0.2 s).
    import numpy as np

    return np.array(list(values), dtype=dtype)


class Store:
    """Reads and writes the knowledge tables of one Index."""

    def __init__(self, index: Tables) -> None:
        self.index = index
        index.migrate("knowledge", MIGRATIONS)

    # -- writes ------------------------------------------------------------------------------------
    def known_blobs(self, blob_ids: Iterable[str]) -> set[str]:
        """The blob ids among `blob_ids` whose nodes are stored already."""
        wanted = list(set(blob_ids))
        if not wanted:
            return set()
        rows = self.index.query("SELECT blob_id FROM kb_node WHERE blob_id IN (SELECT unnest(?))", [wanted])
        return {str(r[0]) for r in rows}

    def add_nodes(self, nodes: Sequence[Node], known: set[str] | None = None) -> int:
        """Store new nodes (parsed form, edges, terms, chunks); nodes whose blob is stored are skipped.
        `known`: the blob ids among `nodes` already stored, when the caller asked already."""
        fresh: dict[str, Node] = {}
        if known is None:
            known = self.known_blobs(n.blob_id for n in nodes)
        for n in nodes:
            if n.blob_id not in known:
                fresh.setdefault(n.blob_id, n)
        if not fresh:
            return 0
        items = list(fresh.values())
        term_rows: list[tuple[str, str, int]] = []
        doc_len: dict[str, int] = {}
        for n in items:
            counts = node_terms(n)
            doc_len[n.blob_id] = sum(counts.values())
            term_rows.extend((n.blob_id, t, c) for t, c in counts.items())
        edge_rows = [(n.blob_id, ln.rel, ln.target, ln.line, ln.origin) for n in items for ln in n.links]
        chunk_rows = [(n.blob_id, i, chunk_hash(c), c) for n in items for i, c in enumerate(chunks(n))]
        node_cols: dict[str, list[Any]] = {
            "blob_id": [n.blob_id for n in items], "node_id": [n.id for n in items],
            "type": [n.type for n in items], "title": [n.title for n in items],
            "status": [n.status for n in items], "project": [n.project for n in items],
            "tags": [json.dumps(list(n.tags)) for n in items], "created": [n.created for n in items],
            "modified": [n.modified for n in items], "front": [n.front for n in items],
            "body": [n.body for n in items], "body_line": [n.body_line for n in items],
            "links": [json.dumps([[ln.rel, ln.target, ln.line, ln.label, ln.origin] for ln in n.links])
                      for n in items],
            "key_lines": [json.dumps(n.key_lines) for n in items],
            "doc_len": [doc_len[n.blob_id] for n in items]}
        tables: dict[str, tuple[tuple[str, ...], Sequence[tuple[Any, ...]]]] = {
            "kb_term": (("b", "t", "f"), term_rows), "kb_edge": (("b", "r", "t", "l", "o"), edge_rows),
            "kb_chunk": (("b", "s", "h", "x"), chunk_rows)}
        node_select = ("SELECT blob_id, node_id, type, title, status, project, "
                       "CAST(json_transform(tags, '[\"VARCHAR\"]') AS TEXT[]), created, modified, front, body, "
                       "body_line, links, key_lines, doc_len FROM ")
        with self.index.transaction() as con:
            if len(items) + len(term_rows) + len(chunk_rows) <= SMALL_WRITE:
                # One execution node or a file or two: Python lists through unnest, no NumPy to import.
                source, params = _unnested(node_cols)
                con.execute(f"INSERT INTO kb_node {node_select}{source}", params)
                for table, (names, rows) in tables.items():
                    if rows:
                        source, params = _unnested({k: [r[i] for r in rows] for i, k in enumerate(names)})
                        con.execute(f"INSERT INTO {table} SELECT {', '.join(names)} FROM {source}", params)
                return len(items)
            import numpy as np

            ints = {"body_line", "doc_len", "f", "l", "s"}
            # The *_d dicts are read by DuckDB's replacement scan (the SQL names them), not by Python.
            nodes_d = {k: _arr(v, np.int32 if k in ints else object) for k, v in node_cols.items()}  # noqa: F841
            con.execute(f"INSERT INTO kb_node {node_select}nodes_d")
            names, rows = tables["kb_term"]
            if rows:
                terms_d = {k: _arr([r[i] for r in rows], np.int32 if k in ints else object)  # noqa: F841
                           for i, k in enumerate(names)}
                con.execute("INSERT INTO kb_term SELECT b, t, f FROM terms_d")
            names, rows = tables["kb_edge"]
            if rows:
                edges_d = {k: _arr([r[i] for r in rows], np.int32 if k in ints else object)  # noqa: F841
                           for i, k in enumerate(names)}
                con.execute("INSERT INTO kb_edge SELECT b, r, t, l, o FROM edges_d")
            names, rows = tables["kb_chunk"]
            if rows:
                chunks_d = {k: _arr([r[i] for r in rows], np.int32 if k in ints else object)  # noqa: F841
                            for i, k in enumerate(names)}
                con.execute("INSERT INTO kb_chunk SELECT b, s, h, x FROM chunks_d")
        return len(items)

    def chunks_without_vectors(self, blob_ids: Sequence[str], model: str) -> list[tuple[str, str]]:
        """(hash, text) of the chunks of `blob_ids` that have no vector for `model` yet, one per hash."""
        if not blob_ids:
            return []
        rows = self.index.query(
            "SELECT c.hash, any_value(c.text) FROM kb_chunk c WHERE c.blob_id IN (SELECT unnest(?)) "
            "AND NOT EXISTS (SELECT 1 FROM kb_vec v WHERE v.hash = c.hash AND v.model = ?) GROUP BY c.hash",
            [list(set(blob_ids)), model])
        return [(str(r[0]), str(r[1])) for r in rows]

    def pending_extras(self, model: str) -> list[tuple[str, str]]:
        """(hash, text) of execution-node chunks without a vector for `model` (embedded when the model runs)."""
        rows = self.index.query(
            "SELECT c.hash, any_value(c.text) FROM kb_tree t JOIN kb_chunk c USING (blob_id) WHERE t.revision = ? "
            "AND NOT EXISTS (SELECT 1 FROM kb_vec v WHERE v.hash = c.hash AND v.model = ?) GROUP BY c.hash",
            [EXTRA, model])
        return [(str(r[0]), str(r[1])) for r in rows]

    def vector_hashes(self, hashes: Iterable[str], model: str) -> set[str]:
        """The chunk hashes among `hashes` that have a vector for `model`."""
        wanted = list(set(hashes))
        if not wanted:
            return set()
        rows = self.index.query("SELECT hash FROM kb_vec WHERE model = ? AND hash IN (SELECT unnest(?))",
                                [model, wanted])
        return {str(r[0]) for r in rows}

    def add_vectors(self, model: str, hashes: Sequence[str], matrix: npt.NDArray[np.float32]) -> None:
        """Store one vector per chunk hash (rows of `matrix`, DIM wide)."""
        if not hashes:
            return
        import numpy as np

        n = len(hashes)
        if n <= 8:
            # A revision that changed a file or two: plain parameters beat the bulk scan's GROUP BY (~20 ms).
            with self.index.transaction() as con:
                for h, row in zip(hashes, np.asarray(matrix, dtype=np.float32).tolist(), strict=True):
                    con.execute(f"INSERT OR IGNORE INTO kb_vec VALUES (?, ?, ?::FLOAT[{DIM}])",
                                [h, model, row])
            return
        # flat_d is read by DuckDB's replacement scan (the SQL names it), not by Python.
        flat_d = {"r": np.repeat(np.arange(n, dtype=np.int32), DIM), "i": np.arange(n * DIM, dtype=np.int64),  # noqa: F841
                  "x": np.ascontiguousarray(matrix, dtype=np.float32).reshape(-1)}
        # names_d is read by DuckDB's replacement scan (the SQL names it), not by Python.
        names_d = {"r": np.arange(n, dtype=np.int32), "h": _arr(hashes)}  # noqa: F841
        # The dicts are found by DuckDB's replacement scan in this frame's locals: execute here, not via Index.
        with self.index.transaction() as con:
            con.execute(
                f"INSERT OR IGNORE INTO kb_vec SELECT n.h, ?, f.v::FLOAT[{DIM}] FROM "
                "(SELECT r, list(x ORDER BY i) v FROM flat_d GROUP BY r) f JOIN names_d n USING (r)", [model])

    def set_tree(self, revision: str, entries: Sequence[tuple[str, str]], problems: int = 0) -> None:
        """Record the (path, blob id) pairs of a revision's indexed nodes; prune revisions beyond the last N."""
        with self.index.transaction() as con:
            con.execute("DELETE FROM kb_tree WHERE revision = ?", [revision])
            if 0 < len(entries) <= SMALL_WRITE:
                source, params = _unnested({"p": [e[0] for e in entries], "b": [e[1] for e in entries]})
                con.execute(f"INSERT INTO kb_tree SELECT ?, p, b FROM {source}", [revision, *params])
            elif entries:
                # tree_d is read by DuckDB's replacement scan (the SQL names it), not by Python.
                tree_d = {"p": _arr([e[0] for e in entries]), "b": _arr([e[1] for e in entries])}  # noqa: F841
                con.execute("INSERT INTO kb_tree SELECT ?, p, b FROM tree_d", [revision])
            con.execute("INSERT OR REPLACE INTO kb_revision VALUES (?, ?, ?, ?)",
                        [revision, time.time(), len(entries), str(problems)])
            self._prune()

    def set_tree_from(self, revision: str, base: str, removed: Sequence[str], added: Sequence[tuple[str, str]],
                      problems: int = 0) -> int:
        """Record a revision's tree as `base`'s without the paths `removed`, plus the (path, blob id) pairs
        `added`: copied inside DuckDB, where writing all 10,000 rows from Python cost ~20 ms. Returns the
        number of rows recorded (the caller checks it: a base missing from the store copies nothing)."""
        gone = [*removed, *(a[0] for a in added)]
        small = len(gone) <= SMALL_WRITE          # a commit changing a few nodes: no NumPy to import
        # gone_d and tree_d are read by DuckDB's replacement scan (the SQL names them), not by Python.
        gone_d = None if small else {"p": _arr(gone)}  # noqa: F841
        tree_d = None if small else {"p": _arr([a[0] for a in added]), "b": _arr([a[1] for a in added])}  # noqa: F841
        with self.index.transaction() as con:
            con.execute("DELETE FROM kb_tree WHERE revision = ?", [revision])
            con.execute("INSERT INTO kb_tree SELECT ?, path, blob_id FROM kb_tree WHERE revision = ? AND path NOT IN "
                        + ("(SELECT unnest(?::TEXT[]))" if small else "(SELECT p FROM gone_d)"),
                        [revision, base, gone] if small else [revision, base])
            if added and small:
                source, params = _unnested({"p": [a[0] for a in added], "b": [a[1] for a in added]})
                con.execute(f"INSERT INTO kb_tree SELECT ?, p, b FROM {source}", [revision, *params])
            elif added:
                con.execute("INSERT INTO kb_tree SELECT ?, p, b FROM tree_d", [revision])
            row = con.execute("SELECT count(*) FROM kb_tree WHERE revision = ?", [revision]).fetchone()
            count = int(row[0]) if row else 0
            con.execute("INSERT OR REPLACE INTO kb_revision VALUES (?, ?, ?, ?)",
                        [revision, time.time(), count, str(problems)])
            self._prune()
        return count

    def _prune(self) -> bool:
        """Keep the last KEEP_REVISIONS revisions. Sweeping touches every table, so it waits until PRUNE_SLACK
        more have piled up and removes them together; only blobs no kept revision holds are deleted.
        True when it swept."""
        row = self.index.query("SELECT count(*) FROM kb_revision")
        if not row or int(row[0][0]) <= KEEP_REVISIONS + PRUNE_SLACK:
            return False
        gone = [str(r[0]) for r in self.index.query(
            "SELECT revision FROM kb_revision ORDER BY indexed_at DESC OFFSET ?", [KEEP_REVISIONS])]
        with self.index.transaction() as con:
            orphans = [str(r[0]) for r in con.execute(
                "SELECT blob_id FROM kb_tree WHERE revision IN (SELECT unnest($1)) EXCEPT "
                "SELECT blob_id FROM kb_tree WHERE revision NOT IN (SELECT unnest($1))", [gone]).fetchall()]
            con.execute("DELETE FROM kb_tree WHERE revision IN (SELECT unnest(?))", [gone])
            con.execute("DELETE FROM kb_revision WHERE revision IN (SELECT unnest(?))", [gone])
            if orphans:
                # Vectors first: a chunk text shared with a kept node keeps its vector.
                con.execute("DELETE FROM kb_vec WHERE hash IN (SELECT hash FROM kb_chunk WHERE blob_id IN "
                            "(SELECT unnest($1))) AND hash NOT IN (SELECT hash FROM kb_chunk WHERE blob_id NOT IN "
                            "(SELECT unnest($1)))", [orphans])
                for table in ("kb_node", "kb_edge", "kb_term", "kb_chunk"):
                    con.execute(f"DELETE FROM {table} WHERE blob_id IN (SELECT unnest(?))", [orphans])
        return True

    def add_extra(self, node: Node) -> None:
        """Store a node no commit contains (an execution node) so every revision sees it."""
        with self.index.transaction():
            self.add_nodes([node])
            self.index.execute("DELETE FROM kb_tree WHERE revision = ? AND path = ?", [EXTRA, node.path])
            self.index.execute("INSERT INTO kb_tree VALUES (?, ?, ?)", [EXTRA, node.path, node.blob_id])

    # -- reads -------------------------------------------------------------------------------------
    def revisions(self) -> list[str]:
        """Indexed revisions, newest first."""
        return [str(r[0]) for r in self.index.query("SELECT revision FROM kb_revision ORDER BY indexed_at DESC")]

    def nodes(self, revision: str) -> list[Node]:
        """The nodes of a revision (execution nodes included)."""
        rows = self.index.query(
            "SELECT t.path, n.blob_id, n.node_id, n.type, n.title, n.status, n.project, n.tags, n.created, "
            "n.modified, n.front, n.body, n.body_line, n.links, n.key_lines FROM kb_tree t "
            "JOIN kb_node n USING (blob_id) WHERE t.revision IN (?, ?) ORDER BY t.path", [revision, EXTRA])
        return [row_to_node(r) for r in rows]


def row_to_node(r: Sequence[Any]) -> Node:
    """Rebuild a Node from a `Store.nodes` row."""
    links = tuple(Link(rel, target, int(line), label, origin)
                  for rel, target, line, label, origin in json.loads(r[13]))
    key_lines = tuple((str(k), int(v)) for k, v in json.loads(r[14]))
    return Node(path=str(r[0]), blob_id=str(r[1]), id=str(r[2]), type=str(r[3]), title=str(r[4]),
                status=str(r[5]), project=str(r[6]), tags=tuple(r[7] or ()), created=str(r[8]),
                modified=str(r[9]), front=str(r[10]), body=str(r[11]), body_line=int(r[12]), links=links,
                key_lines=key_lines)
