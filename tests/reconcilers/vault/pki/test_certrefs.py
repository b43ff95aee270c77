"""Certificates for the daemon's own infra resources (issue 15): a `file` resource whose content is a certificate
reference gets a certificate issued by the vault's PKI at apply time. Everything is real: a git repo, the Nickel
evaluator, the vault service (file storage, Shamir seal, barrier) with a mounted PKI engine, the daemon's
secrets broker, DuckDB and a host root. The clock of the certificate issuer is moved to force renewal (the one
thing a test cannot wait for); timers are the daemon's own TimerScheduler."""

from __future__ import annotations

import datetime as dt
import json
import os
import stat
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from daemon.git.source import GitSource
from daemon.index.store import Index
from daemon.nickel.evaluator import Evaluator
from daemon.run.pipeline import Pipeline
from daemon.run.ports import SecretsBroker, TimerScheduler
from daemon.run.retry import RetryPolicy
from reconcilers.base import ReconcilerEnv
from reconcilers.infra.reconciler import InfraReconciler
from reconcilers.vault.pki import certbuild, certrefs
from reconcilers.vault.reconciler import VaultReconciler
from reconcilers.vault.service.core import VaultService
from reconcilers.vault.service.request import ApiRequest
from tests.fixtures import WorkRepo
from tests.reconcilers.vault.pki.helpers import openssl_verify


def ref(part: str, cn: str = "web.internal", ttl: str = "2h") -> str:
    return (f'{{ certificate = "pki/issue/web", common_name = "{cn}", alt_names = ["api.web.internal"], '
            f'ip_sans = ["10.0.0.7"], ttl = "{ttl}", part = "{part}" }}')


def infra_file(extra: str = "") -> str:
    return ("{ resources = {\n"
            f"  crt = {{ kind = 'file, path = \"tls/web.crt\", content = {ref('certificate')} }},\n"
            f"  key = {{ kind = 'file, path = \"tls/web.key\", content = {ref('private_key')} }},\n"
            f"  chain = {{ kind = 'file, path = \"tls/ca.pem\", content = {ref('ca_chain')} }},\n"
            "  motd = { kind = 'file, path = \"motd\", content = \"hello\\n\" },\n" + extra + "} }\n")


@dataclass
class World:
    repo: WorkRepo
    pipe: Pipeline
    vault: VaultReconciler
    root: Path
    data: Path
    index: Index
    keys: list[str]
    token: str

    @property
    def service(self) -> VaultService:
        assert self.vault.vault_api.service is not None
        return self.vault.vault_api.service

    def call(self, method: str, path: str, body: dict[str, object] | None = None) -> dict[str, object] | None:
        status, answer = self.service.handle(ApiRequest(method, path, body or {}, token=self.token))
        assert status in (200, 204), (status, answer)
        return answer


def build(tmp_path: Path, evaluator: Evaluator, vault_settings: dict[str, object],
          scheduler: TimerScheduler | None = None) -> tuple[Pipeline, VaultReconciler, Index, WorkRepo]:
    data, root = tmp_path / "data", tmp_path / "root"
    index = Index(data / "index.duckdb")
    broker = SecretsBroker(index)
    vault = VaultReconciler(ReconcilerEnv(data_dir=data, evaluator=evaluator, secrets=broker.for_("vault"),
                                          settings={"vault": vault_settings}, scheduler=scheduler))
    infra = InfraReconciler(ReconcilerEnv(data_dir=data, settings={"infra": {"root": str(root)}},
                                          evaluator=evaluator, secrets=broker.for_("infra")))
    broker.provider = vault.secrets()
    vault.http_mounts()                   # what the daemon does at start: the vault service is built
    repo = WorkRepo(tmp_path / "ops")
    pipe = Pipeline(source=GitSource(str(repo.path), "main", data), index=index,
                    reconcilers={"infra": infra, "vault": vault}, evaluator=evaluator)
    return pipe, vault, index, repo


