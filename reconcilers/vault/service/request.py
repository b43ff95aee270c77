"""One request to the vault API, as the ASGI app hands it to the service, and the service's answer."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

Answer = tuple[int, dict[str, Any] | None]      # HTTP status, Vault JSON body (None: no body, 204)


@dataclass(frozen=True, slots=True)
class ApiRequest:
    """One request below /v1/."""

    method: str
    path: str
    body: dict[str, Any] = field(default_factory=dict)
    query: dict[str, str] = field(default_factory=dict)
    token: str = ""
    remote: str = ""
