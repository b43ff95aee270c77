"""Values derived from frozen resources are made once per object, and the memo lets go of resources no
longer in use (reconcilers/infra/memo.py)."""

from __future__ import annotations

from reconcilers.infra.memo import PerResource
from reconcilers.infra.model import Resource


def _res(i: int) -> Resource:
    return Resource(id=f"r{i}", kind="file", provider="local", spec=f'{{"path":"f{i}","content":"x"}}')


def test_made_once_per_object_and_dropped_after_a_generation_unused() -> None:
    """The same object gets the same value without a second `make`; an equal but distinct object gets its own;
    an object not looked up for a whole generation is no longer held by the memo."""
    made: list[str] = []
    memo = PerResource(lambda r: made.append(r.id) or r.path)
    a, b = _res(1), _res(2)
    assert memo(a) == memo(a) == "f1" and made == ["r1"]
    assert memo(_res(1)) == "f1" and made == ["r1", "r1"]
    memo(b)
    memo.rotate()
    memo(a)                                   # a is used in this generation, b is not
    memo.rotate()
    assert memo(a) == "f1" and made.count("r1") == 2
    assert len(memo) == 1                     # only a is held: b (and the equal copy of a) were let go
