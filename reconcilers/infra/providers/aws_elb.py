"""AWS load balancers (classic Elastic Load Balancing, API 2012-06-01) through libcloud's ELB driver's signed
connection: the aws backend (aws.py) hands `load_balancer` resources here.

Ownership is by tags, as for EC2 objects: the balancer is created with its `stratum:*` tags in the same call.
A balancer's name is the API's id (at most 32 letters, digits and hyphens, unique per account and region), so it
is derived from the owner and the resource id. Listings read every page (`Marker`/`NextMarker`) and the tags
of 20 balancers per DescribeTags call: a no-op plan costs two calls for up to 400 balancers, never one per
balancer.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from typing import Any

from reconcilers.errors import TransientError
from reconcilers.infra.providers.cloud import CloudObject, Resolve
from reconcilers.infra.providers.cloud_diff import TAG_ID, TAG_OWNER

MAX_PAGES = 1000
ROOT = "/"                                    # the query API's path (the version is a parameter)
NS = "http://elasticloadbalancing.amazonaws.com/doc/2012-06-01/"


def elb_driver(conf: Mapping[str, Any], key: str, secret: str) -> Any:
    """libcloud's ELB driver for the settings' region, pointed at `host`/`port`/`secure` when they are set
    (an AWS-compatible endpoint): the driver takes no endpoint, so its connection's is changed."""
    from libcloud.loadbalancer.providers import get_driver
    from libcloud.loadbalancer.types import Provider

    region = str(conf.get("region", "us-east-1"))
    driver: Any = get_driver(Provider.ELB)(key, secret, region)  # type: ignore[no-untyped-call]  # libcloud's
    conn = driver.connection
    if "host" in conf:
        conn.host = str(conf["host"])
    if "port" in conf:
        conn.port = int(conf["port"])
    if "secure" in conf:
        conn.secure = bool(conf["secure"])
    conn.timeout = float(conf.get("timeout", 60))
    conn.connect()                            # the driver connected to AWS's own endpoint when made
    return driver


def balancer_name(owner: str, rid: str) -> str:
    """The balancer's name: readable, unique per owner and id, within the API's 32 characters."""
    digest = hashlib.sha256(f"{owner}/{rid}".encode()).hexdigest()[:8]
    head = "".join(c if c.isalnum() else "-" for c in rid)[:21].strip("-") or "lb"
    return f"{head}-{digest}"


def _find(el: Any, path: str) -> list[Any]:
    return list(el.findall("/".join(f"{{{NS}}}{p}" for p in path.split("/"))))


def _text(el: Any, path: str) -> str:
    found = _find(el, path)
    return str(found[0].text or "") if found else ""


