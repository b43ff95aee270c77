"""Certificates as files for the daemon's own resources, and when they are due for renewal."""

from __future__ import annotations

import datetime as dt

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from reconcilers.vault.pki import renewal
from reconcilers.vault.pki.errors import PkiError
from tests.reconcilers.vault.pki.helpers import Mount

NOW = dt.datetime(2026, 6, 1, 12, 0, tzinfo=dt.UTC)


def _mount() -> Mount:
    m = Mount(NOW)
    m.data("POST", "root/generate/internal", {"common_name": "ca", "key_type": "ec"})
    m.call("POST", "roles/etcd", {"allowed_domains": "etcd.internal", "allow_subdomains": True,
                                  "key_type": "ml-dsa-65"}, status=204)
    return m


def test_issue_files_gives_a_matching_key_chain_and_renewal_time() -> None:
    """The key is the certificate's, the chain ends at the CA, and renewal falls at two thirds of 90 hours."""
    mount = _mount()
    files = renewal.issue_files(mount.store, "etcd", "m1.etcd.internal", alt_names=("m1.etcd.internal",),
                                ip_sans=("10.0.0.5",), ttl="90h", now=NOW)
    cert = x509.load_pem_x509_certificate(files.certificate.encode())
    key = serialization.load_pem_private_key(files.private_key.encode(), password=None)
    assert cert.public_key() == key.public_key()
    assert x509.load_pem_x509_certificates(files.ca_chain.encode()) == [mount.ca_cert()]
    assert files.renew_at == cert.not_valid_before_utc + (cert.not_valid_after_utc - cert.not_valid_before_utc) * 2 / 3
    assert not renewal.needs_renewal(files.certificate, NOW + dt.timedelta(hours=59))
    assert renewal.needs_renewal(files.certificate, NOW + dt.timedelta(hours=61))
    assert renewal.needs_renewal(files.certificate, NOW + dt.timedelta(hours=30), fraction=0.25)
    assert renewal.needs_renewal("not a certificate", NOW)


def test_issue_files_obeys_the_role_and_the_fraction_is_checked() -> None:
    """A name outside the role is refused as for issue; a renewal fraction outside (0, 1] is an error."""
    mount = _mount()
    with pytest.raises(PkiError, match="is not allowed"):
        renewal.issue_files(mount.store, "etcd", "evil.example", now=NOW)
    files = renewal.issue_files(mount.store, "etcd", "m2.etcd.internal", now=NOW)
    with pytest.raises(PkiError, match="not in"):
        renewal.renew_at(x509.load_pem_x509_certificate(files.certificate.encode()), 1.5)
