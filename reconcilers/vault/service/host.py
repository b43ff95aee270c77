"""Where the vault reconciler keeps its vault service: built once when the daemon asks for its interfaces."""

from __future__ import annotations

import threading
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import structlog

from reconcilers.ports import HttpMount
from reconcilers.vault.service.config import DEFAULT_LISTEN, build_service
from reconcilers.vault.service.core import VaultService

log = structlog.get_logger("stratum.vault")


class ServiceHost:
    """The vault service of one daemon (None until `mounts` built it: CLI runs have no vault API)."""

    def __init__(self, settings: Mapping[str, Any], state_dir: Path) -> None:
        self.settings = dict(settings)
        self.state_dir = state_dir
        self.service: VaultService | None = None
        self._mounts: list[HttpMount] | None = None
        self._lock = threading.Lock()

    def mounts(self) -> list[HttpMount]:
        """The vault API on its own listener (`[vault] listen`, default 127.0.0.1:8200; "" turns it off)."""
        with self._lock:
            if self._mounts is not None:
                return self._mounts
            listen = str(self.settings.get("listen", DEFAULT_LISTEN))
            self._mounts = []
            if not listen:
                return self._mounts
            self.service = build_service(self.settings, self.state_dir)
            service = self.service
            max_body = int(self.settings.get("max_body", 1024 * 1024))

            def factory() -> Any:
                from reconcilers.vault.service.api.app import VaultApp

                return VaultApp(service, max_body)

            self._mounts = [HttpMount("/v1", factory, listen=listen)]
            return self._mounts
