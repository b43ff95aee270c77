"""The vault reconciler as a plugin, with the `stratum secret` verbs (entry point `vault`)."""

from __future__ import annotations

from reconcilers.plugin import Plugin, Verb

PLUGIN = Plugin(
    name="vault",
    reconciler="reconcilers.vault.reconciler:VaultReconciler",
    verbs=(Verb("secret", "daemon.cli.secret:secret",
                "Encrypted secret manifests: keys, encrypt/decrypt/edit, git drivers, checks."),),
    order=20,
)
