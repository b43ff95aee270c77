"""The mount's issuing CA as the engine's modules pass it around (a module of its own: ca.py stores and makes
it, revocation.py and ocsp.py only use it)."""

from __future__ import annotations

from dataclasses import dataclass

from cryptography import x509

from reconcilers.vault.pki import certbuild, keys


@dataclass(frozen=True, slots=True)
class Issuer:
    """The mount's CA: its certificate, key, and the certificates above it (empty for a root)."""

    cert: x509.Certificate
    key: keys.PrivateKey
    chain: tuple[x509.Certificate, ...]

    def chain_pems(self) -> list[str]:
        """The issuing CA and the certificates above it, as Vault's ca_chain lists them."""
        return [certbuild.pem(self.cert), *(certbuild.pem(c) for c in self.chain)]
