"""Fixtures of the vault service tests: a vault on the file backend, served over real HTTP on loopback."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import hvac
import pytest

from daemon.http.server import HttpServer
from reconcilers.vault.service.api.app import VaultApp
from reconcilers.vault.service.core import VaultService
from reconcilers.vault.service.storage.base import KeyValueStore
from reconcilers.vault.service.storage.file import FileStore
from tests.proc import wait_for
from tests.reconcilers.vault.database.conftest import pg  # noqa: F401  (the engines' hardened PostgreSQL)
from tests.servers import etcd, postgres  # noqa: F401  (session fixtures: real servers on loopback)


@dataclass
class Served:
    """A running vault: its service, URL, root token and the shares init printed."""

    service: VaultService
    url: str
    root_token: str
    keys: list[str]
    server: HttpServer

    def client(self, token: str | None = None) -> hvac.Client:
        """An hvac client (the root token unless another is given)."""
        return hvac.Client(url=self.url, token=self.root_token if token is None else token)

    def token_under(self, group: str, policy: str) -> str:
        """A new token in `group` after the vault's policies became `policy` (one Cedar file) alone."""
        self.service.set_policies({f"{group}.cedar": policy})
        return str(self.client().auth.token.create(policies=[group])["auth"]["client_token"])


def serve(service: VaultService, max_body: int = 1024 * 1024) -> HttpServer:
    """The vault app on a free loopback port, started."""
    server = HttpServer("127.0.0.1:0", VaultApp(service, max_body))
    server.start()
    wait_for(lambda: server.server.started, 20)     # bound at once, but listening only once uvicorn started
    return server


def start_vault(tmp: Path, store: KeyValueStore | None = None, unseal: bool = True, **service_args: object) -> Served:
    """Init (1 base64 share: fast) and unseal a vault, serve it."""
    tmp.mkdir(parents=True, exist_ok=True)
    service = VaultService(store or FileStore(tmp / "storage"), tmp / "audit.log", **service_args)  # type: ignore[arg-type]
    out = service.initialize(1, 1, "base64")
    if unseal:
        service.unseal(out["keys"][0])
    server = serve(service)
    return Served(service, f"http://127.0.0.1:{server.port}", out["root_token"], out["keys"], server)


@pytest.fixture
def vault(tmp_path: Path) -> Iterator[Served]:
    """An unsealed vault on the file backend, served on loopback."""
    served = start_vault(tmp_path)
    try:
        yield served
    finally:
        served.server.stop()