@pytest.fixture
def world(tmp_path: Path, evaluator: Evaluator) -> Iterator[World]:
    scheduler = TimerScheduler()
    pipe, vault, index, repo = build(tmp_path, evaluator, {"listen": "127.0.0.1:0"}, scheduler)
    service = vault.vault_api.service
    assert service is not None
    init = service.initialize(1, 1, "base64")
    service.unseal(init["keys"][0])
    w = World(repo, pipe, vault, tmp_path / "root", tmp_path / "data", index, init["keys"], init["root_token"])
    w.call("POST", "sys/mounts/pki", {"type": "pki"})
    w.call("POST", "pki/root/generate/internal", {"common_name": "Ops root", "key_type": "ec", "ttl": "87600h"})
    w.call("POST", "pki/roles/web", {"allowed_domains": "web.internal", "allow_subdomains": True,
                                     "allow_bare_domains": True, "allow_ip_sans": True, "key_type": "ec",
                                     "max_ttl": "72h"})
    yield w
    scheduler.close()
    pipe.close()
    vault.close()
    index.close()


def _files(w: World) -> tuple[x509.Certificate, str, list[x509.Certificate]]:
    crt = x509.load_pem_x509_certificate((w.root / "tls/web.crt").read_bytes())
    key_pem = (w.root / "tls/web.key").read_text()
    key = serialization.load_pem_private_key(key_pem.encode(), password=None)
    assert crt.public_key() == key.public_key()                       # the key is the certificate's
    chain = x509.load_pem_x509_certificates((w.root / "tls/ca.pem").read_bytes())
    crt.verify_directly_issued_by(chain[0])                           # ... and it chains to the CA
    return crt, key_pem, chain


def _holding(folder: Path, needle: str) -> list[str]:
    return [str(p) for p in folder.rglob("*") if p.is_file() and needle.encode() in p.read_bytes()]


def test_a_run_writes_a_matching_certificate_key_and_chain(world: World, tmp_path: Path) -> None:
    """One issue per request: the certificate, its private key (0600) and the CA chain land in files that
    `cryptography` parses and `openssl verify` accepts; the plan shows references and keyed fingerprints, no PEM;
    no file of the data directory holds the private key; the next plan has nothing to do."""
    rev = world.repo.commit({"infra/tls.ncl": infra_file()})
    report = world.pipe.plan(rev)
    assert not report.problems, report.problems
    shown = json.dumps([[a.summary, a.change, a.compensation] for a in report.actions])
    assert "BEGIN" not in shown and "cert:pki/issue/web?cn=web.internal" in shown and "hmac-sha256:" in shown
    result = world.pipe.run(rev)
    assert result.status == "succeeded", result
    crt, key_pem, chain = _files(world)
    names = crt.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert set(names.get_values_for_type(x509.DNSName)) == {"web.internal", "api.web.internal"}
    assert [str(ip) for ip in names.get_values_for_type(x509.IPAddress)] == ["10.0.0.7"]
    assert stat.S_IMODE(os.stat(world.root / "tls/web.key").st_mode) == 0o600
    assert stat.S_IMODE(os.stat(world.root / "tls/web.crt").st_mode) == 0o644
    ca_pem = chain[0].public_bytes(serialization.Encoding.PEM).decode()
    verified = openssl_verify(tmp_path, ca_pem, (world.root / "tls/web.crt").read_text())
    assert verified.returncode == 0, verified.stdout + verified.stderr
    world.index.sync()
    key_body = key_pem.splitlines()[1]
    assert _holding(world.data, key_body) == []                      # the barrier keeps it encrypted
    assert [a.id for a in world.pipe.plan(rev).actions] == []


def test_due_certificate_is_renewed_and_its_files_rewritten(world: World) -> None:
    """Past the renewal fraction of its lifetime the certificate's users change spec: the plan updates the three
    files, the run issues a new certificate (new serial, new key, still a matching pair) and rewrites them."""
    rev = world.repo.commit({"infra/tls.ncl": infra_file()})
    assert world.pipe.run(rev).status == "succeeded"
    before, old_key, _ = _files(world)
    start = dt.datetime.now(dt.UTC)
    world.vault.certificates.clock = lambda: start + dt.timedelta(minutes=90)   # 2 h certificate, due at 2/3
    report = world.pipe.plan(rev)
    assert sorted(a.id for a in report.actions) == ["infra:chain", "infra:crt", "infra:key"]
    result = world.pipe.run(rev, trigger="rerun:certificate renewal")
    assert result.status == "succeeded", result
    after, new_key, _ = _files(world)
    assert after.serial_number != before.serial_number and new_key != old_key
    assert after.not_valid_before_utc > before.not_valid_before_utc
    assert [a.id for a in world.pipe.plan(rev).actions] == []           # renewed: nothing due any more


