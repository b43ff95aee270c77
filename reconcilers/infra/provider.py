"""The provider Protocol: how the infra reconciler reaches one kind of target.

Each resource names its provider (`provider` in infra/*.ncl, `'local` by default); the reconciler hands the
resource to `providers[resource.provider]` to observe, apply and destroy it, so a new provider (libcloud drivers,
issue 12) is a new implementation of this Protocol and an entry in the map the reconciler is built with, not a
change to the reconciler. `local` (reconcilers/infra/local.py) is the first implementation.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Protocol

from reconcilers.infra.model import ObservedResource


class Provider(Protocol):
    """Observe, apply and destroy resources of the kinds a target serves. `ref` is what locates a resource on
    the target (a path under the root for `local`); `spec` is the resource's checked spec from the repo."""

    def observe(self, kind: str, ref: str, cache: dict[str, str] | None = None) -> ObservedResource:
        """What the target has for the resource (read-only). `cache` may be shared within one pass."""
        ...

    def apply(self, rid: str, kind: str, spec: Mapping[str, Any]) -> str:
        """Create or update the resource; a short message for the run record. Raises ApplyError (or the
        contract's TerminalError / TransientError / WaitingError) when the target refuses."""
        ...

    def destroy(self, kind: str, ref: str) -> str:
        """Remove what the resource created; a note when something was kept ("" when all went)."""
        ...
