"""Bad requests to the PKI engine answer 4xx with what was wrong and what to do, and change nothing."""

from __future__ import annotations

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from tests.reconcilers.vault.pki.helpers import Mount


@pytest.fixture
def mount() -> Mount:
    m = Mount()
    m.data("POST", "root/generate/internal", {"common_name": "ca", "key_type": "ec"})
    m.call("POST", "roles/web", {"allowed_domains": ["example.com"], "allow_subdomains": True, "key_type": "ec",
                                 "ttl": "24h", "max_ttl": "72h", "allow_ip_sans": False}, status=204)
    return m


def _csr(names: list[str], key: ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey | None = None) -> str:
    key = key or ec.generate_private_key(ec.SECP256R1())
    builder = x509.CertificateSigningRequestBuilder().subject_name(
        x509.Name([x509.NameAttribute(x509.NameOID.COMMON_NAME, names[0])]))
    if names[1:]:
        builder = builder.add_extension(x509.SubjectAlternativeName([x509.DNSName(n) for n in names[1:]]),
                                        critical=False)
    return builder.sign(key, hashes.SHA256()).public_bytes(serialization.Encoding.PEM).decode()


def _nothing_issued(mount: Mount) -> None:
    keys = mount.data("LIST", "certs")["keys"]
    assert len(keys) == 1, keys                   # only the root's own certificate


def test_csr_asking_for_a_name_outside_the_role(mount: Mount) -> None:
    """A CSR whose CN or SAN leaves allowed_domains is refused naming the role and the name."""
    for names in (["evil.com"], ["ok.example.com", "evil.com"], ["example.com"]):   # bare domain not allowed
        err = mount.call("POST", "sign/web", {"csr": _csr(names)}, status=400)["errors"][0]
        assert "role web" in err and "is not allowed" in err and "*.example.com" in err
    _nothing_issued(mount)


def test_issue_for_a_name_outside_the_role_or_an_ip_the_role_forbids(mount: Mount) -> None:
    """issue refuses names outside the role, wildcards under a subdomain rule, and IP SANs when not allowed."""
    for body in ({"common_name": "example.org"}, {"common_name": "a.example.com", "alt_names": "b.evil.com"},
                 {"common_name": "a.example.com", "ip_sans": "10.0.0.1"}, {"common_name": "*.example.com"},
                 {"common_name": "a..example.com"}, {"common_name": ""}):
        err = mount.call("POST", "issue/web", body, status=400)["errors"][0]
        assert "role web" in err, err
    _nothing_issued(mount)


def test_ttl_over_max_ttl_is_refused(mount: Mount) -> None:
    """A TTL beyond the role's max_ttl is an error that gives the maximum; a malformed TTL names the field."""
    err = mount.call("POST", "issue/web", {"common_name": "a.example.com", "ttl": "73h"}, status=400)["errors"][0]
    assert "max_ttl of 259200 s" in err
    err = mount.call("POST", "issue/web", {"common_name": "a.example.com", "ttl": "soon"}, status=400)["errors"][0]
    assert err.startswith("ttl: 'soon' is not a duration")
    mount.call("POST", "roles/bad", {"ttl": "48h", "max_ttl": "24h"}, status=400)
    _nothing_issued(mount)


def test_a_certificate_cannot_outlive_its_ca() -> None:
    """A TTL past the CA's own expiry is refused with the CA's expiry date."""
    m = Mount()
    m.data("POST", "root/generate/internal", {"common_name": "ca", "key_type": "ec", "ttl": "48h"})
    m.call("POST", "roles/any", {"allow_any_name": True, "key_type": "ec"}, status=204)
    err = m.call("POST", "issue/any", {"common_name": "x", "ttl": "72h"}, status=400)["errors"][0]
    assert "outlive its CA" in err


