"""Cloud providers of the infra reconciler, built from host settings (never from the repo).

    [infra]
    owner = "ops-prod"                 # the `stratum:owner` tag on everything created (default: derived from
                                       # the repository and branch; unclaimed objects are then only reported)
    [infra.providers.aws]              # the provider name resources use (`provider = 'aws`)
    type = "aws"                       # aws | upcloud | libcloud
    region = "eu-west-1"
    key_env = "AWS_ACCESS_KEY_ID"      # or key = "...", secret = "..." (the settings file is the host's)
    host = "127.0.0.1"                 # optional: an AWS-compatible endpoint
    port = 5000
    secure = false
    parallelism = 4                    # changes in flight on this provider at most
    load_balancers = true              # aws: serve `load_balancer` resources (classic ELB); one more listing
    dns = true                         # aws: serve `dns_record` resources (Route 53; listed only when declared)
    dns_host = "127.0.0.1"             # optional: Route 53's endpoint when it differs from `host`

A provider whose settings are wrong is still listed (so resources naming it get a clear message) but refuses
every call with what to fix.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from reconcilers.errors import StratumError, TerminalError
from reconcilers.infra.model import ObservedResource
from reconcilers.infra.providers.cloud import Backend, CloudProvider, PerThread

TYPES = ("aws", "upcloud", "libcloud")


class Unavailable:
    """A configured provider that cannot work (missing credentials, unknown type): every call says why."""

    def __init__(self, name: str, error: StratumError) -> None:
        self.name = name
        self.error = error

    def _fail(self, rid: str) -> TerminalError:
        return TerminalError(f"provider {self.name} is not usable: {self.error.what}", where=f"infra:{rid}",
                             hint=self.error.hint)

    def observe(self, kind: str, ref: str, cache: dict[str, str] | None = None) -> ObservedResource:
        """Refuses (see the class docstring)."""
        raise self._fail(ref)

    def apply(self, rid: str, kind: str, spec: Mapping[str, Any]) -> str:
        """Refuses."""
        raise self._fail(rid)

    def destroy(self, kind: str, ref: str) -> str:
        """Refuses."""
        raise self._fail(ref)


def default_owner(section: Mapping[str, Any], data_dir: Path) -> str:
    """The owner tag when the host names none: derived from the repository's identity and branch (the kernel
    puts them in the section as `repo_identity`), so two deployments of different repositories in one account
    never share an owner; the data directory only when no identity is known (a library caller)."""
    identity = str(section.get("repo_identity") or data_dir.resolve())
    return "stratum-" + hashlib.sha256(identity.encode()).hexdigest()[:12]


def owner_explicit(section: Mapping[str, Any]) -> bool:
    """True when the host named `[infra] owner`: only then are unclaimed objects tagged with it deleted (a
    derived owner could still be shared by two daemons of one repository), otherwise they are reported."""
    return bool(section.get("owner"))


def backend_for(name: str, conf: Mapping[str, Any]) -> Backend:
    """The backend of one `[infra.providers.NAME]` section (raises SettingsError when it cannot be built)."""
    from reconcilers.errors import SettingsError

    kind = str(conf.get("type", name))
    if kind == "aws":
        from reconcilers.infra.providers.aws import AwsBackend, credentials, driver_from_settings
        from reconcilers.infra.providers.aws_elb import Balancers, elb_driver

        driver_from_settings(name, conf)     # settings errors now, not in an apply thread
        balancers = None
        if conf.get("load_balancers", True):
            balancers = Balancers(PerThread(lambda: elb_driver(conf, *credentials(name, conf))))
        records = None
        if conf.get("dns", True):
            from reconcilers.infra.providers.aws_dns import Records, dns_driver

            records = Records(PerThread(lambda: dns_driver(conf, *credentials(name, conf))))
        return AwsBackend(PerThread(lambda: driver_from_settings(name, conf)), balancers, records)
    if kind == "upcloud":
        from reconcilers.infra.providers.upcloud import UpcloudBackend, upcloud_driver

        upcloud_driver(name, conf)
        return UpcloudBackend(PerThread(lambda: upcloud_driver(name, conf)))
    if kind == "libcloud":
        from reconcilers.infra.providers.generic import GenericBackend, generic_driver

        generic_driver(name, conf)
        return GenericBackend(PerThread(lambda: generic_driver(name, conf)))
    raise SettingsError(f"provider {name}: unknown type {kind!r}", hint=f"use one of: {', '.join(TYPES)}")


def build(section: Mapping[str, Any], data_dir: Path) -> dict[str, CloudProvider | Unavailable]:
    """The cloud providers the host settings' `[infra.providers.*]` sections describe."""
    owner = str(section.get("owner") or default_owner(section, data_dir))
    out: dict[str, CloudProvider | Unavailable] = {}
    for name, conf in dict(section.get("providers", {})).items():
        try:
            out[str(name)] = CloudProvider(str(name), backend_for(str(name), dict(conf)), owner,
                                           poll=float(dict(conf).get("poll", 2.0)),
                                           parallelism=int(dict(conf).get("parallelism", 4)))
        except StratumError as err:
            out[str(name)] = Unavailable(str(name), err)
    return out
