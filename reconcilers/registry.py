"""The reconciler registry: which reconcilers a daemon runs, in a fixed order, found through the entry point
group `stratum.reconcilers` (reconcilers/plugin.py); Stratum's own are declared in pyproject.toml."""

from __future__ import annotations

from collections.abc import Callable

from reconcilers.base import AnyReconciler, ReconcilerEnv
from reconcilers.errors import SettingsError
from reconcilers.plugin import Broken, discover, load_target

_PLUGINS, BROKEN = discover()
if not _PLUGINS:
    # Entry points live in the installed metadata: a checkout installed before they were declared has none.
    raise SettingsError("no reconciler is installed (entry point group stratum.reconcilers is empty)",
                        where="stratumops installation",
                        hint="reinstall Stratum (pip install -e . in a checkout) so its entry points are recorded")

# name -> "module:Class"; each class takes a ReconcilerEnv. Imported lazily so one broken optional
# dependency (an embedding model, a crypto backend) disables its reconciler, not the daemon.
REGISTRY: dict[str, str] = {p.name: p.reconciler for p in _PLUGINS}
# Plugins whose entry point could not be loaded: reported as unavailable reconcilers.
BROKEN_PLUGINS: dict[str, str] = {b.name: f"plugin {b.value} cannot be loaded: {b.reason}" for b in BROKEN}


def factory(name: str) -> Callable[[ReconcilerEnv], AnyReconciler]:
    """The constructor of a registered reconciler."""
    ctor: Callable[[ReconcilerEnv], AnyReconciler] = load_target(REGISTRY[name])
    return ctor


__all__ = ["BROKEN_PLUGINS", "REGISTRY", "Broken", "factory"]
