"""AWS through libcloud's EC2 driver: servers (EC2 instances), networks (VPCs), subnets, firewalls (security
groups, ingress rules) and volumes (EBS, attached to a server).

Objects are created *with* their tags (`TagSpecification` in the create call), so nothing Stratum makes exists
untagged even for a moment: an apply that dies after the create is found by its tags at the next observe.
Indexed parameters are numbered from 1 as the EC2 API reference documents them (libcloud's own tag helper
numbers from 0, which AWS happens to accept but AWS-compatible endpoints need not).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

from reconcilers.errors import SettingsError, TerminalError, TransientError
from reconcilers.infra.providers.aws_dns import Records
from reconcilers.infra.providers.aws_elb import Balancers
from reconcilers.infra.providers.aws_listing import listed_fast
from reconcilers.infra.providers.catalog import Entry
from reconcilers.infra.providers.cloud import CloudObject, Resolve, driver_of
from reconcilers.infra.providers.cloud_diff import GONE_STATES, TAG_ID, TAG_OWNER, rule_key, rule_keys

MAX_PAGES = 1000
_RESOURCE_TYPE = {"server": "instance", "network": "vpc", "subnet": "subnet", "firewall": "security-group",
                  "volume": "volume"}
# kind -> (Describe action, item path in the answer, filter by id, largest page the API allows). Objects are
# asked for by an id *filter*: an id parameter naming a deleted object is an error (InvalidGroup.NotFound, ...),
# a filter simply matches nothing.
_DESCRIBE = {"network": ("DescribeVpcs", "vpcSet/item", "vpc-id", 1000),
             "subnet": ("DescribeSubnets", "subnetSet/item", "subnet-id", 1000),
             "firewall": ("DescribeSecurityGroups", "securityGroupInfo/item", "group-id", 1000),
             "volume": ("DescribeVolumes", "volumeSet/item", "volume-id", 500)}


def credentials(name: str, conf: Mapping[str, Any]) -> tuple[str, str]:
    """(access key, secret) from the settings or the environment variables they name."""
    key = conf.get("key") or os.environ.get(str(conf.get("key_env", "AWS_ACCESS_KEY_ID")), "")
    secret = conf.get("secret") or os.environ.get(str(conf.get("secret_env", "AWS_SECRET_ACCESS_KEY")), "")
    if not key or not secret:
        raise SettingsError(f"provider {name}: no AWS credentials",
                            hint=f"set key and secret in [infra.providers.{name}] of stratumd.toml, or "
                                 "AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY in the daemon's environment")
    return str(key), str(secret)


def driver_from_settings(name: str, conf: Mapping[str, Any]) -> Any:
    """A libcloud EC2 driver from host settings (`key`/`secret`, or the environment variables named by
    `key_env`/`secret_env`, AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY by default); `host`/`port`/`secure` point
    it at an AWS-compatible endpoint."""
    from libcloud.compute.providers import get_driver
    from libcloud.compute.types import Provider as Kind

    key, secret = credentials(name, conf)
    # Every API call is bounded (seconds); a call that times out is a TransientError, retried then rolled back.
    extra: dict[str, Any] = {"region": str(conf.get("region", "us-east-1")), "signature_version": "4",
                             "timeout": float(conf.get("timeout", 60))}
    for opt in ("host", "port", "secure"):
        if opt in conf:
            extra[opt] = conf[opt]
    return get_driver(Kind.EC2)(key, secret, **extra)


class AwsBackend:
    """The cloud Backend (reconcilers/infra/providers/cloud.py) for EC2."""

    kinds = frozenset({"server", "network", "subnet", "firewall", "volume"})

    lazy_kinds = frozenset({"dns_record"})    # listed only by an observe pass that looks at one

    def __init__(self, driver: Any, balancers: Balancers | None = None, records: Records | None = None) -> None:
        self._driver = driver                 # a driver, or a PerThread making one per apply thread
        self.region: str = str(getattr(self.driver, "region_name", "") or "us-east-1")
        self.balancers = balancers            # load balancers (ELB), when the settings allow them
        self.records = records                # DNS records (Route 53), when the settings allow them
        self.kinds = AwsBackend.kinds | ({"load_balancer"} if balancers is not None else set()) | (
            {"dns_record"} if records is not None else set())

    @property
    def driver(self) -> Any:
        """The libcloud driver of the calling thread."""
        return driver_of(self._driver)

    # -- requests ------------------------------------------------------------------------------------
    def _request(self, params: dict[str, str]) -> Any:
        from libcloud.compute.drivers import ec2

        res = self.driver.connection.request(self.driver.path, params=params).object
        # libcloud reads only elements in its namespace: an answer in another one would read as "nothing
        # there", and every plan would create everything again. Refused instead, saying why.
        tag = str(getattr(res, "tag", ""))
        ns = tag[1:tag.index("}")] if tag.startswith("{") else ""
        if ns != ec2.NAMESPACE:
            raise TerminalError(f"aws: the endpoint answers in XML namespace {ns!r}, not EC2's {ec2.NAMESPACE!r}",
                                hint="point the provider at AWS or an endpoint that answers as EC2 does (moto "
                                     "differs: see the README's cloud section)")
        return res

    @staticmethod
    def _find(element: Any, xpath: str) -> list[Any]:
        from libcloud.compute.drivers import ec2

        # The namespace is read when called (not imported as a name): it is libcloud's module setting.
        return list(element.findall("/".join(f"{{{ec2.NAMESPACE}}}{part}" for part in xpath.split("/"))))

    @staticmethod
    def _tag_spec(kind: str, tags: Mapping[str, str]) -> dict[str, str]:
        params = {"TagSpecification.1.ResourceType": _RESOURCE_TYPE[kind]}
        for i, (k, v) in enumerate(tags.items(), 1):
            params[f"TagSpecification.1.Tag.{i}.Key"] = k
            params[f"TagSpecification.1.Tag.{i}.Value"] = v
        return params

    # -- listing -------------------------------------------------------------------------------------
    def _nodes(self, filters: dict[str, str] | None = None, ids: list[str] | None = None) -> list[Any]:
        """DescribeInstances alone: libcloud's list_nodes also describes every elastic IP (a second call per
        listing) to fill public addresses, which nothing here reads."""
        params = {"Action": "DescribeInstances"}
        if ids:
            params.update(self.driver._pathlist("InstanceId", ids))
        else:
            params["MaxResults"] = "1000"     # the API's largest page (it cannot be combined with ids)
        if filters:
            params.update(self.driver._build_filters(filters))
        nodes: list[Any] = []
        for _ in range(MAX_PAGES):
            res = self._request(params)
            for rs in self._find(res, "reservationSet/item"):
                nodes += self.driver._to_nodes(rs, "instancesSet/item")
            token = [t.text for t in self._find(res, "nextToken") if t.text]
            if not token:
                return nodes
            # Paginated: the API may answer a page and a token even without MaxResults (moto does, by 100).
            params["NextToken"] = token[0]
        raise TransientError(f"aws: more than {MAX_PAGES} pages of instances", hint="report this bug")

    def _describe(self, kind: str, filters: dict[str, str] | None = None, native_id: str = "") -> list[Any]:
        """Describe* of a kind other than servers, every page read: the API answers at most MaxResults items
        and a `nextToken` (AWS may page even when asked for none; libcloud's own listings read one page)."""
        action, item_path, id_filter, page = _DESCRIBE[kind]
        d = self.driver
        params = {"Action": action, "MaxResults": str(page)}     # the API's largest page
        if native_id:
            filters = {**(filters or {}), id_filter: native_id}
        if filters:
            params.update(d._build_filters(filters))
        parse = {"network": d._to_network, "subnet": d._to_subnet, "firewall": d._to_security_group,
                 "volume": d._to_volume}[kind]
        out: list[Any] = []
        for _ in range(MAX_PAGES):
            res = self._request(params)
            out += [parse(el) for el in self._find(res, item_path)]
            token = [t.text for t in self._find(res, "nextToken") if t.text]
            if not token:
                return out
            params["NextToken"] = token[0]
        raise TransientError(f"aws: more than {MAX_PAGES} pages of {action}", hint="report this bug")

    def _list(self, kind: str, filters: dict[str, str]) -> list[CloudObject]:
        raw = self._nodes(filters) if kind == "server" else self._describe(kind, filters)
        out = [self._object(kind, r) for r in raw]
        return [o for o in out if o.rid and str(o.attrs.get("state", "")) not in GONE_STATES]

    def list_owned(self, owner: str) -> list[CloudObject]:
        """Every object tagged `stratum:owner=owner`: one describe call per kind, one after the other (tried
        five at once: against moto on two loaded cores the no-op plan of 420 resources took 4.4 s instead of
        2.1 s, the emulator being CPU-bound; bench/cloud.py)."""
        out: list[CloudObject] = []
        for kind in ("network", "subnet", "firewall"):
            out += self._list(kind, {f"tag:{TAG_OWNER}": owner})
        out += listed_fast(self, owner)
        if self.balancers is not None:
            out += self.balancers.list_owned(owner)
        return out

    def list_kind(self, kind: str, owner: str) -> list[CloudObject]:
        """The objects of a lazy kind (DNS records) tagged with `owner`."""
        return self.records.list_owned(owner) if kind == "dns_record" and self.records is not None else []

    def find(self, kind: str, owner: str, rid: str) -> CloudObject | None:
        """The object of `kind` tagged with `owner` and `rid`."""
        if kind == "dns_record" and self.records is not None:
            return next((o for o in self.records.list_owned(owner) if o.rid == rid), None)
        if kind == "load_balancer" and self.balancers is not None:
            return next((o for o in self.balancers.list_owned(owner) if o.rid == rid), None)
        found = self._list(kind, {f"tag:{TAG_OWNER}": owner, f"tag:{TAG_ID}": rid})
        return found[0] if found else None

    def refresh(self, obj: CloudObject) -> CloudObject | None:
        """The object now (by its AWS id), None when gone."""
        if obj.kind == "load_balancer" and self.balancers is not None:
            return self.balancers.refresh(obj.native_id)
        if obj.kind == "dns_record" and self.records is not None:
            return self.records.refresh(obj) if isinstance(obj.raw, dict) else self.records.get(obj.native_id)
        if obj.kind == "server":
            raw: list[Any] = self._nodes(ids=[obj.native_id])
        else:
            raw = self._describe(obj.kind, native_id=obj.native_id)
        return self._object(obj.kind, raw[0]) if raw else None

    def _object(self, kind: str, raw: Any) -> CloudObject:
        extra: dict[str, Any] = dict(getattr(raw, "extra", {}) or {})
        tags = {str(k): str(v) for k, v in dict(extra.get("tags") or {}).items()}
        attrs: dict[str, Any] = {}
        if kind == "server":
            attrs = {"size": extra.get("instance_type"), "image": extra.get("image_id"),
                     "state": str(raw.state), "zone": extra.get("availability")}
        elif kind == "network":
            attrs = {"cidr": raw.cidr_block, "state": extra.get("state")}
        elif kind == "subnet":
            attrs = {"cidr": extra.get("cidr_block"), "zone": extra.get("zone"), "state": extra.get("state")}
        elif kind == "volume":
            attrs = {"size_gb": raw.size, "zone": extra.get("zone"), "state": extra.get("state"),
                     "attached_to": extra.get("instance_id")}
        elif kind == "firewall":
            attrs = {"rules": sorted({rule_key(p, ports, c) for p, ports, c, _, _ in _ingress(raw)})}
        clean = {k: v for k, v in attrs.items() if v not in (None, "")}
        return CloudObject(kind, tags.get(TAG_ID, ""), str(raw.id), tags, clean, raw)

    # -- changes -------------------------------------------------------------------------------------
    def create(self, kind: str, rid: str, spec: Mapping[str, Any], tags: Mapping[str, str],
               resolve: Resolve) -> CloudObject:
        """Create one object, tagged in the same call."""
        named = {"Name": rid, **tags}
        d = self.driver
        if kind == "load_balancer" and self.balancers is not None:
            return self.balancers.create(rid, spec, tags, resolve, self.region)
        if kind == "dns_record" and self.records is not None:
            return self.records.create(rid, spec, tags)
        if kind == "network":
            res = self._request({"Action": "CreateVpc", "CidrBlock": str(spec["cidr"]), "InstanceTenancy": "default",
                                 **self._tag_spec(kind, named)})
            return self._object(kind, d._to_network(self._find(res, "vpc")[0]))
        if kind == "subnet":
            net = resolve("network", str(spec["network"]))
            res = self._request({"Action": "CreateSubnet", "VpcId": net.native_id, "CidrBlock": str(spec["cidr"]),
                                 "AvailabilityZone": str(spec.get("zone") or f"{self.region}a"),
                                 **self._tag_spec(kind, named)})
            return self._object(kind, d._to_subnet(self._find(res, "subnet")[0]))
        if kind == "firewall":
            return self._create_firewall(rid, spec, named, resolve)
        if kind == "volume":
            res = self._request({"Action": "CreateVolume", "Size": str(spec["size_gb"]),
                                 "AvailabilityZone": str(spec.get("zone") or f"{self.region}a"),
                                 "VolumeType": str(spec.get("volume_type", "standard")),
                                 **self._tag_spec(kind, named)})
            volume = self._object(kind, d._to_volume(res, name=rid))
            if spec.get("server"):
                server = resolve("server", str(spec["server"]))
                d.attach_volume(server.raw, volume.raw, str(spec.get("device", "/dev/sdf")))
            return volume
        return self._create_server(rid, spec, tags, resolve)

    def _create_firewall(self, rid: str, spec: Mapping[str, Any], tags: Mapping[str, str],
                         resolve: Resolve) -> CloudObject:
        params = {"Action": "CreateSecurityGroup", "GroupName": f"{rid}-{tags[TAG_OWNER]}"[:255],
                  "GroupDescription": str(spec.get("description") or f"stratum firewall {rid}"),
                  **self._tag_spec("firewall", tags)}
        if spec.get("network"):
            params["VpcId"] = resolve("network", str(spec["network"])).native_id
        res = self._request(params)
        group_id = self._find(res, "groupId")[0].text
        for key in rule_keys(spec.get("rules")):
            self._authorize(group_id, key)
        return self._object("firewall", self._describe("firewall", native_id=str(group_id))[0])

    def _authorize(self, group_id: str, key: str) -> None:
        proto, ports, cidr = key.split(":", 2)
        low, _, high = ("0-65535" if ports == "*" else ports).partition("-")
        self.driver.ex_authorize_security_group_ingress(group_id, int(low), int(high), cidr_ips=[cidr],
                                                        protocol="-1" if proto == "all" else proto)

    def sync(self, obj: CloudObject, spec: Mapping[str, Any], resolve: Resolve) -> list[str]:
        """Bring what can change in place to the spec: a firewall's inbound rules (rules added behind
        Stratum's back are revoked, removed ones authorized again), a volume's attachment (to a server that was
        replaced), a DNS record's values and TTL, a load balancer's members. Returns what it changed."""
        if obj.kind == "dns_record" and self.records is not None:
            return self.records.sync(obj, spec)
        if obj.kind == "load_balancer" and self.balancers is not None:
            return self.balancers.sync(obj, spec, resolve)
        if obj.kind == "volume" and spec.get("server"):
            server = resolve("server", str(spec["server"]))
            if obj.attrs.get("attached_to") == server.native_id:
                return []
            if obj.attrs.get("attached_to"):
                self._detach(obj)
            self.driver.attach_volume(server.raw, obj.raw, str(spec.get("device", "/dev/sdf")))
            return [f"attachment (to {server.native_id})"]
        if obj.kind != "firewall":
            return []
        wanted = set(rule_keys(spec.get("rules")))
        done = []
        for proto, ports, cidr, low, high in _ingress(obj.raw):
            key = rule_key(proto, ports, cidr)
            if key not in wanted:
                self.driver.ex_revoke_security_group_ingress(obj.native_id, low, high, cidr_ips=[cidr],
                                                             protocol=proto)
                done.append(f"-{key}")
        for key in sorted(wanted - set(obj.attrs.get("rules", ()))):
            self._authorize(obj.native_id, key)
            done.append(f"+{key}")
        return [f"rules {' '.join(done)}"] if done else []

    def _create_server(self, rid: str, spec: Mapping[str, Any], tags: Mapping[str, str],
                       resolve: Resolve) -> CloudObject:
        from libcloud.compute.base import NodeImage, NodeSize

        d = self.driver
        size = NodeSize(str(spec["size"]), str(spec["size"]), 0, 0, 0, 0.0, d)
        image = NodeImage(str(spec["image"]), str(spec["image"]), d)
        kwargs: dict[str, Any] = {"ex_metadata": dict(tags)}
        if spec.get("subnet"):
            kwargs["ex_subnet"] = resolve("subnet", str(spec["subnet"])).raw
        if spec.get("firewalls"):
            kwargs["ex_security_group_ids"] = [resolve("firewall", str(f)).native_id for f in spec["firewalls"]]
        if spec.get("ssh_key"):
            kwargs["ex_keyname"] = str(spec["ssh_key"])
        if spec.get("user_data"):
            kwargs["ex_userdata"] = str(spec["user_data"])
        nodes = d.create_node(name=rid, size=size, image=image, **kwargs)
        node = nodes[0] if isinstance(nodes, list) else nodes
        return self._object("server", node)

    def destroy(self, obj: CloudObject) -> None:
        """Remove one object (a volume is detached first)."""
        d = self.driver
        if obj.kind == "load_balancer" and self.balancers is not None:
            self.balancers.destroy(obj.native_id)
        elif obj.kind == "dns_record" and self.records is not None:
            self.records.destroy(obj)
        elif obj.kind == "server":
            d.destroy_node(obj.raw)
        elif obj.kind == "volume":
            if obj.attrs.get("attached_to"):
                self._detach(obj)
            d.destroy_volume(obj.raw)
        elif obj.kind == "network":
            d.ex_delete_network(obj.raw)
        elif obj.kind == "subnet":
            d.ex_delete_subnet(obj.raw)
        elif obj.kind == "firewall":
            d.ex_delete_security_group_by_id(obj.native_id)
        else:  # pragma: no cover - the adapter checks kinds first
            raise TerminalError(f"aws cannot destroy a {obj.kind}")

    def _detach(self, obj: CloudObject) -> None:
        """DetachVolume from the instance it is attached to, named (libcloud's detach names none, which the API
        allows; naming it detaches only from the server Stratum saw, and moto needs it)."""
        try:
            self._request({"Action": "DetachVolume", "VolumeId": obj.native_id,
                           "InstanceId": str(obj.attrs["attached_to"]), "Force": "true"})
        except Exception as err:
            if "InvalidAttachment.NotFound" not in str(err):
                raise                         # else: detached since it was listed (its server terminated)

    def set_tags(self, obj: CloudObject, tags: Mapping[str, str], remove: list[str]) -> None:
        """CreateTags (and DeleteTags for `remove`), numbered from 1."""
        if obj.kind == "load_balancer" and self.balancers is not None:
            return self.balancers.set_tags(obj.native_id, tags, remove)
        if obj.kind == "dns_record" and self.records is not None:
            return self.records.set_tags(obj, tags, remove)
        params = {"Action": "CreateTags", "ResourceId.1": obj.native_id}
        for i, (k, v) in enumerate(tags.items(), 1):
            params[f"Tag.{i}.Key"], params[f"Tag.{i}.Value"] = k, v
        self._request(params)
        if remove:
            params = {"Action": "DeleteTags", "ResourceId.1": obj.native_id}
            for i, k in enumerate(remove, 1):
                params[f"Tag.{i}.Key"] = k
            self._request(params)

    def catalog(self) -> list[Entry]:
        """Instance types with libcloud's on-demand prices for the region, and availability zones. Images are
        left out: AWS lists tens of thousands of public AMIs, so image ids are not checked."""
        out = [Entry("size", str(s.id), str(s.name), float(s.price) if s.price not in (None, "") else None)
               for s in self.driver.list_sizes()]
        out += [Entry("zone", str(z.name), str(z.name)) for z in self.driver.ex_list_availability_zones()]
        return out

    def get(self, kind: str, native_id: str) -> CloudObject | None:
        """An object by its AWS id (a DNS record: ZONE:TYPE:name)."""
        if kind == "dns_record" and self.records is not None:
            return self.records.get(native_id)
        return self.refresh(CloudObject(kind, "", native_id))

    def ready(self, obj: CloudObject) -> bool:
        """A server is running; a volume is available or in use; networks, subnets and firewalls at once."""
        state = str(obj.attrs.get("state", ""))
        if obj.kind == "server":
            return state == "running"
        if obj.kind == "volume":
            return state in ("available", "in-use", "inuse")
        return True


def _ingress(group: Any) -> list[tuple[str, str, str, int, int]]:
    """(protocol, "low-high", cidr, low, high) of each CIDR of a security group's inbound permissions, as the
    API reports them (`-1` is every protocol; ports are then absent or -1)."""
    out = []
    for rule in getattr(group, "ingress_rules", None) or ():
        proto = str(rule.get("protocol") or "-1")
        low = int(rule.get("from_port") or 0) if rule.get("from_port") not in (None, "") else 0
        high = int(rule.get("to_port")) if rule.get("to_port") not in (None, "") else 65535
        for cidr in rule.get("cidr_ips") or ():
            out.append((proto, f"{low}-{high}", str(cidr), low, high))
    return out
