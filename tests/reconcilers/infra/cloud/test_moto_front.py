"""An endpoint answering in another XML namespace than libcloud reads (moto's EC2 without the patched
namespace) is refused with a message instead of read as "nothing there"; `moto_front` (moto behind the proxy
with namespaces fixed, for people trying Stratum) serves libcloud's EC2 and Route 53 drivers unpatched."""

from __future__ import annotations

import pytest

from reconcilers.errors import TerminalError
from reconcilers.infra.providers import backend_for
from reconcilers.infra.providers.cloud import CloudProvider
from tests.reconcilers.infra.cloud.conftest import FaultProxy


def provider(port: int) -> CloudProvider:
    """An aws provider at a loopback endpoint (moto checks no credentials)."""
    conf = {"type": "aws", "key": "k", "secret": "s", "host": "127.0.0.1", "port": port, "secure": False}
    return CloudProvider("aws", backend_for("aws", conf), "front-test")


def test_answers_in_another_namespace_are_refused_not_read_as_empty(moto_port: int) -> None:
    """moto's EC2 answers without the trailing slash libcloud's namespace has: the listing fails saying so
    (before: it read as no objects, and every plan would create everything again)."""
    from libcloud.compute.drivers import ec2

    assert ec2.NAMESPACE.endswith("/")                 # libcloud's own, not the tests' patched one
    with pytest.raises(TerminalError) as err:
        provider(moto_port).observe("server", "web", {})
    assert "the endpoint answers in XML namespace 'http://ec2.amazonaws.com/doc/2016-11-15'" in str(err.value)


def test_moto_front_serves_libcloud_unpatched(moto_port: int) -> None:
    """Through the proxy with `fix_namespaces`, servers and DNS records list (nothing there yet) with
    libcloud's own namespaces."""
    front = FaultProxy(moto_port, fix_namespaces=True)
    try:
        p = provider(front.port)
        assert not p.observe("server", "web", {}).exists
        assert not p.observe("dns_record", "www", {}).exists
        assert {"DescribeInstances", "ListHostedZones"} <= set(front.calls)
    finally:
        front.close()
