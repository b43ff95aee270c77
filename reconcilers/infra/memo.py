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
    """`make(r)` for each resource object, made once while the object is in use. Entries live in generations:
    `rotate` (once per load) starts a new one, and what no lookup touched during a whole generation is dropped,
    so resources of old revisions are not kept alive by the memo."""

    def __init__(self, make: Callable[[Resource], T], limit: int = LIMIT) -> None:
        self._make = make
        self._limit = limit
        self._known: dict[int, tuple[Resource, T]] = {}
        self._old: dict[int, tuple[Resource, T]] = {}

    def __call__(self, r: Resource) -> T:
        key = id(r)
        hit = self._known.get(key)
        if hit is None or hit[0] is not r:
            hit = self._old.get(key)
            if hit is None or hit[0] is not r:
                hit = (r, self._make(r))
            if len(self._known) >= self._limit:
                self._known.clear()
            self._known[key] = hit
        return hit[1]

    def rotate(self) -> None:
        """Start a new generation: entries not used since the last rotation are dropped."""
        self._old, self._known = self._known, {}

    def __len__(self) -> int:
        """How many objects the memo holds."""
        return len(self._known.keys() | self._old.keys())
