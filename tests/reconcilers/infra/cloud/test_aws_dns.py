"""DNS records on aws (Route 53) against moto's Route 53 through libcloud's Route53 DNS driver and the real
pipeline: created with their ownership marker, values changed in place, drift, a record Stratum does not own
left untouched, a missing zone named, import and delete. moto is reached through the loopback proxy's test
scaffolding (conftest.py's docstring says what it rewrites and why)."""

from __future__ import annotations

import uuid
from typing import Any

import pytest

from reconcilers.infra.providers.cloud import CloudProvider
from tests.fixtures import Raw, WorkRepo, infra, resource
from tests.reconcilers.infra.cloud.conftest import CloudStack, FaultProxy


def aws(rid: str, kind: str, **fields: object) -> str:
    """A resource line on the aws provider."""
    return resource(rid, kind, provider=Raw("'aws"), **fields)


@pytest.fixture
def r53(proxy: FaultProxy) -> Any:
    """A libcloud Route53 driver through the proxy: someone acting behind Stratum's back."""
    from libcloud.dns.providers import get_driver
    from libcloud.dns.types import Provider

    return get_driver(Provider.ROUTE53)("test-key", "test-secret", host="127.0.0.1", port=proxy.port, secure=False)


@pytest.fixture
def zone(r53: Any) -> Any:
    """A hosted zone of its own for the test (the moto server is shared by the session)."""
    return r53.create_zone(f"z{uuid.uuid4().hex[:8]}.example.com.")


def sets(r53: Any, zone: Any) -> dict[tuple[str, str], tuple[int, list[str]]]:
    """Every record set of the zone but its NS and SOA: (name, type) -> (ttl, sorted values)."""
    out: dict[tuple[str, str], tuple[int, list[str]]] = {}
    for r in r53.list_records(zone):
        if r.type in ("NS", "SOA"):
            continue
        ttl, values = out.get((r.name, r.type), (r.extra["ttl"], []))
        out[(r.name, r.type)] = (ttl, sorted([*values, r.data]))
    return out


def domain(zone: Any) -> str:
    """The zone's name as a repo writes it."""
    return str(zone.domain).rstrip(".")


def test_a_record_is_created_with_its_marker_changed_in_place_and_deleted(
        cloud: CloudStack, repo: WorkRepo, proxy: FaultProxy, r53: Any, zone: Any) -> None:
    """A two-value A record and a TXT record: created with their markers in one batch each; the next plan is
    empty and reads only listings; new values and TTL change the same record set in place; removing the
    record deletes it and its marker, and the zone's other record (not ours) stays."""
    from libcloud.dns.types import RecordType

    r53.create_record("mail", zone, RecordType.A, "198.51.100.7", extra={"ttl": 60})    # someone else's
    d = domain(zone)
    www = aws("www", "dns_record", zone=d, name="www", values=Raw('["192.0.2.10", "192.0.2.11"]'))
    spf = aws("spf", "dns_record", zone=d, record_type=Raw("'TXT"), values=Raw('["v=spf1 -all"]'))
    repo.commit({"infra/dns.ncl": infra(www, spf)})
    assert sorted(a.summary for a in cloud.pipeline.plan("main").actions) == [
        "create dns_record spf on aws", "create dns_record www on aws"]
    result = cloud.run()
    assert result.status == "succeeded", result.message
    found = sets(r53, zone)
    assert found[("www", "A")] == (300, ["192.0.2.10", "192.0.2.11"])
    assert found[("", "TXT")] == (300, ['"v=spf1 -all"'])
    assert found[("mail", "A")] == (60, ["198.51.100.7"])
    marker = found[("_stratum-a.www", "TXT")][1][0]
    assert f'"stratum:owner={cloud.owner}"' in marker and '"stratum:id=www"' in marker

    before = len(proxy.calls)
    assert cloud.pipeline.plan("main").actions == ()
    assert set(proxy.calls[before:]) <= {"DescribeInstances", "DescribeVolumes", "DescribeVpcs", "DescribeSubnets",
                                         "DescribeSecurityGroups", "DescribeLoadBalancers", "ListHostedZones",
                                         "ListResourceRecordSets"}
    assert "ListResourceRecordSets" in proxy.calls[before:]

    repo.commit({"infra/dns.ncl": infra(
        aws("www", "dns_record", zone=d, name="www", ttl=60, values=Raw('["192.0.2.12"]')), spf)})
    assert [a.summary for a in cloud.pipeline.plan("main").actions] == [
        "update dns_record www on aws in place [values 192.0.2.10 192.0.2.11 -> 192.0.2.12; ttl 300 -> 60]"]
    result = cloud.run()
    assert result.status == "succeeded", result.message
    assert sets(r53, zone)[("www", "A")] == (60, ["192.0.2.12"])
    assert cloud.pipeline.plan("main").actions == ()

    repo.commit({"infra/dns.ncl": infra(spf)})
    result = cloud.run()
    assert result.status == "succeeded", result.message
    assert sorted(sets(r53, zone)) == [("", "TXT"), ("_stratum-txt", "TXT"), ("mail", "A")]