class Balancers:
    """Load balancers of one account and region (the calling thread's ELB driver)."""

    def __init__(self, driver: Any) -> None:
        self._driver = driver                 # a driver, or a PerThread making one per thread

    def _request(self, params: dict[str, str]) -> Any:
        from reconcilers.infra.providers.cloud import driver_of

        return driver_of(self._driver).connection.request(ROOT, params=params).object

    def _describe(self, names: list[str] | None = None) -> list[Any]:
        params = {"Action": "DescribeLoadBalancers"}
        if names:
            params.update({f"LoadBalancerNames.member.{i}": n for i, n in enumerate(names, 1)})
        else:
            params["PageSize"] = "400"        # the API's largest page
        out: list[Any] = []
        for _ in range(MAX_PAGES):
            res = self._request(params)
            out += _find(res, "DescribeLoadBalancersResult/LoadBalancerDescriptions/member")
            marker = _text(res, "DescribeLoadBalancersResult/NextMarker")
            if not marker:
                return out
            params["Marker"] = marker
        raise TransientError(f"aws: more than {MAX_PAGES} pages of load balancers", hint="report this bug")

    def _tags(self, names: list[str]) -> dict[str, dict[str, str]]:
        out: dict[str, dict[str, str]] = {}
        for start in range(0, len(names), 20):            # DescribeTags takes 20 names at most
            chunk = names[start:start + 20]
            params = {"Action": "DescribeTags", **{f"LoadBalancerNames.member.{i}": n
                                                   for i, n in enumerate(chunk, 1)}}
            res = self._request(params)
            for desc in _find(res, "DescribeTagsResult/TagDescriptions/member"):
                out[_text(desc, "LoadBalancerName")] = {_text(t, "Key"): _text(t, "Value")
                                                        for t in _find(desc, "Tags/member")}
        return out

    def _objects(self, found: list[Any]) -> list[CloudObject]:
        names = [_text(el, "LoadBalancerName") for el in found]
        tags = self._tags(names) if names else {}
        out = []
        for el, name in zip(found, names, strict=True):
            mine = tags.get(name, {})
            members = sorted(_text(m, "InstanceId") for m in _find(el, "Instances/member"))
            attrs = {"dns_name": _text(el, "DNSName"), "members": members}
            out.append(CloudObject("load_balancer", mine.get(TAG_ID, ""), name, mine, attrs, name))
        return out

    def list_owned(self, owner: str) -> list[CloudObject]:
        """Every balancer tagged with `owner` (DescribeLoadBalancers, then DescribeTags by 20)."""
        return [o for o in self._objects(self._describe()) if o.rid and o.tags.get(TAG_OWNER) == owner]

    def refresh(self, name: str) -> CloudObject | None:
        """A balancer by name, None when gone."""
        from libcloud.common.exceptions import BaseHTTPError

        try:
            found = self._objects(self._describe([name]))
        except BaseHTTPError as err:
            if "LoadBalancerNotFound" in str(err) or getattr(err, "code", 0) == 400:
                return None
            raise
        except Exception as err:           # libcloud raises a plain Exception for this API's error answers
            if "LoadBalancerNotFound" in str(err):
                return None
            raise
        return found[0] if found else None

    def create(self, rid: str, spec: Mapping[str, Any], tags: Mapping[str, str], resolve: Resolve,
               region: str) -> CloudObject:
        """CreateLoadBalancer with its listeners, zones and tags in one call, then its members registered."""
        name = balancer_name(tags[TAG_OWNER], rid)
        params = {"Action": "CreateLoadBalancer", "LoadBalancerName": name}
        for i, lst in enumerate(spec.get("listeners", ()), 1):
            params[f"Listeners.member.{i}.Protocol"] = str(lst.get("protocol", "tcp")).upper()
            params[f"Listeners.member.{i}.LoadBalancerPort"] = str(lst["port"])
            params[f"Listeners.member.{i}.InstancePort"] = str(lst["instance_port"])
        for i, zone in enumerate(spec.get("zones") or [f"{region}a"], 1):
            params[f"AvailabilityZones.member.{i}"] = str(zone)
        for i, (k, v) in enumerate(tags.items(), 1):
            params[f"Tags.member.{i}.Key"], params[f"Tags.member.{i}.Value"] = k, v
        self._request(params)
        servers = [resolve("server", str(s)).native_id for s in spec.get("servers", ())]
        if servers:
            self._members("RegisterInstancesWithLoadBalancer", name, servers)
        return self.refresh(name) or CloudObject("load_balancer", rid, name, dict(tags), {}, name)

    def sync(self, obj: CloudObject, spec: Mapping[str, Any], resolve: Resolve) -> list[str]:
        """Members to the spec's servers: a replaced server's new instance registered, instances that are no
        member (the replaced one, one added behind Stratum's back) deregistered. What it changed."""
        wanted = {resolve("server", str(s)).native_id for s in spec.get("servers", ())}
        have = {str(m) for m in obj.attrs.get("members", ())}
        done = []
        if wanted - have:
            self._members("RegisterInstancesWithLoadBalancer", obj.native_id, sorted(wanted - have))
            done.append("registered " + " ".join(sorted(wanted - have)))
        if have - wanted:
            self._members("DeregisterInstancesFromLoadBalancer", obj.native_id, sorted(have - wanted))
            done.append("deregistered " + " ".join(sorted(have - wanted)))
        return [f"members ({'; '.join(done)})"] if done else []

    def _members(self, action: str, name: str, instances: list[str]) -> None:
        params = {"Action": action, "LoadBalancerName": name}
        params.update({f"Instances.member.{i}.InstanceId": s for i, s in enumerate(instances, 1)})
        self._request(params)

    def destroy(self, name: str) -> None:
        """DeleteLoadBalancer."""
        self._request({"Action": "DeleteLoadBalancer", "LoadBalancerName": name})

    def set_tags(self, name: str, tags: Mapping[str, str], remove: list[str]) -> None:
        """AddTags (and RemoveTags for `remove`)."""
        params = {"Action": "AddTags", "LoadBalancerNames.member.1": name}
        for i, (k, v) in enumerate(tags.items(), 1):
            params[f"Tags.member.{i}.Key"], params[f"Tags.member.{i}.Value"] = k, v
        self._request(params)
        if remove:
            params = {"Action": "RemoveTags", "LoadBalancerNames.member.1": name}
            params.update({f"Tags.member.{i}.Key": k for i, k in enumerate(remove, 1)})
            self._request(params)