def test_a_renewed_certificate_is_revoked_once_the_run_that_replaced_it_succeeds(world: World) -> None:
    """The renewal run writes the new certificate first; when it has succeeded the old serial is revoked (on the
    mount's CRL), the new one is not, and a later run revokes nothing more."""
    rev = world.repo.commit({"infra/tls.ncl": infra_file()})
    assert world.pipe.run(rev).status == "succeeded"
    before, _, _ = _files(world)
    old_serial = certbuild.serial_text(before.serial_number)
    start = dt.datetime.now(dt.UTC)
    world.vault.certificates.clock = lambda: start + dt.timedelta(minutes=90)
    assert world.pipe.run(rev, trigger="rerun:certificate renewal").status == "succeeded"
    after, _, _ = _files(world)
    world.pipe.wait_hooks()                               # on_run_finished runs after the run is recorded
    old = world.call("GET", f"pki/cert/{old_serial}")
    new = world.call("GET", f"pki/cert/{certbuild.serial_text(after.serial_number)}")
    assert old is not None and new is not None
    assert int(dict(old["data"])["revocation_time"]) > 0                       # type: ignore[call-overload]
    assert int(dict(new["data"])["revocation_time"]) == 0                       # type: ignore[call-overload]
    meta = json.loads((world.data / "vault" / "certs.json").read_text())
    assert all("superseded" not in m for m in meta.values())
    assert world.pipe.run(rev).status == "succeeded"
    world.pipe.wait_hooks()
    again = world.call("GET", f"pki/cert/{certbuild.serial_text(after.serial_number)}")
    assert again is not None and int(dict(again["data"])["revocation_time"]) == 0  # type: ignore[call-overload]


def test_the_renewal_timer_asks_the_daemon_for_a_run(world: World) -> None:
    """After a run, the vault arms a timer at the earliest renewal time; when it fires with a certificate due
    it asks the daemon's scheduler for a run (Scheduler.rerun) and arms itself again."""
    scheduler = world.vault.scheduler
    assert isinstance(scheduler, TimerScheduler)
    asked: list[str] = []
    fired = threading.Event()

    def rerun(why: str) -> None:
        asked.append(why)
        fired.set()

    scheduler.rerun_fn = rerun
    rev = world.repo.commit({"infra/tls.ncl": infra_file()})
    assert world.pipe.run(rev).status == "succeeded"
    issuer = world.vault.certificates
    delay = issuer.arm(scheduler)
    assert delay is not None and 3000 < delay < 5000                   # two thirds of 2 h (+30 s backdating)
    start = dt.datetime.now(dt.UTC)
    issuer.clock = lambda: start + dt.timedelta(minutes=90)
    issuer.min_rearm_s = 0.05
    assert issuer.arm(scheduler) == 0.05
    assert fired.wait(20), "the renewal timer never asked for a run"
    assert asked[0].startswith("certificate renewal (1 due)")


def _inventory(w: World, rid: str) -> dict[str, object]:
    rows = w.index.query("SELECT data FROM inventory WHERE reconciler = 'infra' AND resource_id = ?", [rid])
    return dict(json.loads(rows[0][0])) if rows else {}


def _asked(w: World) -> list[str]:
    """Capture the vault's requests for a run (Scheduler.rerun) instead of a daemon loop ringing."""
    scheduler = w.vault.scheduler
    assert isinstance(scheduler, TimerScheduler)
    asked: list[str] = []
    scheduler.rerun_fn = asked.append
    return asked


