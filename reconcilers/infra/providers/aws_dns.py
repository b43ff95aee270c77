"""AWS DNS records (Route 53) through libcloud's Route53 DNS driver: its signed connection, API version, XML
namespace and zone parsing; the aws backend (aws.py) hands `dns_record` resources here.

Zones are found by name and must exist (Stratum creates no zones). A record is one Route 53 record set: a name
and a type with all its values.

Ownership: Route 53 records cannot be tagged, so each record set Stratum owns has a *marker*, a TXT record set
at `_stratum-<type>.<name>` in the same zone holding the tags as TXT strings (`"stratum:owner=ops"`
`"stratum:id=www"` `"stratum:spec=..."` and the user's `"key=value"`). A prefixed name, not a TXT at the same
name: a CNAME allows no other record beside it, and the user may own a TXT there. A record set without our
marker is never changed or deleted: creating over it is refused, naming it, with how to import it. The record
and its marker are created, changed and deleted together, in one change batch (Route 53 applies a batch
atomically), so no record of ours exists untracked even for a moment.

Listing reads every page of every zone that holds more than its NS and SOA records: one ListHostedZones call
per 100 zones and one ListResourceRecordSets call per 100 record sets. It runs only in an observe pass that has
DNS records to look at (the adapter lists `lazy_kinds` on first use).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from reconcilers.errors import TerminalError, TransientError
from reconcilers.infra.providers.cloud import CloudObject, driver_of
from reconcilers.infra.providers.cloud_diff import TAG_ID, TAG_OWNER

MAX_PAGES = 1000
MARKER = "_stratum-"
MARKER_TTL = 300
_STRING = re.compile(r'"((?:[^"\\]|\\.)*)"')


def dns_driver(conf: Mapping[str, Any], key: str, secret: str) -> Any:
    """libcloud's Route53 driver; `dns_host`/`dns_port` (else `host`/`port`) and `secure` point it at an
    AWS-compatible endpoint."""
    from libcloud.dns.providers import get_driver
    from libcloud.dns.types import Provider

    extra: dict[str, Any] = {}
    for opt in ("host", "port"):
        if f"dns_{opt}" in conf or opt in conf:
            extra[opt] = conf.get(f"dns_{opt}", conf.get(opt))
    if "secure" in conf:
        extra["secure"] = bool(conf["secure"])
    driver: Any = get_driver(Provider.ROUTE53)(key, secret, **extra)
    driver.connection.timeout = float(conf.get("timeout", 60))   # every call bounded, as for EC2
    return driver


def _ns() -> str:
    from libcloud.dns.drivers import route53

    return str(route53.NAMESPACE)               # read when called: it is libcloud's module setting


def _root() -> str:
    from libcloud.dns.drivers import route53

    return str(route53.API_ROOT)


def _find(el: Any, path: str) -> list[Any]:
    ns = _ns()
    return list(el.findall("/".join(f"{{{ns}}}{p}" for p in path.split("/"))))


def _text(el: Any, path: str) -> str:
    found = _find(el, path)
    return str(found[0].text or "") if found else ""


def _quote(s: str) -> str:
    return '"' + s.replace("\\", "\\\\").replace('"', '\\"') + '"'


def marker_value(tags: Mapping[str, str]) -> str:
    """The marker's TXT value: one string per tag (each at most 255 characters, as DNS allows)."""
    parts = [f"{k}={v}" for k, v in sorted(tags.items())]
    long = [p for p in parts if len(p) > 255]
    if long:
        raise TerminalError(f"a DNS record's tag is longer than 255 characters ({long[0][:40]}...)",
                            hint="shorten the tag: Route 53 keeps a record's tags in a TXT marker record")
    return " ".join(_quote(p) for p in parts)


def marker_tags(value: str) -> dict[str, str]:
    """The tags a marker's TXT value holds."""
    out = {}
    for s in _STRING.findall(value):
        k, _, v = re.sub(r"\\(.)", r"\1", s).partition("=")
        out[k] = v
    return out


def _norm(name: str) -> str:
    """A DNS name as compared: lower case, no trailing dot, Route 53's octal escape of `*` undone."""
    return name.replace("\\052", "*").rstrip(".").lower()


def fqdn(name: str, zone: str) -> str:
    """The full name of `name` in `zone` ("" is the zone's apex), with the trailing dot."""
    return f"{name}.{_norm(zone)}." if name else f"{_norm(zone)}."


