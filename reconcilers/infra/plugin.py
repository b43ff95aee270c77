"""The infra reconciler as a plugin (entry point `infra` of the group `stratum.reconcilers`)."""

from __future__ import annotations

from reconcilers.plugin import Ahead, Plugin, Verb

PLUGIN = Plugin(name="infra", reconciler="reconcilers.infra.reconciler:InfraReconciler", order=10,
                verbs=(Verb("infra", "reconcilers.infra.cli:infra",
                            "Cloud infrastructure: provider catalogs and importing existing resources."),),
                # templates/ is rendered by a worker process whose start-up (Python, Jinja) a CLI overlaps
                ahead=(Ahead("templates", "reconcilers.infra.templates:worker_command"),))
