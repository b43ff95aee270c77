"""Secret references in infra resources: `{ secret = "kv/app/db", key = "password" }` where a string goes.

Accepted in a file's or unit's `content`, anywhere in a template's `vars`, in a command's `env`, and as a
unit's `credentials` (delivered as `LoadCredential=` files). Load replaces each reference with a placeholder
token and lists the tokens in the spec under `secrets` (token -> reference text); templates render with the
tokens in place of the values. The reconciler then locates each reference in the revision through the secrets
port (`secret_versions`: reference -> keyed fingerprint of the committed value, and `after`: the actions that
load those manifests), so a changed secret changes the spec and re-applies every resource using it. Values are
substituted for the tokens at apply time only, and never reach a spec, a plan or a record.

A certificate reference stands where a secret reference does: `{ certificate = "pki/issue/web", common_name =
"web.internal", alt_names = [...], ip_sans = [...], ttl = "72h", part = "certificate" | "private_key" |
"ca_chain" }`. Its reference text is `cert:pki/issue/web?cn=...&alt=...&ip=...&ttl=...#<part>` (names sorted, so
the same request is the same text): the vault issues one certificate per request (everything but the part) and
every part naming it comes from that one issue, so a key file and a certificate file always match.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any
from urllib.parse import urlencode

from reconcilers.errors import InputError

SECRETS = "secrets"                  # spec field: token -> reference
VERSIONS = "secret_versions"         # spec field: reference -> keyed fingerprint of the committed value
AFTER = "after"                      # spec field: ids of the actions that load the manifests used
CREDENTIALS = "credentials"          # systemd_unit spec field: credential name -> token
_TOKEN = "@@stratum-secret-{n}-sEcReT@@"
TOKEN_RE = re.compile(r"@@stratum-secret-(\d+)-sEcReT@@")
_MANGLED = re.compile(r"@@stratum-secret-\d+-secret@@", re.IGNORECASE)
_CRED_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,63}$")
CERT_PREFIX = "cert:"                # reference text of a certificate part
CERT_PARTS = ("certificate", "private_key", "ca_chain")
PUBLIC_PARTS = ("certificate", "ca_chain")   # parts a file may show to others (mode 0644 by default)
_CERT_FIELDS = {"certificate", "common_name", "alt_names", "ip_sans", "ttl", "part"}


def is_cert_reference(value: Any) -> bool:
    """True for a certificate reference record (see the module docstring); the Nickel contract checks types."""
    return (isinstance(value, Mapping) and "certificate" in value and "part" in value
            and set(value) <= _CERT_FIELDS and isinstance(value["certificate"], str))


def cert_reference_text(value: Mapping[str, Any]) -> str:
    """`cert:<mount>/issue/<role>?cn=..&alt=..&ip=..&ttl=..#<part>`: one text per request and part."""
    query = [("cn", str(value.get("common_name", "")))]
    alt = sorted({str(n).strip().lower() for n in value.get("alt_names") or ()})
    ips = sorted({str(n).strip() for n in value.get("ip_sans") or ()})
    if alt:
        query.append(("alt", ",".join(alt)))
    if ips:
        query.append(("ip", ",".join(ips)))
    if value.get("ttl"):
        query.append(("ttl", str(value["ttl"])))
    return f"{CERT_PREFIX}{str(value['certificate']).strip('/')}?{urlencode(query)}#{value['part']}"


def is_reference(value: Any) -> bool:
    """True for a record of exactly `secret` and `key`, both strings, or a certificate reference."""
    return (isinstance(value, Mapping) and set(value) == {"secret", "key"}
            and isinstance(value["secret"], str) and isinstance(value["key"], str)) or is_cert_reference(value)


class Tokens:
    """The references of one resource, each given a token (the same reference: the same token)."""

    def __init__(self) -> None:
        self.by_token: dict[str, str] = {}
        self._by_ref: dict[str, str] = {}

    def token(self, value: Mapping[str, Any]) -> str:
        """The token standing for reference record `value`."""
        if is_cert_reference(value):
            ref = cert_reference_text(value)
        else:
            ref = f"{value['secret'].rstrip('/')}#{value['key']}"
        found = self._by_ref.get(ref)
        if found is None:
            found = _TOKEN.format(n=len(self._by_ref))
            self._by_ref[ref] = found
            self.by_token[found] = ref
        return found

    def replace(self, value: Any, depth: int = 0) -> Any:
        """`value` with every reference record inside replaced by its token."""
        if type(value) is str:
            return value                 # most values: no reference, and no costly Mapping check (a load's hot path)
        if type(value) is dict and not value:
            return {}                    # a file's default `vars`: a new empty record, as the comprehension gives
        if depth > 32:
            return value                 # the Nickel evaluation bounds depth already; never recurse unbounded
        if is_reference(value):
            return self.token(value)
        if isinstance(value, Mapping):
            return {k: self.replace(v, depth + 1) for k, v in value.items()}
        if isinstance(value, list | tuple):
            return [self.replace(v, depth + 1) for v in value]
        return value


def extract(rid: str, kind: str, spec: dict[str, Any]) -> Tokens:
    """Replace the references of a resource's spec (before template rendering) by tokens, in place."""
    tokens = Tokens()
    if kind in ("file", "systemd_unit") and "content" in spec:
        spec["content"] = tokens.replace(spec["content"])
    if kind == "file" and "vars" in spec:
        spec["vars"] = tokens.replace(spec["vars"])
    if kind == "command" and "env" in spec:
        spec["env"] = tokens.replace(spec["env"])
    if kind == "server" and "user_data" in spec:      # a cloud server's user-data: a string, or parts joined
        parts = tokens.replace(spec["user_data"])
        spec["user_data"] = "".join(str(p) for p in parts) if isinstance(parts, list) else parts
    if kind == "systemd_unit" and spec.get(CREDENTIALS):
        for name in spec[CREDENTIALS]:
            if not _CRED_NAME.match(name):
                raise InputError(f"resource {rid}: credential name {name!r} must be letters, digits, _ . -")
        spec[CREDENTIALS] = {k: tokens.replace(v) for k, v in sorted(spec[CREDENTIALS].items())}
    elif CREDENTIALS in spec:
        spec.pop(CREDENTIALS)
    return tokens


