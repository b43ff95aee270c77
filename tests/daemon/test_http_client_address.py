"""The listener's client address is the peer's: forwarding headers from a client are not believed. uvicorn
trusts X-Forwarded-For and X-Forwarded-Proto from 127.0.0.1 by default, and on a loopback listener every
client is 127.0.0.1, so any local process could have claimed another address (the vault audits it as
`remote_address` and Cedar policies may test it as `context.source`)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import requests

from daemon.http.server import HttpServer
from tests.proc import wait_for
from tests.reconcilers.vault.service.conftest import start_vault

SPOOF = {"X-Forwarded-For": "10.1.2.3", "X-Forwarded-Proto": "https", "Forwarded": "for=10.1.2.3;proto=https"}


async def _echo(scope: dict[str, Any], receive: Any, send: Any) -> None:
    body = json.dumps({"client": scope["client"][0], "scheme": scope["scheme"]}).encode()
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})


def test_forwarding_headers_do_not_change_the_client_address() -> None:
    """An app on the listener sees the peer's address and scheme, whatever the request's headers claim."""
    server = HttpServer("127.0.0.1:0", _echo)
    server.start()
    try:
        wait_for(lambda: server.server.started, 20)
        answer = requests.get(f"http://127.0.0.1:{server.port}/", headers=SPOOF, timeout=5).json()
        assert answer == {"client": "127.0.0.1", "scheme": "http"}
    finally:
        server.stop()


def test_a_vault_policy_on_the_source_address_cannot_be_met_by_a_header(tmp_path: Path) -> None:
    """A Cedar policy allowing reads from 10.1.2.3 only: a loopback client claiming that address is refused,
    and the audit log records the address it really came from."""
    served = start_vault(tmp_path)
    try:
        client = served.client()
        client.secrets.kv.v2.create_or_update_secret("app", secret={"pw": "x"})
        token = served.token_under("app", 'permit(principal in Vault::Group::"app", action, resource) '
                                          'when { context.source == "10.1.2.3" };')
        answer = requests.get(f"{served.url}/v1/secret/data/app", headers={"X-Vault-Token": token, **SPOOF},
                              timeout=5)
        assert answer.status_code == 403
        last = json.loads(served.service.audit.path.read_text().splitlines()[-1])
        assert last["request"]["remote_address"] == "127.0.0.1"
    finally:
        served.server.stop()