def test_sealed_vault_leaves_certificate_files_waiting_and_unseal_asks_for_a_run(world: World) -> None:
    """Sealed: the certificate files end the run as `waiting` items at once (no waiting budget spent, no
    action_waiting event), the run succeeds and the motd applies; no certificate file is written, the inventory
    does not take them as applied, and the plan says why they waited. Unsealing asks the daemon for a run
    (Scheduler.rerun, the renewal timer's path), which writes them; then nothing is left to do."""
    asked = _asked(world)
    world.pipe.retry = RetryPolicy(max_wait=2.0)       # were it to wait within the run, it would fail
    world.service.seal_now()
    rev = world.repo.commit({"infra/tls.ncl": infra_file()})
    result = world.pipe.run(rev)
    assert result.status == "succeeded", result
    assert "3 not yet" in result.message and "unseal with `stratum vault unseal`" in result.message
    assert (world.root / "motd").read_text() == "hello\n"
    assert not (world.root / "tls").exists()
    assert world.index.query("SELECT count(*) FROM events WHERE kind = 'action_waiting'") == [(0,)]
    assert _inventory(world, "crt")["spec_hash"] == "waiting"
    planned = {a.id: a.summary for a in world.pipe.plan(rev).actions}
    assert sorted(planned) == ["infra:chain", "infra:crt", "infra:key"]
    assert "[waited at the last run: certificate cert:pki/issue/web" in planned["infra:crt"]
    assert "BEGIN" not in json.dumps([result.message, planned])
    assert asked == []
    world.service.unseal(world.keys[0])
    assert asked == ["vault unsealed: 1 certificate(s) waited for it"]
    again = world.pipe.run(rev, trigger="rerun:" + asked[0])
    assert again.status == "succeeded", again
    assert "not yet" not in again.message
    _files(world)
    assert _inventory(world, "crt")["spec_hash"] != "waiting"
    assert [a.id for a in world.pipe.plan(rev).actions] == []
    assert world.vault.certificates.waiting() == frozenset()
    world.service.seal_now()
    world.service.unseal(world.keys[0])
    assert len(asked) == 1                             # nothing waits any more: an unseal asks for nothing


def test_a_renewal_while_sealed_keeps_the_old_files_until_the_vault_opens(world: World) -> None:
    """A due certificate whose vault is sealed: its files keep their previous content (nothing half-written,
    the key still matches the certificate), the run succeeds with them waiting; after the unseal the run
    renews and rewrites them."""
    rev = world.repo.commit({"infra/tls.ncl": infra_file()})
    assert world.pipe.run(rev).status == "succeeded"
    before = {name: (world.root / "tls" / name).read_bytes() for name in ("web.crt", "web.key", "ca.pem")}
    start = dt.datetime.now(dt.UTC)
    world.vault.certificates.clock = lambda: start + dt.timedelta(minutes=90)
    world.pipe.retry = RetryPolicy(max_wait=2.0)
    world.service.seal_now()
    result = world.pipe.run(rev, trigger="rerun:certificate renewal")
    assert result.status == "succeeded" and "3 not yet" in result.message, result
    assert {name: (world.root / "tls" / name).read_bytes() for name in before} == before
    _files(world)
    world.service.unseal(world.keys[0])
    assert world.pipe.run(rev).status == "succeeded"
    assert (world.root / "tls/web.key").read_bytes() != before["web.key"]
    _files(world)


def test_a_role_not_declared_yet_waits_and_the_next_run_issues(world: World) -> None:
    """The vault is open but the reference names a role that does not exist yet: a waiting item, the run
    succeeds; once the role exists the next run issues and writes the file."""
    later = '{ certificate = "pki/issue/later", common_name = "a.web.internal", part = "certificate" }'
    text = f"{{ resources = {{\n  crt = {{ kind = 'file, path = \"later.crt\", content = {later} }},\n}} }}\n"
    rev = world.repo.commit({"infra/later.ncl": text})
    world.pipe.retry = RetryPolicy(max_wait=2.0)
    result = world.pipe.run(rev)
    assert result.status == "succeeded" and "1 not yet" in result.message, result
    assert "declare role later on the pki mount" in result.message
    assert not (world.root / "later.crt").exists()
    world.call("POST", "pki/roles/later", {"allowed_domains": "web.internal", "allow_subdomains": True,
                                           "key_type": "ec", "ttl": "2h", "max_ttl": "72h"})
    assert world.pipe.run(rev).status == "succeeded"
    x509.load_pem_x509_certificate((world.root / "later.crt").read_bytes())


def test_vault_disabled_is_a_waiting_item_and_the_run_succeeds(tmp_path: Path, evaluator: Evaluator) -> None:
    """With no vault service on this daemon a certificate reference still validates and plans; its action ends
    as a waiting item saying the vault service is not enabled and how to enable it, at once (a waiting budget
    of 0.5 s would fail the run if the action waited within it), and everything else applies."""
    pipe, vault, index, repo = build(tmp_path, evaluator, {})
    pipe.retry = RetryPolicy(max_wait=0.5)
    try:
        rev = repo.commit({"infra/tls.ncl": infra_file()})
        assert not pipe.plan(rev).problems
        result = pipe.run(rev)
        assert result.status == "succeeded", result
        assert "the vault service is not enabled on this daemon" in result.message
        assert "[vault] enabled = true" in result.message and "BEGIN" not in result.message
        assert (tmp_path / "root" / "motd").exists() and not (tmp_path / "root" / "tls").exists()
        assert len(vault.certificates.waiting()) == 1
    finally:
        pipe.close()
        vault.close()
        index.close()


