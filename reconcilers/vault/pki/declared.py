"""PKI mounts declared in the repo: `vault/pki/<mount>.ncl`, checked by `(import "vault.ncl").PkiMount`.

    { ca = { common_name = "Ops root", key_type = "ml-dsa-65" },
      roles = { etcd = { allowed_domains = ["etcd.internal"], allow_subdomains = true, max_ttl = "720h" } } }

`load` turns a revision's files into frozen specs; `plan` compares them with what each mount's store holds and
lists the changes (names only: key material never leaves the vault); `apply` carries them out through the
engine's own handler, roots before intermediates (an intermediate's `issuer` names the mount that signs it),
then roles. A role removed from the repo is deleted from the mount; a CA is never deleted or replaced by a
commit (certificates already issued depend on it): changing `ca` is reported and left for a human.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from reconcilers.base import Problem
from reconcilers.vault.declared import load_files
from reconcilers.vault.pki.durations import parse_duration
from reconcilers.vault.pki.errors import PkiError
from reconcilers.vault.pki.roles import Role
from reconcilers.vault.pki.storage import CA_KEY, KeyValueStore, get_json

if TYPE_CHECKING:
    from reconcilers.ports import Evaluator, Snapshot

PREFIX = "vault/pki/"
CONTRACT = '(import "vault.ncl").PkiMount'


@dataclass(frozen=True, slots=True)
class MountSpec:
    """One declared PKI mount: its CA and its roles (role bodies as the engine's roles/<r> takes them)."""

    name: str
    source: str
    ca: Mapping[str, Any]
    roles: Mapping[str, Mapping[str, Any]]

    @property
    def issuer(self) -> str | None:
        value = self.ca.get("issuer")
        return str(value) if value else None


@dataclass(frozen=True, slots=True)
class Change:
    """One planned change on a mount, as `stratum plan` shows it."""

    mount: str
    action: str                  # create-root | create-intermediate | write-role | delete-role | ca-differs
    target: str
    source: str = ""

    def __str__(self) -> str:
        return f"{self.action} {self.mount}/{self.target}" + (f" ({self.source})" if self.source else "")


def from_value(name: str, source: str, value: Mapping[str, Any]) -> MountSpec:
    """A spec from a contract-checked value; role fields are checked by the engine's own rules now, so a bad
    role fails validation with its file and name instead of failing at apply time."""
    roles = {str(r): dict(body) for r, body in dict(value.get("roles", {})).items()}
    for role_name, body in roles.items():
        try:
            Role.from_body(role_name, body)
        except PkiError as err:
            raise PkiError(err.what, where=f"{source}: roles.{role_name}", hint=err.hint) from None
    return MountSpec(name, source, dict(value["ca"]), roles)


def load(evaluator: Evaluator | None, snap: Snapshot) -> tuple[dict[str, MountSpec], list[Problem]]:
    """Every `vault/pki/*.ncl` of the revision, evaluated under the contract (reconcilers/vault/declared.py);
    problems are located, an issuer that is not declared included."""
    specs, problems = load_files(evaluator, snap, PREFIX, CONTRACT, from_value, "PKI mount")
    for spec in specs.values():
        if spec.issuer is not None and spec.issuer not in specs:
            problems.append(Problem(f"ca.issuer names PKI mount {spec.issuer!r}, which is not declared",
                                    path=spec.source, reconciler="vault",
                                    hint=f"add {PREFIX}{spec.issuer}.ncl or remove the issuer"))
        elif spec.issuer is not None:
            # The issuer refuses to sign a certificate that outlives its own: say so at validate, not at apply.
            ttl, limit = spec.ca.get("ttl", "87600h"), specs[spec.issuer].ca.get("ttl", "87600h")
            try:
                outlives = parse_duration(ttl, "ca.ttl") >= parse_duration(limit, "ca.ttl")
            except PkiError as err:
                problems.append(Problem(err.what, path=spec.source, reconciler="vault", hint=err.hint))
                continue
            if outlives:
                problems.append(Problem(f"ca.ttl {ttl} is not shorter than the ca.ttl {limit} of its issuer "
                                        f"{spec.issuer}: the intermediate would outlive it", path=spec.source,
                                        reconciler="vault", hint='give the intermediate a shorter ca.ttl, such as '
                                                                 '"43800h"'))
    return specs, problems


def _ordered(specs: Mapping[str, MountSpec]) -> list[MountSpec]:
    """Roots first, then each intermediate after its issuer (a cycle or a missing issuer is left out)."""
    done: list[MountSpec] = []
    names: set[str] = set()
    pending = sorted(specs.values(), key=lambda s: s.name)
    for _ in range(len(pending) + 1):
        for spec in list(pending):
            if spec.issuer is None or spec.issuer in names:
                done.append(spec)
                names.add(spec.name)
                pending.remove(spec)
    return done


def plan(specs: Mapping[str, MountSpec], stores: Mapping[str, KeyValueStore]) -> list[Change]:
    """What `apply` would change, per mount (pure: reads the stores, writes nothing)."""
    changes: list[Change] = []
    for spec in _ordered(specs):
        store = stores[spec.name]
        record = get_json(store, CA_KEY)
        if record is None:
            kind = "create-intermediate" if spec.issuer else "create-root"
            changes.append(Change(spec.name, kind, spec.ca["common_name"], spec.source))
        else:
            from reconcilers.vault.pki import ca  # x509 (~40 ms): only when a CA exists to compare

            subject = ca.load(store).cert.subject.rfc4514_string()
            if subject != f"CN={spec.ca['common_name']}":
                changes.append(Change(spec.name, "ca-differs", subject, spec.source))
        for role_name, body in sorted(spec.roles.items()):
            wanted = Role.from_body(role_name, body).to_json()
            if get_json(store, "roles/" + role_name) != wanted:
                changes.append(Change(spec.name, "write-role", role_name, spec.source))
        for stored in store.list("roles/"):
            if stored not in spec.roles:
                changes.append(Change(spec.name, "delete-role", stored, spec.source))
    return changes


def _call(store: KeyValueStore, method: str, path: str, body: Mapping[str, Any], now: dt.datetime,
          where: str) -> dict[str, Any]:
    from reconcilers.vault.pki import api  # the engine (and x509) only when a change is applied

    status, reply = api.handle(method, path, body, store, now=now)
    if status >= 300:
        raise PkiError(f"{method} {path}: {'; '.join(reply.get('errors', []))}", where=where)
    return reply


def apply(specs: Mapping[str, MountSpec], stores: Mapping[str, KeyValueStore], changes: Sequence[Change],
          now: dt.datetime | None = None) -> list[str]:
    """Carry out planned changes in order; returns what was done (names, never key material)."""
    moment = now or dt.datetime.now(dt.UTC)
    done: list[str] = []
    for change in changes:
        spec, store = specs[change.mount], stores[change.mount]
        ca_body = {k: v for k, v in spec.ca.items() if k != "issuer"}
        if change.action == "create-root":
            _call(store, "POST", "root/generate/internal", ca_body, moment, spec.source)
        elif change.action == "create-intermediate":
            assert spec.issuer is not None
            csr = _call(store, "POST", "intermediate/generate/internal", ca_body, moment, spec.source)["data"]["csr"]
            signed = _call(stores[spec.issuer], "POST", "root/sign-intermediate",
                           {"csr": csr, "common_name": spec.ca["common_name"], "ttl": spec.ca.get("ttl", "43800h")},
                           moment, spec.source)["data"]
            bundle = "\n".join([signed["certificate"], *signed["ca_chain"]])
            _call(store, "POST", "intermediate/set-signed", {"certificate": bundle}, moment, spec.source)
        elif change.action == "write-role":
            _call(store, "POST", "roles/" + change.target, spec.roles[change.target], moment, spec.source)
        elif change.action == "delete-role":
            _call(store, "DELETE", "roles/" + change.target, {}, moment, spec.source)
        else:
            continue                      # ca-differs: reported by plan, never applied by a commit
        done.append(str(change))
    return done

