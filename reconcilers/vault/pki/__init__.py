"""The vault's PKI secrets engine: CAs (root and intermediate), roles, issue and sign, revocation with a CRL that
stays fast at tens of thousands of entries, and an OCSP responder. Key types rsa, ec, ed25519 and ml-dsa-65.

The engine is mounted by the vault service (`reconcilers/vault/service/`): it routes a request under the mount to
`reconcilers.vault.pki.api.handle(method, path, body, store)`, after authorization and audit.
"""
