"""Certificate renewal in a real stratumd: the vault API on loopback (init, unseal, a PKI mount, CA and role
through HTTP), a committed file resource holding an issued certificate and key, and the renewal timer asking the
daemon for a run (Scheduler.rerun) that rewrites both files, recorded like any other run. Short-lived
certificates and a renewal fraction of one half make renewal come within seconds, on the real clock."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import requests
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from tests.fixtures import WorkRepo, bare_repo, infra, resource
from tests.proc import DaemonProc, wait_for
from tests.servers import free_port

pytestmark = pytest.mark.slow


def _ref(part: str) -> str:
    return f'{{ certificate = "pki/issue/etcd", common_name = "m1.etcd.internal", ttl = "40s", part = "{part}" }}'


def test_renewal_timer_reruns_and_rewrites_the_files(tmp_path: Path) -> None:
    """Issued at the first run; about five seconds later (half of 40 s + 30 s backdating, minus the backdating)
    the daemon runs again with trigger rerun:certificate renewal and the certificate and key files hold a new,
    matching pair."""
    data, root = tmp_path / "data", tmp_path / "root"
    remote = bare_repo(tmp_path / "remote.git")
    work = WorkRepo(tmp_path / "work", remote=remote)
    first = work.commit({"infra/motd.ncl": infra(resource("motd", "file", path="motd", content="hi\n"))})
    work.push()
    port = free_port()
    url = f"http://127.0.0.1:{port}/v1"
    config = tmp_path / "stratumd.toml"
    config.write_text(f'[vault]\nlisten = "127.0.0.1:{port}"\ncert_renew_fraction = 0.5\n')
    d = DaemonProc(str(remote), data, root, "--config", str(config))
    try:
        assert d.wait_run(first)["status"] == "succeeded"
        wait_for(lambda: _up(url), 60)
        init = requests.put(f"{url}/sys/init", json={"secret_shares": 1, "secret_threshold": 1,
                                                     "share_format": "base64"}, timeout=30).json()
        assert requests.put(f"{url}/sys/unseal", json={"key": init["keys"][0]}, timeout=30).json()["sealed"] is False
        head = {"X-Vault-Token": init["root_token"]}
        setup: tuple[tuple[str, dict[str, Any]], ...] = (("sys/mounts/pki", {"type": "pki"}),
                           ("pki/root/generate/internal", {"common_name": "etcd CA", "key_type": "ec"}),
                           ("pki/roles/etcd", {"allowed_domains": "etcd.internal", "allow_subdomains": True,
                                               "key_type": "ec", "max_ttl": "1h"}))
        for path, body in setup:
            answer = requests.post(f"{url}/{path}", json=body, headers=head, timeout=30)
            assert answer.status_code in (200, 204), answer.text
        second = work.commit({"infra/tls.ncl": "{ resources = {\n"
                              f"  crt = {{ kind = 'file, path = \"etcd.crt\", content = {_ref('certificate')} }},\n"
                              f"  key = {{ kind = 'file, path = \"etcd.key\", content = {_ref('private_key')} }},\n"
                              "} }\n"})
        work.push()
        assert d.wait_run(second)["status"] == "succeeded"
        first_key = (root / "etcd.key").read_text()
        first_cert = x509.load_pem_x509_certificate((root / "etcd.crt").read_bytes())

        def renewed() -> bool:
            runs = [r for r in d.runs() if str(r.get("trigger", "")).startswith("rerun:certificate renewal")]
            return bool(runs) and runs[0]["status"] == "succeeded" and (root / "etcd.key").read_text() != first_key
        wait_for(renewed, 90, interval=0.5)
        cert = x509.load_pem_x509_certificate((root / "etcd.crt").read_bytes())
        key = serialization.load_pem_private_key((root / "etcd.key").read_bytes(), password=None)
        assert cert.serial_number != first_cert.serial_number
        assert cert.public_key() == key.public_key()
        assert "BEGIN" not in d.log()
    finally:
        assert d.stop() == 0


def _up(url: str) -> bool:
    try:
        return requests.get(f"{url}/sys/seal-status", timeout=2).status_code == 200
    except requests.RequestException:
        return False