def _values(rtype: str, values: list[str]) -> list[str]:
    """The values as compared: TXT strings without their quotes, sorted (Route 53 keeps no order)."""
    if rtype == "TXT":
        values = [v[1:-1] if len(v) >= 2 and v[0] == v[-1] == '"' else v for v in values]
    return sorted(values)


class Records:
    """DNS record sets of one account (the calling thread's Route53 driver)."""

    def __init__(self, driver: Any) -> None:
        self._driver = driver                 # a driver, or a PerThread making one per thread

    @property
    def driver(self) -> Any:
        """The libcloud driver of the calling thread."""
        return driver_of(self._driver)

    def _get(self, path: str, params: dict[str, str] | None = None) -> Any:
        return self.driver.connection.request(_root() + path, params=params or {}).object

    # -- zones and record sets -------------------------------------------------------------------------
    def zones(self) -> list[Any]:
        """Every hosted zone (libcloud's Zone objects), every page (`marker`/`NextMarker`)."""
        params = {"maxitems": "100"}
        out: list[Any] = []
        for _ in range(MAX_PAGES):
            res = self._get("hostedzone", params)
            out += [self.driver._to_zone(el) for el in _find(res, "HostedZones/HostedZone")]
            marker = _text(res, "NextMarker")
            if _text(res, "IsTruncated") != "true" or not marker:
                return out
            params["marker"] = marker
        raise TransientError(f"aws: more than {MAX_PAGES} pages of hosted zones", hint="report this bug")

    def zone(self, name: str, rid: str) -> Any:
        """The hosted zone named `name` (raises naming the resource when there is none, or two)."""
        found = [z for z in self.zones() if _norm(z.domain) == _norm(name)]
        if len(found) != 1:
            why = "no hosted zone" if not found else f"{len(found)} hosted zones (public and private?) named"
            raise TerminalError(f"aws: {why} {_norm(name)} for dns_record {rid}",
                                hint="Stratum creates no zones: create it in Route 53, or fix the record's "
                                     "`zone`" if not found else "keep one zone of that name in the account")
        return found[0]

    def record_sets(self, zone: Any, start: tuple[str, str] | None = None, limit: int = 0) -> list[dict[str, Any]]:
        """Record sets of a zone as {name, type, ttl, values, set_id}, every page (or the first `limit`
        from `start`, a (name, type))."""
        params = {"maxitems": str(min(limit, 100) if limit else 100)}
        if start:
            params.update(name=start[0], type=start[1])
        out: list[dict[str, Any]] = []
        for _ in range(MAX_PAGES):
            res = self._get(f"hostedzone/{zone.id}/rrset", params)
            for el in _find(res, "ResourceRecordSets/ResourceRecordSet"):
                out.append({"name": _norm(_text(el, "Name")), "type": _text(el, "Type"),
                            "ttl": int(_text(el, "TTL") or 0), "set_id": _text(el, "SetIdentifier"),
                            "values": [_text(v, "Value") for v in _find(el, "ResourceRecords/ResourceRecord")]})
            if _text(res, "IsTruncated") != "true" or (limit and len(out) >= limit):
                return out
            params = {"maxitems": params["maxitems"], "name": _text(res, "NextRecordName"),
                      "type": _text(res, "NextRecordType")}
            if _text(res, "NextRecordIdentifier"):
                params["identifier"] = _text(res, "NextRecordIdentifier")
        raise TransientError(f"aws: more than {MAX_PAGES} pages of records in zone {zone.domain}",
                             hint="report this bug")

    def _objects(self, zone: Any, sets: list[dict[str, Any]], owner: str | None) -> list[CloudObject]:
        """The record sets of ours (`owner`; None: every marked one) with their markers' tags."""
        by_key = {(s["name"], s["type"]): s for s in sets if not s["set_id"]}
        out = []
        for (name, rtype), s in by_key.items():
            if rtype != "TXT" or not name.startswith(MARKER):
                continue
            tags = marker_tags(" ".join(s["values"]))
            if not tags.get(TAG_ID) or (owner is not None and tags.get(TAG_OWNER) != owner):
                continue
            label, _, rest = name.partition(".")
            record = by_key.get((rest, label[len(MARKER):].upper()))
            if record is not None:
                out.append(self._object(zone, record, tags, s))
        return out

    def _object(self, zone: Any, s: Mapping[str, Any], tags: Mapping[str, str],
                marker: Mapping[str, Any] | None) -> CloudObject:
        domain = _norm(zone.domain)
        name = "" if s["name"] == domain else s["name"][: -len(domain) - 1]
        attrs = {"zone": domain, "name": name, "record_type": s["type"], "ttl": s["ttl"],
                 "values": _values(s["type"], list(s["values"]))}
        raw = {"zone": zone, "set": dict(s), "marker": dict(marker) if marker else None}
        return CloudObject("dns_record", tags.get(TAG_ID, ""), f"{zone.id}:{s['type']}:{name}", dict(tags),
                           attrs, raw)

    def list_owned(self, owner: str) -> list[CloudObject]:
        """Every record set marked as `owner`'s, in every zone holding more than its NS and SOA."""
        out: list[CloudObject] = []
        for zone in self.zones():
            if int(zone.extra.get("ResourceRecordSetCount") or 3) > 2:
                out += self._objects(zone, self.record_sets(zone), owner)
        return out

    def _pair(self, zone: Any, name: str, rtype: str) -> tuple[dict[str, Any] | None, dict[str, Any] | None]:
        """The record set (name, type) and its marker, as the API has them now (two short reads)."""
        full, mark = _norm(fqdn(name, zone.domain)), _norm(fqdn(f"{MARKER}{rtype.lower()}.{name}".rstrip("."),
                                                                zone.domain))
        found = [s for s in self.record_sets(zone, (full, rtype), 1) if not s["set_id"]]
        record = next((s for s in found if (s["name"], s["type"]) == (full, rtype)), None)
        found = self.record_sets(zone, (mark, "TXT"), 1)
        marker = next((s for s in found if (s["name"], s["type"]) == (mark, "TXT") and not s["set_id"]), None)
        return record, marker

    def refresh(self, obj: CloudObject) -> CloudObject | None:
        """The record set now, None when it or its marker is gone."""
        zone = obj.raw["zone"] if isinstance(obj.raw, dict) else self._zone_of(obj.native_id)
        _, rtype, name = obj.native_id.split(":", 2)
        record, marker = self._pair(zone, name, rtype)
        if record is None or marker is None:
            return None
        return self._object(zone, record, marker_tags(" ".join(marker["values"])), marker)

    def _zone_of(self, ref: str) -> Any:
        head = ref.split(":", 1)[0]
        found = [z for z in self.zones() if head in (z.id, _norm(z.domain))]
        if not found:
            raise TerminalError(f"aws: no hosted zone {head}", hint="name the zone by its id or name: ZONE:TYPE:name")
        return found[0]

    def get(self, native_id: str) -> CloudObject | None:
        """A record set by `ZONE:TYPE:name` (ZONE an id or a name; "" is the apex), ours or not."""
        if native_id.count(":") < 2:
            raise TerminalError(f"aws: {native_id!r} is not a DNS record id",
                                hint="name it ZONE:TYPE:name, e.g. example.com:A:www (example.com:A: for the apex)")
        zone = self._zone_of(native_id)
        _, rtype, name = native_id.split(":", 2)
        record, marker = self._pair(zone, name, rtype.upper())
        if record is None:
            return None
        return self._object(zone, record, marker_tags(" ".join(marker["values"])) if marker else {}, marker)

    # -- changes ---------------------------------------------------------------------------------------
    def _change(self, zone: Any, changes: list[tuple[str, str, str, int, list[str]]]) -> None:
        """One ChangeResourceRecordSets batch of (action, full name, type, ttl, values): all or nothing."""
        import xml.etree.ElementTree as ET  # what libcloud's own driver builds its batches with

        root = ET.Element("ChangeResourceRecordSetsRequest", {"xmlns": _ns()})
        batch = ET.SubElement(ET.SubElement(root, "ChangeBatch"), "Changes")
        for action, name, rtype, ttl, values in changes:
            change = ET.SubElement(batch, "Change")
            ET.SubElement(change, "Action").text = action
            rrs = ET.SubElement(change, "ResourceRecordSet")
            ET.SubElement(rrs, "Name").text = name
            ET.SubElement(rrs, "Type").text = rtype
            ET.SubElement(rrs, "TTL").text = str(ttl)
            records = ET.SubElement(rrs, "ResourceRecords")
            for v in values:
                ET.SubElement(ET.SubElement(records, "ResourceRecord"), "Value").text = v
        self.driver.connection.set_context({"zone_id": zone.id})
        self.driver.connection.request(f"{_root()}hostedzone/{zone.id}/rrset", method="POST",
                                       data=ET.tostring(root))

    @staticmethod
    def _wire(spec: Mapping[str, Any]) -> list[str]:
        rtype = str(spec.get("record_type", "A"))
        values = [str(v) for v in spec.get("values", ())]
        return [v if rtype != "TXT" or v.startswith('"') else _quote(v) for v in values]

    def create(self, rid: str, spec: Mapping[str, Any], tags: Mapping[str, str]) -> CloudObject:
        """The record set and its marker in one batch; refused when a record set of that name and type exists
        without our marker (it is someone else's)."""
        name, rtype, ttl = str(spec.get("name", "")), str(spec.get("record_type", "A")), int(spec.get("ttl", 300))
        if name.startswith(MARKER) or f".{MARKER}" in name:
            raise TerminalError(f"dns_record {rid}: names starting {MARKER} are Stratum's ownership markers",
                                hint="choose another name")
        zone = self.zone(str(spec["zone"]), rid)
        record, marker = self._pair(zone, name, rtype)
        owner = marker_tags(" ".join(marker["values"])).get(TAG_OWNER) if marker else None
        full = fqdn(name, zone.domain)
        if marker is not None and owner != tags[TAG_OWNER]:
            raise TerminalError(f"aws: {rtype} record {_norm(full)} belongs to another Stratum ({owner})",
                                hint="manage it from the repository that owns it")
        if record is not None and marker is None:
            raise TerminalError(
                f"aws: a {rtype} record {_norm(full)} exists that Stratum does not own; it is left untouched",
                hint=f"adopt it: stratum infra import aws {zone.id}:{rtype}:{name} --kind "
                                           f"dns_record --as {rid}, or delete it in Route 53, or pick another name")
        changes = [("CREATE", full, rtype, ttl, self._wire(spec))]
        mark = fqdn(f"{MARKER}{rtype.lower()}.{name}".rstrip("."), zone.domain)
        if marker is not None:                # ours, its record deleted behind our back: the marker is renewed
            changes.append(("DELETE", mark, "TXT", marker["ttl"], marker["values"]))
        changes.append(("CREATE", mark, "TXT", MARKER_TTL, [marker_value(tags)]))
        self._change(zone, changes)
        s = {"name": _norm(full), "type": rtype, "ttl": ttl, "values": self._wire(spec), "set_id": ""}
        return self._object(zone, s, tags, {"name": _norm(mark), "ttl": MARKER_TTL, "values": [marker_value(tags)]})

    def destroy(self, obj: CloudObject) -> None:
        """The record set and its marker, in one batch (exactly as listed: Route 53 deletes only an exact
        match)."""
        fresh = self.refresh(obj)
        if fresh is None:
            return
        zone, s, marker = fresh.raw["zone"], fresh.raw["set"], fresh.raw["marker"]
        self._change(zone, [("DELETE", f"{s['name']}.", s["type"], s["ttl"], s["values"]),
                            ("DELETE", f"{marker['name']}.", "TXT", marker["ttl"], marker["values"])])

    def set_tags(self, obj: CloudObject, tags: Mapping[str, str], remove: list[str]) -> None:
        """Rewrite the marker: `tags` over the current ones, `remove` left out (an import writes the first)."""
        zone = obj.raw["zone"]
        _, rtype, name = obj.native_id.split(":", 2)
        _, marker = self._pair(zone, name, rtype)
        kept = marker_tags(" ".join(marker["values"])) if marker else {}
        new = {k: v for k, v in {**kept, **tags}.items() if k not in remove}
        if marker is not None and new == kept:
            return                            # the marker says it already (a values-only change)
        mark = fqdn(f"{MARKER}{rtype.lower()}.{name}".rstrip("."), zone.domain)
        changes = [("DELETE", mark, "TXT", marker["ttl"], marker["values"])] if marker else []
        self._change(zone, [*changes, ("CREATE", mark, "TXT", MARKER_TTL, [marker_value(new)])])

    def sync(self, obj: CloudObject, spec: Mapping[str, Any]) -> list[str]:
        """Values and TTL changed in place: the old set deleted and the new one created in one batch."""
        want_values = _values(str(spec.get("record_type", "A")), self._wire(spec))
        ttl = int(spec.get("ttl", 300))
        if list(obj.attrs.get("values", ())) == want_values and int(obj.attrs.get("ttl", 0)) == ttl:
            return []
        fresh = self.refresh(obj) or obj
        s = fresh.raw["set"]
        self._change(fresh.raw["zone"], [("DELETE", f"{s['name']}.", s["type"], s["ttl"], s["values"]),
                                         ("CREATE", f"{s['name']}.", s["type"], ttl, self._wire(spec))])
        return [f"values ({' '.join(want_values)}, ttl {ttl})"]
