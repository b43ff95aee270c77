"""Three-way merge of decrypted value trees, for the git merge driver.

Mappings merge key by key; anything else (strings, numbers, lists) is a leaf. A key changed on one side takes
that side; changed the same way on both takes either; changed differently on both is a conflict. A conflicted
leaf becomes a string holding both sides between conflict markers: it is encrypted like any value (plaintext
never reaches the work tree), and `stratum secret edit` shows it for resolution.
"""

from __future__ import annotations

from typing import Any

from reconcilers.vault.manifest import KeyPath

_MISSING: Any = object()


def _marker(ours: Any, theirs: Any) -> str:
    def show(v: Any) -> str:
        return "(deleted)" if v is _MISSING else repr(v)

    return f"<<<<<<< ours\n{show(ours)}\n=======\n{show(theirs)}\n>>>>>>> theirs"


def merge3(base: Any, ours: Any, theirs: Any, path: KeyPath = ()) -> tuple[Any, list[KeyPath]]:
    """(merged tree, conflicting key paths). `_MISSING` stands for an absent key."""
    if _same(ours, theirs):
        return ours, []
    if _same(base, ours):
        return theirs, []
    if _same(base, theirs):
        return ours, []
    if isinstance(ours, dict) and isinstance(theirs, dict):
        base_d = base if isinstance(base, dict) else {}
        merged: dict[str, Any] = {}
        conflicts: list[KeyPath] = []
        keys = list(ours) + [k for k in theirs if k not in ours]
        for k in keys:
            value, sub = merge3(base_d.get(k, _MISSING), ours.get(k, _MISSING), theirs.get(k, _MISSING), (*path, k))
            conflicts += sub
            if value is not _MISSING:
                merged[k] = value
        return merged, conflicts
    return _marker(ours, theirs), [path]


def _same(a: Any, b: Any) -> bool:
    # type-exact: 1, 1.0 and True are different secrets
    if a is _MISSING or b is _MISSING:
        return a is b
    return type(a) is type(b) and a == b and (not isinstance(a, (dict, list)) or _deep_same(a, b))


def _deep_same(a: Any, b: Any) -> bool:
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, list):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b, strict=True))
    return True


def merge_trees(
    base: dict[str, Any], ours: dict[str, Any], theirs: dict[str, Any]
) -> tuple[dict[str, Any], list[KeyPath]]:
    """Merge three top-level value mappings."""
    merged, conflicts = merge3(base, ours, theirs)
    return (merged if isinstance(merged, dict) else {}), conflicts
