"""The infra reconciler as a plugin (entry point `infra` of the group `stratum.reconcilers`)."""

from __future__ import annotations

from reconcilers.plugin import Plugin, Verb

PLUGIN = Plugin(name="infra", reconciler="reconcilers.infra.reconciler:InfraReconciler", order=10,
                verbs=(Verb("infra", "reconcilers.infra.cli:infra",
                            "Cloud infrastructure: provider catalogs and importing existing resources."),))
