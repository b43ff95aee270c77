"""The reconciler registry: which reconcilers a daemon runs, in a fixed order."""

from __future__ import annotations

import importlib
from collections.abc import Callable

from reconcilers.base import AnyReconciler, ReconcilerEnv

# name -> "module:Class"; each class takes a ReconcilerEnv. Imported lazily so one broken optional
# dependency (an embedding model, a crypto backend) disables its reconciler, not the daemon.
REGISTRY: dict[str, str] = {
    "infra": "reconcilers.infra.reconciler:InfraReconciler",
    "vault": "reconcilers.vault.reconciler:VaultReconciler",
    "knowledge": "reconcilers.knowledge.reconciler:KnowledgeReconciler",
}


def factory(name: str) -> Callable[[ReconcilerEnv], AnyReconciler]:
    """The constructor of a registered reconciler."""
    module, _, cls = REGISTRY[name].partition(":")
    ctor: Callable[[ReconcilerEnv], AnyReconciler] = getattr(importlib.import_module(module), cls)
    return ctor
