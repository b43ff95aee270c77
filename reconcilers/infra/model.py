"""Frozen desired and observed state of infrastructure resources."""

from __future__ import annotations

import functools
import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from json.encoder import encode_basestring_ascii as json_str
from types import MappingProxyType
from typing import Any

from reconcilers.base import Problem, freeze


@functools.lru_cache(maxsize=65536)
def _path_of(kind: str, spec: str) -> str:
    f = _decode(spec)
    if kind == "systemd_unit":
        return f"etc/systemd/system/{f['name']}"
    return str(f.get("path", ""))


@functools.lru_cache(maxsize=65536)
def _hash(spec: str) -> str:
    return hashlib.sha256(spec.encode()).hexdigest()[:20]


@functools.lru_cache(maxsize=65536)
def _decode(spec: str) -> Mapping[str, Any]:
    return MappingProxyType(json.loads(spec))


_FACTS: dict[str, tuple[str, str, str | None]] = {}     # inventory data -> (kind, path, spec hash)


@functools.lru_cache(maxsize=65536)
def _inventory_data(kind: str, path: str, prune: bool, spec_hash: str, provider: str, source: str) -> str:
    # The text `freeze` makes of these six fields (keys sorted, ASCII-escaped strings: json_str is what json.dumps
    # writes for a str), written out: the encoder cost ~40 % of a 5,000-resource plan's diff (a test in
    # tests/reconcilers/test_infra_diff.py holds it to freeze's text).
    data = (f'{{"kind":{json_str(kind)},"path":{json_str(path)},"provider":{json_str(provider)},'
            f'"prune":{"true" if prune else "false"},"source":{json_str(source)},'
            f'"spec_hash":{json_str(spec_hash)}}}')
    _remember(data, (kind, path, spec_hash))      # what this entry says, for when it comes back from the index
    return data


def policy_text(r: Resource) -> str:
    """`freeze([spec, labels, prune, drift, depends_on])`: everything a commit can change about a resource, the
    text change control's digest covers. Written out (the spec is JSON text, so a JSON string here): the encoder
    escaping each spec cost most of admission's time at 5,000 resources; the same bytes (a test holds them)."""
    labels = freeze(dict(r.labels)) if r.labels else "{}"
    deps = freeze(list(r.depends_on)) if r.depends_on else "[]"
    return f'[{json_str(r.spec)},{labels},{"true" if r.prune else "false"},{json_str(r.drift)},{deps}]'


def _remember(data: str, facts: tuple[str, str, str | None]) -> None:
    if len(_FACTS) > 200_000:
        _FACTS.clear()
    _FACTS[data] = facts


def _facts(inventory_data: str) -> tuple[str, str, str | None]:
    """(kind, path, spec hash) of an inventory entry: known when this process made it, else decoded once."""
    found = _FACTS.get(inventory_data)
    if found is None:
        data = json.loads(inventory_data)
        spec_hash = data.get("spec_hash")
        found = (str(data.get("kind", "")), str(data.get("path", "")), None if spec_hash is None else str(spec_hash))
        _remember(inventory_data, found)
    return found


def inventory_facts(inventory_data: str) -> tuple[str, str, str | None]:
    """(kind, path, spec hash) an inventory entry recorded."""
    return _facts(inventory_data)


def applied_spec_hash(inventory_data: str) -> str | None:
    """The spec hash an inventory entry recorded."""
    return _facts(inventory_data)[2]


def inventory_entry(inventory_data: str) -> tuple[str, str]:
    """(kind, path) an inventory entry recorded."""
    kind, path, _ = _facts(inventory_data)
    return kind, path


KINDS = ("file", "directory", "symlink", "command", "systemd_unit")
CLOUD_KINDS = ("server", "network", "subnet", "firewall", "volume",   # served by cloud providers (providers/)
               "dns_record", "load_balancer")


@dataclass(frozen=True, slots=True)
class Resource:
    """One desired resource. `spec` is canonical JSON of the fields that define it on the host."""

    id: str
    kind: str
    provider: str
    spec: str
    depends_on: tuple[str, ...] = ()
    prune: bool = True
    drift: str = "correct"
    source: str = ""                          # repo file that declares it
    line: int = 0
    labels: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))
    # Derived from kind and spec once, when made: a run reads them several times for each of 20,000 resources.
    _spec_hash: str = field(default="", init=False, repr=False, compare=False)
    _path: str = field(default="", init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_spec_hash", _hash(self.spec))
        object.__setattr__(self, "_path", _path_of(self.kind, self.spec))

    @property
    def fields(self) -> Mapping[str, Any]:
        """The decoded spec (read-only; decoded once per distinct spec)."""
        return _decode(self.spec)

    @property
    def spec_hash(self) -> str:
        """A short hash of the spec: what inventory remembers to tell a repo change from drift."""
        return self._spec_hash

    @property
    def path(self) -> str:
        """The root-relative path the resource manages ('' for commands)."""
        return self._path

    def inventory_data(self) -> str:
        """What inventory keeps so the resource can be pruned after it left the repo (cloud resources also
        keep their dependencies: a network is deleted after the servers in it)."""
        if self.kind in CLOUD_KINDS:
            return freeze({"kind": self.kind, "path": "", "prune": self.prune, "spec_hash": self.spec_hash,
                           "provider": self.provider, "source": self.source, "depends_on": list(self.depends_on),
                           "size": self.fields.get("size")})
        return _inventory_data(self.kind, self.path, self.prune, self.spec_hash, self.provider, self.source)


@dataclass(frozen=True, slots=True)
class InfraDesired:
    """All resources of a revision, by id, and the problems found while loading them."""

    resources: Mapping[str, Resource]
    problems: tuple[Problem, ...] = ()


@dataclass(frozen=True, slots=True)
class ObservedResource:
    """What the host has at a resource's path."""

    exists: bool
    kind: str = ""                            # file | directory | symlink | other
    content_hash: str = ""
    mode: str = ""
    target: str = ""
    attrs: str = ""                           # cloud objects: compared attributes and tags (canonical JSON)


@dataclass(frozen=True, slots=True)
class InfraObserved:
    """Observed state by resource id (desired and inventory ids), and stray temporary files of ours that no
    resource owns (an apply killed between writing a temporary file and renaming it leaves one)."""

    resources: Mapping[str, ObservedResource]
    strays: tuple[str, ...] = ()
    # Cloud objects tagged ours that no desired resource or inventory entry claims: (provider, kind, id). An
    # apply that created one and died before recording it leaves it; the plan removes it.
    orphans: tuple[tuple[str, str, str], ...] = ()
    # The same when the host set no `[infra] owner` (a derived owner): reported as drift, never deleted.
    unclaimed: tuple[tuple[str, str, str], ...] = ()
    # Resources applied before with the same spec, taken as in place without reading the host (a commit's
    # incremental run): the diff has nothing to do for them, so it does not look at them at all.
    assumed: frozenset[str] = frozenset()
    # Resources holding secrets: (spec hash, keyed fingerprint of the bytes written) recorded when they were
    # applied (their `content_hash` above is the same keyed fingerprint of the host's bytes, never a plain hash).
    expected: Mapping[str, tuple[str, str]] = field(default_factory=lambda: MappingProxyType({}))
    # What diff.findings found for this observation, with the desired state and inventory it was found for: a
    # plan asks three times (actions, drift, details) with the same three. Never copied by `replace()`.
    memo: dict[str, Any] = field(default_factory=dict, init=False, repr=False, compare=False)