def test_unknown_role_unknown_path_and_no_ca() -> None:
    """An unknown role is a 404 naming it; an unknown path is a 404; a mount without a CA says how to make one."""
    m = Mount()
    m.call("POST", "roles/web", {"allow_any_name": True, "key_type": "ec"}, status=204)
    err = m.call("POST", "issue/web", {"common_name": "x"}, status=400)["errors"][0]
    assert "no CA yet" in err and "root/generate/internal" in err
    m.data("POST", "root/generate/internal", {"common_name": "ca", "key_type": "ec"})
    assert "role 'nope' does not exist" in m.call("POST", "issue/nope", {"common_name": "x"},
                                                   status=404)["errors"][0]
    m.call("POST", "sign/nope", {"csr": _csr(["x"])}, status=404)
    m.call("GET", "roles/nope", status=404)
    m.call("POST", "frobnicate/x", status=404)
    m.call("DELETE", "issue/web", status=400)              # a known path with the wrong method
    m.call("POST", "root/generate/internal", {"common_name": "again"}, status=400)   # one CA per mount


def test_bad_csrs_and_keys(mount: Mount) -> None:
    """Garbage, a CSR with a forged signature, or a key of the wrong type or size is refused."""
    assert "CERTIFICATE REQUEST" in mount.call("POST", "sign/web", {"csr": "hello"}, status=400)["errors"][0]
    pem = _csr(["a.example.com"])
    body = pem.splitlines()
    body[5] = body[5][:10] + ("A" if body[5][10] != "A" else "B") + body[5][11:]
    err = mount.call("POST", "sign/web", {"csr": "\n".join(body)}, status=400)["errors"][0]
    assert "csr" in err
    rsa_csr = _csr(["a.example.com"], rsa.generate_private_key(public_exponent=65537, key_size=2048))
    assert "the role requires ec" in mount.call("POST", "sign/web", {"csr": rsa_csr}, status=400)["errors"][0]
    mount.call("POST", "roles/big", {"allow_any_name": True, "key_type": "ec", "key_bits": 384}, status=204)
    small = mount.call("POST", "sign/big", {"csr": _csr(["x"])}, status=400)["errors"][0]
    assert "at least 384" in small
    for body_ in ({"key_type": "dsa"}, {"key_type": "rsa", "key_bits": 1024}, {"key_type": "ec", "key_bits": 255},
                  {"key_usage": ["Teleport"]}, {"ext_key_usage": "Everything"}, {"allow_subdomains": "maybe"}):
        mount.call("POST", "roles/x", body_, status=400)
    _nothing_issued(mount)


def test_set_signed_refuses_a_certificate_for_another_key() -> None:
    """set-signed with a certificate that does not carry the pending key, or nothing pending, is refused."""
    root = Mount()
    root.data("POST", "root/generate/internal", {"common_name": "root", "key_type": "ec"})
    inter = Mount()
    assert "no intermediate is pending" in inter.call("POST", "intermediate/set-signed",
                                                      {"certificate": root.data("GET", "cert/ca")["certificate"]},
                                                      status=400)["errors"][0]
    inter.data("POST", "intermediate/generate/internal", {"common_name": "int", "key_type": "ec"})
    other = Mount()
    csr = other.data("POST", "intermediate/generate/internal", {"common_name": "int", "key_type": "ec"})["csr"]
    foreign = root.data("POST", "root/sign-intermediate", {"csr": csr})["certificate"]
    err = inter.call("POST", "intermediate/set-signed", {"certificate": foreign}, status=400)["errors"][0]
    assert "does not carry the key" in err
    inter.call("GET", "ca", status=400)                        # still no CA


def test_too_many_names_in_one_request(mount: Mount) -> None:
    """A request for more than 100 names is refused before any work is done."""
    names = ",".join(f"h{i}.example.com" for i in range(150))
    err = mount.call("POST", "issue/web", {"common_name": "a.example.com", "alt_names": names},
                     status=400)["errors"][0]
    assert "at most 100" in err
    _nothing_issued(mount)
