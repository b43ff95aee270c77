"""Writing a file into a git tree without a work tree: the one helper the kernel's git-writer port
(daemon/run/ports.py) and the knowledge plugin's branch commits share (part of the contract: pure pygit2)."""

from __future__ import annotations

import pygit2


def insert_blob(repo: pygit2.Repository, tree: pygit2.Tree | None, parts: list[str], blob_id: pygit2.Oid) -> pygit2.Oid:
    """The id of a tree like `tree` (None: empty) with the blob at the path `parts` added or replaced, making
    the sub-trees on the way; `tree` itself is not changed (git objects are immutable)."""
    builder = repo.TreeBuilder(tree) if tree is not None else repo.TreeBuilder()
    head, rest = parts[0], parts[1:]
    if not rest:
        builder.insert(head, blob_id, pygit2.enums.FileMode.BLOB)
    else:
        sub = None
        if tree is not None and head in tree:
            obj = repo[tree[head].id]
            sub = obj if isinstance(obj, pygit2.Tree) else None
        builder.insert(head, insert_blob(repo, sub, rest, blob_id), pygit2.enums.FileMode.TREE)
    return builder.write()