@pytest.mark.parametrize(("reference", "expected"), [
    ('{ certificate = "pki/web", common_name = "a", part = "certificate" }', "issue path of a PKI role"),
    ('{ certificate = "pki/issue/web", part = "certificate" }', "needs `common_name`"),
    ('{ certificate = "pki/issue/web", common_name = "a", part = "key" }', "`part` of a certificate reference"),
    ('{ certificate = "pki/issue/web", common_name = "a", part = "certificate", color = 1 }', "unknown field"),
    ('{ certificate = "pki/issue/web", common_name = "a", alt_names = ["a,b"], part = "certificate" }',
     "no commas or spaces"),
])
def test_bad_certificate_reference_is_a_located_contract_error(world: World, reference: str, expected: str) -> None:
    """A malformed certificate reference is rejected at validate with the contract's message and its file."""
    text = f"{{ resources = {{\n  crt = {{ kind = 'file, path = \"c\", content = {reference} }},\n}} }}\n"
    rev = world.repo.commit({"infra/tls.ncl": text})
    result = world.pipe.run(rev)
    assert result.status == "rejected"
    text = json.dumps([[p.message, p.path, p.line] for p in result.problems])
    assert expected in text and "infra/tls.ncl" in text


def test_reference_text_round_trips() -> None:
    """The infra side's reference text parses on the vault side to the same request; parts share the request."""
    from reconcilers.infra.secretrefs import cert_reference_text

    record = {"certificate": "pki/issue/web", "common_name": "w.internal", "alt_names": ["B.w.internal", "a"],
              "ttl": "1h", "part": "private_key"}
    parsed = certrefs.parse(cert_reference_text(record))
    assert (parsed.mount, parsed.role, parsed.common_name, parsed.alt_names, parsed.ttl, parsed.part) == (
        "pki", "web", "w.internal", ("a", "b.w.internal"), "1h", "private_key")
    other = certrefs.parse(cert_reference_text({**record, "part": "certificate"}))
    assert other.request_id == parsed.request_id
    with pytest.raises(Exception, match="is not a certificate reference"):
        certrefs.parse("kv/app/db#password")


def test_a_name_outside_the_role_fails_the_run_naming_the_reference(world: World) -> None:
    """The role refuses the common name: the action fails at once (terminal, no waiting), the error names the
    reference and the role's reason, and no key file is written."""
    bad = ('{ certificate = "pki/issue/web", common_name = "evil.example", part = "private_key" }')
    text = f"{{ resources = {{\n  key = {{ kind = 'file, path = \"evil.key\", content = {bad} }},\n}} }}\n"
    result = world.pipe.run(world.repo.commit({"infra/tls.ncl": text}))
    assert result.status in ("failed", "rolled_back")
    assert "cert:pki/issue/web?cn=evil.example" in result.message and "not allowed" in result.message
    assert world.index.query("SELECT count(*) FROM events WHERE kind = 'action_waiting'") == [(0,)]
    assert not (world.root / "evil.key").exists()


def test_a_unit_receives_its_certificate_and_key_as_credentials(world: World) -> None:
    """A systemd_unit's `credentials` may name certificate parts: 0600 files under the runtime directory with
    LoadCredential= lines, the key matching the certificate; the unit file holds no PEM."""
    text = ("{ resources = { unit = { kind = 'systemd_unit, name = \"etcd.service\", content = "
            '"[Unit]\\nDescription=etcd\\n[Service]\\nExecStart=/bin/true\\n", '
            f"credentials = {{ tls_crt = {ref('certificate')}, tls_key = {ref('private_key')} }} }} }} }}\n")
    assert world.pipe.run(world.repo.commit({"infra/unit.ncl": text})).status == "succeeded"
    unit = (world.root / "etc/systemd/system/etcd.service").read_text()
    folder = world.data / "run" / "credentials" / "etcd.service"
    assert f"LoadCredential=tls_crt:{folder / 'tls_crt'}" in unit and "BEGIN" not in unit
    crt = x509.load_pem_x509_certificate((folder / "tls_crt").read_bytes())
    key = serialization.load_pem_private_key((folder / "tls_key").read_bytes(), password=None)
    assert crt.public_key() == key.public_key()
    assert stat.S_IMODE(os.stat(folder / "tls_key").st_mode) == 0o600
