"""Secret references in infra resources: `{ secret = "kv/app/db", key = "password" }` where a string goes.

Accepted in a file's or unit's `content`, anywhere in a template's `vars`, in a command's `env`, and as a
unit's `credentials` (delivered as `LoadCredential=` files). Load replaces each reference with a placeholder
token and lists the tokens in the spec under `secrets` (token -> reference text); templates render with the
tokens in place of the values. The reconciler then locates each reference in the revision through the secrets
port (`secret_versions`: reference -> keyed fingerprint of the committed value, and `after`: the actions that
load those manifests), so a changed secret changes the spec and re-applies every resource using it. Values are
substituted for the tokens at apply time only, and never reach a spec, a plan or a record.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from reconcilers.errors import InputError

SECRETS = "secrets"                  # spec field: token -> reference
VERSIONS = "secret_versions"         # spec field: reference -> keyed fingerprint of the committed value
AFTER = "after"                      # spec field: ids of the actions that load the manifests used
CREDENTIALS = "credentials"          # systemd_unit spec field: credential name -> token
_TOKEN = "@@stratum-secret-{n}-sEcReT@@"
TOKEN_RE = re.compile(r"@@stratum-secret-(\d+)-sEcReT@@")
_MANGLED = re.compile(r"@@stratum-secret-\d+-secret@@", re.IGNORECASE)
_CRED_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,63}$")


def is_reference(value: Any) -> bool:
    """True for a record of exactly `secret` and `key`, both strings."""
    return (isinstance(value, Mapping) and set(value) == {"secret", "key"}
            and isinstance(value["secret"], str) and isinstance(value["key"], str))


class Tokens:
    """The references of one resource, each given a token (the same reference: the same token)."""

    def __init__(self) -> None:
        self.by_token: dict[str, str] = {}
        self._by_ref: dict[str, str] = {}

    def token(self, value: Mapping[str, str]) -> str:
        """The token standing for reference record `value`."""
        ref = f"{value['secret'].rstrip('/')}#{value['key']}"
        found = self._by_ref.get(ref)
        if found is None:
            found = _TOKEN.format(n=len(self._by_ref))
            self._by_ref[ref] = found
            self.by_token[found] = ref
        return found

    def replace(self, value: Any, depth: int = 0) -> Any:
        """`value` with every reference record inside replaced by its token."""
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


def substitute(text: str, values: Mapping[str, str]) -> str:
    """`text` with each token replaced by its value (token -> value)."""
    return TOKEN_RE.sub(lambda m: values.get(m.group(0), m.group(0)), text)


def redact(text: str, values: Mapping[str, str], refs: Mapping[str, str]) -> str:
    """`text` (a command's output) with every resolved value replaced by `[secret <reference>]`."""
    for token, value in sorted(values.items(), key=lambda kv: -len(kv[1])):
        if value:
            text = text.replace(value, f"[secret {refs.get(token, '?')}]")
    return text
