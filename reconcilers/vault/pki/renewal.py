"""Certificates the daemon's own resources use (an etcd member, a kubelet): issue one as the files a resource
needs, and tell when it is due for renewal (a fraction of its lifetime, like cert-manager's renewBefore).

The vault service's secrets port calls `issue_files` at apply time and writes the key with mode 0600; its
scheduler calls `needs_renewal` and re-applies the resources whose certificate is due. Nothing here writes a
file or holds a key beyond the returned value.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

from cryptography import x509

from reconcilers.vault.pki import issue
from reconcilers.vault.pki.errors import PkiError
from reconcilers.vault.pki.storage import KeyValueStore

DEFAULT_FRACTION = 2 / 3          # renew once two thirds of the lifetime have passed


@dataclass(frozen=True, slots=True)
class IssuedFiles:
    """A certificate as files: the leaf, its private key (0600 when written), and the chain above it."""

    certificate: str
    private_key: str
    ca_chain: str
    serial_number: str
    not_after: dt.datetime
    renew_at: dt.datetime


def renew_at(cert: x509.Certificate, fraction: float = DEFAULT_FRACTION) -> dt.datetime:
    """When `cert` is due: not_before + fraction of its lifetime (fraction in (0, 1])."""
    if not 0 < fraction <= 1:
        raise PkiError(f"renewal fraction {fraction} is not in (0, 1]", hint="use e.g. 0.66 (two thirds)")
    lifetime = cert.not_valid_after_utc - cert.not_valid_before_utc
    return cert.not_valid_before_utc + lifetime * fraction


def needs_renewal(certificate_pem: str, now: dt.datetime, fraction: float = DEFAULT_FRACTION) -> bool:
    """Is the certificate due (or unreadable, which a renewal repairs)?"""
    try:
        cert = x509.load_pem_x509_certificate(certificate_pem.encode())
    except ValueError:
        return True
    return now >= renew_at(cert, fraction)


def issue_files(store: KeyValueStore, role: str, common_name: str, *, alt_names: tuple[str, ...] = (),
                ip_sans: tuple[str, ...] = (), ttl: str = "", now: dt.datetime | None = None,
                fraction: float = DEFAULT_FRACTION) -> IssuedFiles:
    """Issue a certificate from `role` on the mount's store, as files and with its renewal time."""
    moment = now or dt.datetime.now(dt.UTC)
    body: dict[str, object] = {"common_name": common_name, "alt_names": list(alt_names), "ip_sans": list(ip_sans)}
    if ttl:
        body["ttl"] = ttl
    data = issue.issue(store, role, body, moment)
    cert = x509.load_pem_x509_certificate(data["certificate"].encode())
    return IssuedFiles(data["certificate"] + "\n", data["private_key"], "\n".join(data["ca_chain"]) + "\n",
                       data["serial_number"], cert.not_valid_after_utc, renew_at(cert, fraction))


def revoke_superseded(store: KeyValueStore, serials: list[str], now: dt.datetime) -> int:
    """Revoke the certificates a renewal replaced (called once the files holding the new one are written, so a
    service never holds a revoked certificate); how many went on the CRL. A serial the mount no longer knows
    (its CA was replaced) or already revoked is skipped: nothing is left to do for it."""
    from reconcilers.vault.pki import ca, revocation

    try:
        issuer = ca.load(store)
    except PkiError:
        return 0                       # no CA on the mount any more: its certificates cannot be revoked here
    done = 0
    for serial in serials:
        try:
            done += "warnings" not in revocation.revoke(store, issuer, serial, now)
        except PkiError:
            continue
    return done
