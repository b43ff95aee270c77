"""Roles: which names a certificate may carry, its key type and size, its lifetime and its key usages.

Vault's field names and defaults: a role with allowed_domains ["example.com"] and allow_subdomains issues
www.example.com but not example.com itself unless allow_bare_domains; IP SANs need allow_ip_sans.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

from reconcilers.vault.pki import keys
from reconcilers.vault.pki.durations import parse_duration
from reconcilers.vault.pki.errors import PkiError

if TYPE_CHECKING:
    from cryptography import x509

ROLE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")
_DNS_LABEL = re.compile(r"^(\*|[A-Za-z0-9_]([A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?)$")

KEY_USAGES = ("DigitalSignature", "ContentCommitment", "KeyEncipherment", "DataEncipherment", "KeyAgreement",
              "CertSign", "CRLSign", "EncipherOnly", "DecipherOnly")
# Name -> attribute of cryptography's ExtendedKeyUsageOID. Names, not OIDs: checking a declared role (what
# `stratum validate` does) then needs no cryptography.x509, whose import costs ~40 ms; issuing does.
EXT_KEY_USAGES: dict[str, str] = {
    "ServerAuth": "SERVER_AUTH", "ClientAuth": "CLIENT_AUTH", "CodeSigning": "CODE_SIGNING",
    "EmailProtection": "EMAIL_PROTECTION", "TimeStamping": "TIME_STAMPING", "OcspSigning": "OCSP_SIGNING",
}


def names_field(value: object, field_name: str) -> tuple[str, ...]:
    """A list field given as a JSON list or a comma-separated string (hvac and the CLI send either)."""
    if value is None or value == "":
        return ()
    if isinstance(value, str):
        return tuple(v.strip() for v in value.split(",") if v.strip())
    if isinstance(value, list | tuple) and all(isinstance(v, str) for v in value):
        return tuple(v.strip() for v in value if v.strip())
    raise PkiError(f"{field_name}: expected a list of strings or a comma-separated string, got {value!r}")


def _bool(value: object, field_name: str) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.lower() in ("true", "false", "1", "0"):
        return value.lower() in ("true", "1")
    raise PkiError(f"{field_name}: expected true or false, got {value!r}")


@dataclass(frozen=True, slots=True)
class Role:
    """One role, as stored under roles/<name>."""

    name: str
    allowed_domains: tuple[str, ...] = ()
    allow_subdomains: bool = False
    allow_bare_domains: bool = False
    allow_localhost: bool = True
    allow_any_name: bool = False
    allow_ip_sans: bool = True
    key_type: str = "rsa"
    key_bits: int = 2048
    ttl: int = 0                     # 0: the mount's default (30 days)
    max_ttl: int = 0                 # 0: the mount's maximum (the CA's own lifetime bounds it anyway)
    key_usage: tuple[str, ...] = ("DigitalSignature", "KeyAgreement", "KeyEncipherment")
    ext_key_usage: tuple[str, ...] = field(default=())
    server_flag: bool = True
    client_flag: bool = True
    no_store: bool = False

    @staticmethod
    def from_body(name: str, body: Mapping[str, Any], old: Role | None = None) -> Role:
        """A role from a request body, over `old` (Vault updates only the fields given)."""
        if not ROLE_NAME.match(name):
            raise PkiError(f"role name {name!r} is not valid", hint="use letters, digits, '.', '_' and '-'")
        base = asdict(old) if old else asdict(Role(name))
        base["name"] = name
        for key in ("allowed_domains", "key_usage", "ext_key_usage"):
            if key in body:
                base[key] = names_field(body[key], key)
        for key in ("allow_subdomains", "allow_bare_domains", "allow_localhost", "allow_any_name", "allow_ip_sans",
                    "server_flag", "client_flag", "no_store"):
            if key in body:
                base[key] = _bool(body[key], key)
        for key in ("ttl", "max_ttl"):
            if key in body:
                base[key] = parse_duration(body[key], key)
        if "key_type" in body:
            base["key_type"] = str(body["key_type"])
            if "key_bits" not in body:
                base["key_bits"] = 0
        if "key_bits" in body:
            try:
                base["key_bits"] = int(body["key_bits"])
            except (TypeError, ValueError):
                raise PkiError(f"key_bits: {body['key_bits']!r} is not a number") from None
        if base["key_type"] != "any":           # "any": sign accepts a CSR of any supported type
            base["key_bits"] = keys.check_key_type(base["key_type"], base["key_bits"])
        for usage in base["key_usage"]:
            if usage not in KEY_USAGES:
                raise PkiError(f"key_usage: {usage!r} is unknown", hint=f"use any of {', '.join(KEY_USAGES)}")
        for usage in base["ext_key_usage"]:
            if usage not in EXT_KEY_USAGES:
                raise PkiError(f"ext_key_usage: {usage!r} is unknown",
                               hint=f"use any of {', '.join(EXT_KEY_USAGES)}")
        if base["max_ttl"] and base["ttl"] > base["max_ttl"]:
            raise PkiError(f"role {name}: ttl ({base['ttl']} s) is longer than max_ttl ({base['max_ttl']} s)")
        fields: dict[str, Any] = {k: tuple(v) if isinstance(v, list) else v for k, v in base.items()}
        return Role(**fields)

    def to_json(self) -> dict[str, Any]:
        """The stored and the read form (Vault's field names; lists as lists)."""
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}

    @staticmethod
    def from_json(data: Mapping[str, Any]) -> Role:
        """A role from its stored form."""
        fields: dict[str, Any] = {k: tuple(v) if isinstance(v, list) else v for k, v in data.items()
                                  if k in Role.__dataclass_fields__}
        return Role(**fields)

    # --- what the role allows ---------------------------------------------------------------------------------

    def check_dns_name(self, name: str) -> None:
        """Raise unless the role may put `name` in a certificate (the error names role and name)."""
        lowered = name.lower().rstrip(".")
        if not lowered or len(lowered) > 253 or not all(_DNS_LABEL.match(p) for p in lowered.split(".")):
            raise PkiError(f"role {self.name}: {name!r} is not a valid DNS name")
        if self.allow_any_name:
            return
        if self.allow_localhost and lowered in ("localhost", "localdomain"):
            return
        for domain in (d.lower().rstrip(".") for d in self.allowed_domains):
            if lowered == domain and self.allow_bare_domains:
                return
            if self.allow_subdomains and lowered.endswith("." + domain) and "*" not in lowered[: -len(domain) - 1]:
                return
        raise PkiError(f"role {self.name}: the name {name!r} is not allowed",
                       hint=f"the role allows {self._describe()}")

    def check_ip(self, text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
        """The IP address in `text`, if the role allows IP SANs."""
        if not self.allow_ip_sans:
            raise PkiError(f"role {self.name}: IP SANs are not allowed", hint="set allow_ip_sans on the role")
        try:
            return ipaddress.ip_address(text.strip())
        except ValueError:
            raise PkiError(f"role {self.name}: {text!r} is not an IP address") from None

    def _describe(self) -> str:
        if not self.allowed_domains:
            return "no domains (allowed_domains is empty)"
        forms = []
        for d in self.allowed_domains:
            if self.allow_bare_domains:
                forms.append(d)
            if self.allow_subdomains:
                forms.append("*." + d)
        return ", ".join(forms) or f"{', '.join(self.allowed_domains)} only with allow_bare_domains/allow_subdomains"

    def ext_key_usage_oids(self) -> list[x509.ObjectIdentifier]:
        """The extended key usages: ServerAuth/ClientAuth from the flags, then the role's list."""
        from cryptography.x509.oid import ExtendedKeyUsageOID

        oids: list[x509.ObjectIdentifier] = []
        if self.server_flag:
            oids.append(ExtendedKeyUsageOID.SERVER_AUTH)
        if self.client_flag:
            oids.append(ExtendedKeyUsageOID.CLIENT_AUTH)
        for name in self.ext_key_usage:
            oid: x509.ObjectIdentifier = getattr(ExtendedKeyUsageOID, EXT_KEY_USAGES[name])
            if oid not in oids:
                oids.append(oid)
        return oids