def finish(rid: str, spec: dict[str, Any], tokens: Tokens) -> None:
    """After rendering: keep the tokens that the spec still carries, refuse a token a template changed."""
    if not tokens.by_token:
        return
    text = str(spec.get("content", ""))
    if _MANGLED.search(TOKEN_RE.sub("", text)):
        raise InputError(f"resource {rid}: a template changed a secret variable (a filter such as upper?)",
                         hint="insert secret variables as they are: {{ password }}; transform nothing secret")
    used = {m.group(0) for m in TOKEN_RE.finditer(text)}
    for value in [*spec.get("env", {}).values(), *spec.get(CREDENTIALS, {}).values(), spec.get("user_data", "")]:
        used.update(m.group(0) for m in TOKEN_RE.finditer(str(value)))
    spec[SECRETS] = {t: r for t, r in tokens.by_token.items() if t in used}
    if not spec[SECRETS]:
        spec.pop(SECRETS)


def holds_private(spec: Mapping[str, Any]) -> bool:
    """True when the content carries a secret value or a private key (its file defaults to 0600); a file of
    certificates and chains only is public (0644)."""
    refs = spec.get(SECRETS, {})
    for m in TOKEN_RE.finditer(str(spec.get("content", ""))):
        ref = str(refs.get(m.group(0), ""))
        if not (ref.startswith(CERT_PREFIX) and ref.rpartition("#")[2] in PUBLIC_PARTS):
            return True
    return False


def substitute(text: str, values: Mapping[str, str]) -> str:
    """`text` with each token replaced by its value (token -> value)."""
    return TOKEN_RE.sub(lambda m: values.get(m.group(0), m.group(0)), text)


def redact(text: str, values: Mapping[str, str], refs: Mapping[str, str]) -> str:
    """`text` (a command's output) with every resolved value replaced by `[secret <reference>]`."""
    for token, value in sorted(values.items(), key=lambda kv: -len(kv[1])):
        if value:
            text = text.replace(value, f"[secret {refs.get(token, '?')}]")
    return text