def test_a_record_stratum_does_not_own_is_never_touched(cloud: CloudStack, repo: WorkRepo, r53: Any,
                                                        zone: Any) -> None:
    """A record set of the same name and type that has no marker of ours (someone else's), or another
    Stratum's marker, makes the apply fail naming it (and how to adopt it); the zone is left exactly as it
    was."""
    from libcloud.dns.types import RecordType

    r53.create_record("api", zone, RecordType.A, "198.51.100.1", extra={"ttl": 120})
    before = sets(r53, zone)
    repo.commit({"infra/dns.ncl": infra(aws("api", "dns_record", zone=domain(zone), name="api",
                                            values=Raw('["192.0.2.1"]')))})
    result = cloud.run()
    assert result.status != "succeeded"
    assert f"a A record api.{domain(zone)} exists that Stratum does not own; it is left untouched" in result.message
    assert sets(r53, zone) == before

    # Marked by another Stratum (another owner): refused too, naming that owner.
    r53.create_record("_stratum-a.api", zone, RecordType.TXT, '"stratum:id=api" "stratum:owner=someone-else"',
                      extra={"ttl": 300})
    before = sets(r53, zone)
    result = cloud.run()
    assert result.status != "succeeded"
    assert f"A record api.{domain(zone)} belongs to another Stratum (someone-else)" in result.message
    assert sets(r53, zone) == before


def test_a_missing_zone_is_named_and_drift_is_corrected(cloud: CloudStack, repo: WorkRepo, r53: Any,
                                                        zone: Any) -> None:
    """A record in a zone that does not exist fails naming the zone and the resource; a record changed behind
    Stratum's back is planned back in place, one deleted behind its back is created again."""
    repo.commit({"infra/dns.ncl": infra(aws("www", "dns_record", zone="nowhere.example.org", name="www",
                                            values=Raw('["192.0.2.1"]')))})
    result = cloud.run()
    assert result.status != "succeeded"
    assert "no hosted zone nowhere.example.org for dns_record www" in result.message

    repo.commit({"infra/dns.ncl": infra(aws("www", "dns_record", zone=domain(zone), name="www",
                                            values=Raw('["192.0.2.1"]')))})
    assert cloud.run().status == "succeeded"
    record = next(r for r in r53.list_records(zone) if r.name == "www" and r.type == "A")
    r53.update_record(record, data="203.0.113.9")                         # behind Stratum's back
    assert [a.summary for a in cloud.pipeline.plan("main").actions] == [
        "update dns_record www on aws in place [values 203.0.113.9 -> 192.0.2.1] "
        "[drift: values 203.0.113.9 -> 192.0.2.1]"]
    assert cloud.run().status == "succeeded"
    assert sets(r53, zone)[("www", "A")] == (300, ["192.0.2.1"])

    r53.delete_record(next(r for r in r53.list_records(zone) if r.name == "www" and r.type == "A"))
    assert [a.summary for a in cloud.pipeline.plan("main").actions] == ["create dns_record www on aws [drift: missing]"]
    assert cloud.run().status == "succeeded"
    assert sets(r53, zone)[("www", "A")] == (300, ["192.0.2.1"])


def test_an_existing_record_is_imported_then_adopted_in_place(cloud: CloudStack, repo: WorkRepo, r53: Any,
                                                              zone: Any) -> None:
    """`adopt` (what `stratum infra import` calls) writes our marker on an existing record set; the record
    committed as printed is then adopted in place, never recreated."""
    from libcloud.dns.types import RecordType

    from reconcilers.infra.providers.nickel_out import to_nickel

    r53.create_record("legacy", zone, RecordType.CNAME, "old.example.net.", extra={"ttl": 600})
    provider = cloud.infra.providers["aws"]
    assert isinstance(provider, CloudProvider)
    obj = provider.adopt("dns_record", f"{domain(zone)}:CNAME:legacy", "legacy")
    text = to_nickel("aws", obj, "legacy")
    assert "record_type = 'CNAME" in text and 'values = ["old.example.net."]' in text
    repo.commit({"infra/legacy.ncl": text})
    assert [a.summary for a in cloud.pipeline.plan("main").actions] == [
        "update dns_record legacy on aws in place [imported: Stratum's spec tag is recorded]"]
    assert cloud.run().status == "succeeded"
    assert sets(r53, zone)[("legacy", "CNAME")] == (600, ["old.example.net."])
    assert cloud.pipeline.plan("main").actions == ()
