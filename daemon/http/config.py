"""The `[http]` table of stratumd.toml: who may use the HTTP listener, over what, and how much it may hold.

```toml
http_listen = "0.0.0.0:9465"
[http]
tokens_file = "/etc/stratum/http-tokens"   # 0600; lines `name:role[,role]:<sha256 hex of the token>`
policy_file = "/etc/stratum/http.cedar"    # Cedar; default: the roles admin, reader, metrics (daemon/http/auth.py)
tls_cert = "/etc/stratum/tls.crt"          # TLS when both are set; the key file must be 0600
tls_key = "/etc/stratum/tls.key"
metrics_public = false                     # true: /metrics answers without a token
header_timeout = 10      # seconds a client has to send a request's head (line and headers)
body_timeout = 30        # seconds a client has to send a request's body once its head is in
keepalive_timeout = 5    # seconds an idle keep-alive connection stays open
max_requests_per_connection = 100
max_connections = 1024   # open HTTP connections; lowered to fit the descriptor limit less `fd_reserve`
fd_reserve = 256         # descriptors kept for the daemon's own work (index, git, workers, the socket)
max_header_bytes = 16384
session_ttl = 28800      # seconds a browser session of /forms/login lasts (daemon/http/sessions.py)
```

Binding an address that is not loopback without both TLS and a tokens file is refused at start (`check_exposure`).
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from daemon.errors import SettingsError

_PATHS = ("tokens_file", "policy_file", "tls_cert", "tls_key")
_NUMBERS = {"header_timeout": 10.0, "body_timeout": 30.0, "keepalive_timeout": 5.0}
_INTS = {"max_requests_per_connection": 100, "max_connections": 1024, "fd_reserve": 256, "max_header_bytes": 16384}
KEYS = (*_PATHS, "metrics_public", *_NUMBERS, *_INTS, "session_ttl")


@dataclass(frozen=True, slots=True)
class Limits:
    """What one client may hold of the listener, and what the daemon keeps for itself."""

    header_timeout: float = 10.0
    body_timeout: float = 30.0
    keepalive_timeout: float = 5.0
    max_requests_per_connection: int = 100
    max_connections: int = 1024
    fd_reserve: int = 256
    max_header_bytes: int = 16384


@dataclass(frozen=True, slots=True)
class HttpSettings:
    """The `[http]` table, checked."""

    tokens_file: Path | None = None
    policy_file: Path | None = None
    tls_cert: Path | None = None
    tls_key: Path | None = None
    metrics_public: bool = False
    limits: Limits = Limits()
    session_ttl: float = 8 * 3600.0

    @property
    def tls(self) -> bool:
        """True when the listener speaks TLS."""
        return self.tls_cert is not None


def http_settings(section: Any, where: str = "") -> HttpSettings:
    """Check and build the `[http]` table; raises SettingsError naming the file and the key."""
    if section is None:
        return HttpSettings()
    if not isinstance(section, Mapping):
        raise SettingsError("[http] must be a table", where=where, hint="write it as an [http] table")
    unknown = sorted(str(k) for k in section if k not in KEYS)
    if unknown:
        raise SettingsError(f"[http]: unknown key(s): {', '.join(unknown)}", where=where,
                            hint=f"known keys: {', '.join(KEYS)}")
    paths: dict[str, Path | None] = {}
    for key in _PATHS:
        value = section.get(key)
        if value is not None and (not isinstance(value, str) or not value):
            raise SettingsError(f"[http] {key} must be a file path, not {value!r}", where=where)
        paths[key] = Path(value).expanduser() if value else None
    if (paths["tls_cert"] is None) != (paths["tls_key"] is None):
        raise SettingsError("[http] tls_cert and tls_key go together", where=where,
                            hint="set both (the certificate chain and its private key), or neither")
    public = section.get("metrics_public", False)
    if not isinstance(public, bool):
        raise SettingsError(f"[http] metrics_public must be true or false, not {public!r}", where=where)
    numbers: dict[str, Any] = {}
    for key, default in _NUMBERS.items():
        value = section.get(key, default)
        if isinstance(value, bool) or not isinstance(value, int | float) or value <= 0:
            raise SettingsError(f"[http] {key} must be a positive number of seconds, not {value!r}", where=where,
                                hint=f"e.g. {key} = {default:g}")
        numbers[key] = float(value)
    for key, idefault in _INTS.items():
        value = section.get(key, idefault)
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise SettingsError(f"[http] {key} must be a positive whole number, not {value!r}", where=where,
                                hint=f"e.g. {key} = {idefault}")
        numbers[key] = value
    ttl = section.get("session_ttl", 8 * 3600)
    if isinstance(ttl, bool) or not isinstance(ttl, int | float) or not 0 < ttl <= 7 * 86400:
        raise SettingsError(f"[http] session_ttl must be seconds between 1 and a week, not {ttl!r}", where=where,
                            hint="e.g. session_ttl = 28800 (eight hours)")
    return HttpSettings(tokens_file=paths["tokens_file"], policy_file=paths["policy_file"],
                        tls_cert=paths["tls_cert"], tls_key=paths["tls_key"], metrics_public=public,
                        limits=Limits(**numbers), session_ttl=float(ttl))


def listen_host(listen: str) -> str:
    """The host part of `host:port` (brackets of an IPv6 address removed; empty means 127.0.0.1)."""
    host = listen.rpartition(":")[0] if ":" in listen else listen
    return host.strip("[]") or "127.0.0.1"


def is_loopback(host: str) -> bool:
    """True when every address `host` names is a loopback address (a name is resolved)."""
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        pass
    try:
        infos = socket.getaddrinfo(host, None, proto=socket.IPPROTO_TCP)
    except OSError:
        return False
    return bool(infos) and all(ipaddress.ip_address(str(info[4][0]).split("%")[0]).is_loopback for info in infos)


def check_exposure(listen: str, http: HttpSettings, where: str = "") -> None:
    """Refuse to serve a non-loopback address in clear or to nobody in particular (no tokens file)."""
    host = listen_host(listen)
    if is_loopback(host):
        return
    missing = [what for what, ok in (("TLS (tls_cert and tls_key)", http.tls),
                                     ("bearer tokens (tokens_file)", http.tokens_file is not None)) if not ok]
    if missing:
        raise SettingsError(
            f"refusing to listen on {listen}: it is not a loopback address and the [http] table lacks "
            f"{' and '.join(missing)}", where=where,
            hint="set [http] tls_cert, tls_key and tokens_file, or listen on 127.0.0.1 (http_listen)")
