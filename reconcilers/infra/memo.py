"""Values derived from frozen resources, kept by object identity from one run to the next.

A revision that changes one file of 20,000 reuses the other files' `Resource` objects (the load cache keys a
file's resources by its Nickel result). Anything computed from a resource alone (its policy view, its inventory
entry) is therefore the same for the same object: computing it again for 20,000 resources on every commit cost
a one-file run a third of a second. Sound because a `Resource` is frozen (its fields never change) and the memo
keeps the object itself beside the value, so a recycled `id()` is never mistaken for it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Generic, TypeVar

from reconcilers.infra.model import Resource

T = TypeVar("T")
LIMIT = 200_000          # entries before the memo starts over (10x the host's default file cap)


class PerResource(Generic[T]):
    """`make(r)` for each resource object, made once while the object lives in the memo."""

    def __init__(self, make: Callable[[Resource], T], limit: int = LIMIT) -> None:
        self._make = make
        self._limit = limit
        self._known: dict[int, tuple[Resource, T]] = {}

    def __call__(self, r: Resource) -> T:
        hit = self._known.get(id(r))
        if hit is None or hit[0] is not r:
            if len(self._known) >= self._limit:
                self._known.clear()
            hit = (r, self._make(r))
            self._known[id(r)] = hit
        return hit[1]

    def __len__(self) -> int:
        return len(self._known)
