"""The vault reconciler as a plugin, with the `stratum secret`, `stratum vault` and `stratum audit` verbs
(entry point `vault`)."""

from __future__ import annotations

from reconcilers.plugin import Plugin, Verb

PLUGIN = Plugin(
    name="vault",
    reconciler="reconcilers.vault.reconciler:VaultReconciler",
    verbs=(Verb("secret", "reconcilers.vault.secret_cli:secret",
                "Encrypted secret manifests: keys, encrypt/decrypt/edit, git drivers, checks."),
           Verb("vault", "reconcilers.vault.cli:vault",
                "The vault service: init, unseal, seal, status (a Vault-compatible API on the daemon)."),
           Verb("audit", "reconcilers.vault.cli:audit", "The vault's audit log: verify its hash chain.")),
    order=20,
)
