"""The shipped cloud-server form over the cloud schemas (issue 12): network, subnet, firewall, server and an
optional volume, checked with the infra contracts; the volume only when asked for; provider-specific
constraint. Nothing talks to a cloud: generating only evaluates Nickel."""

from __future__ import annotations

import pygit2

from reconcilers.infra.load import load_infra
from tests.reconcilers.forms.conftest import OpsRepo

BASE = {"name": "web-1", "image": "ami-0123456789abcdef0"}


def test_the_cloud_form_generates_contract_checked_cloud_resources(ops: OpsRepo) -> None:
    """Defaults plus a name and an image: five resources with a volume, four without; the branch loads clean."""
    session = ops.session("cloud-server")
    try:
        defaults = session.defaults()
        with_volume = session.check({**defaults, **BASE, "with_volume": True})
        assert with_volume.ok, with_volume.errors
        preview = session.preview(with_volume.answers)
        assert "5 to create" in preview.plan and "| create | `web-1-data` | volume | provider aws |" in preview.plan
        without = session.check({**defaults, **BASE, "volume_gb": 5000})   # hidden: its bound does not apply
        assert without.ok and "volume_gb" not in without.answers
        sub = session.submit(without.answers, "alice@example.com")
    finally:
        session.close()
    infra = load_infra(ops.source.snapshot(sub.commit), ops.evaluator)
    assert infra.problems == ()
    server = infra.resources["web-1"]
    assert (server.kind, server.provider) == ("server", "aws")
    assert set(server.depends_on) >= {"web-1-subnet", "web-1-fw"}
    assert [r["ports"] for r in infra.resources["web-1-fw"].fields["rules"]] == ["22", "443"]
    assert "web-1-data" not in infra.resources
    commit = pygit2.Repository(str(ops.work.path)).revparse_single(sub.branch)
    assert commit.tree["infra/cloud/web-1.ncl"].data.decode().startswith("# stratum-form: ")


def test_the_cloud_form_checks_across_fields(ops: OpsRepo) -> None:
    """UpCloud with only SSH open is refused by the form's constraint, in Spanish too."""
    session = ops.session("cloud-server", locale="es")
    try:
        checked = session.check({**session.defaults(), **BASE, "provider": "upcloud", "ports": ["22"]})
        assert session.text.error(checked.errors["constraint ssh_not_alone"]).startswith("un servidor de UpCloud")
    finally:
        session.close()
