"""The knowledge reconciler as a plugin, with the `stratum kb` verbs (entry point `knowledge`); its MCP
server is mounted on the daemon's listener through the reconciler's `http_mounts()`."""

from __future__ import annotations

from reconcilers.plugin import Plugin, Verb

PLUGIN = Plugin(
    name="knowledge",
    reconciler="reconcilers.knowledge.reconciler:KnowledgeReconciler",
    verbs=(Verb("kb", "reconcilers.knowledge.cli:kb",
                "Operational knowledge: runbooks, ADRs, postmortems and guidelines in knowledge/**/*.md."),),
    order=30,
)
