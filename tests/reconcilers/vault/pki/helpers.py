"""Helpers for the PKI tests: a mount over a MemoryStore (standing in for the vault's barrier storage, built in
parallel), calls that fail loudly, and `openssl verify` as an independent checker."""

from __future__ import annotations

import datetime as dt
import subprocess
from pathlib import Path
from typing import Any

from cryptography import x509

from reconcilers.vault.pki import api
from reconcilers.vault.pki.storage import MemoryStore


class Mount:
    """One PKI mount: its store and a `call` that asserts the status."""

    def __init__(self, now: dt.datetime | None = None) -> None:
        self.store = MemoryStore()
        self.now = now                      # the clock for calls that give none (None: the real time)

    def call(self, method: str, path: str, body: dict[str, Any] | None = None, *, status: int = 200,
             now: dt.datetime | None = None) -> dict[str, Any]:
        got, reply = api.handle(method, path, body or {}, self.store, now=now or self.now)
        assert got == status, f"{method} {path}: {got} {reply}"
        return reply

    def data(self, method: str, path: str, body: dict[str, Any] | None = None, **kw: Any) -> dict[str, Any]:
        reply = self.call(method, path, body, **kw)
        data: dict[str, Any] = reply["data"]
        return data

    def ca_cert(self) -> x509.Certificate:
        return x509.load_der_x509_certificate(self.call("GET", "ca")["_raw"])

    def crl(self) -> x509.CertificateRevocationList:
        return x509.load_der_x509_crl(self.call("GET", "crl")["_raw"])


def cert(pem: str) -> x509.Certificate:
    """Parse one PEM certificate."""
    return x509.load_pem_x509_certificate(pem.encode())


def openssl_verify(tmp: Path, root_pem: str, leaf_pem: str, untrusted: list[str] = (),  # type: ignore[assignment]
                   crl_pem: str | None = None) -> subprocess.CompletedProcess[str]:
    """Run `openssl verify` on the leaf with the root trusted (and the CRL checked when given)."""
    (tmp / "root.pem").write_text(root_pem + "\n")
    (tmp / "leaf.pem").write_text(leaf_pem + "\n")
    args = ["openssl", "verify", "-CAfile", str(tmp / "root.pem")]
    if untrusted:
        (tmp / "chain.pem").write_text("\n".join(untrusted) + "\n")
        args += ["-untrusted", str(tmp / "chain.pem")]
    if crl_pem is not None:
        (tmp / "crl.pem").write_text(crl_pem + "\n")
        args += ["-crl_check", "-CRLfile", str(tmp / "crl.pem")]
    return subprocess.run([*args, str(tmp / "leaf.pem")], capture_output=True, text=True, timeout=60)
