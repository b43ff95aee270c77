"""Host settings: stratumd.toml, then environment (STRATUM_*), then flags -> one frozen Settings.

This is the only module that reads the environment. Repo content never sets host settings: the branch to
watch, the local provider's root and the listeners are the host's decision.
"""

from __future__ import annotations

import os
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from types import MappingProxyType
from typing import Any

from daemon.errors import SettingsError


def default_data_dir(env: Mapping[str, str]) -> Path:
    """systemd's StateDirectory when set, else $XDG_STATE_HOME/stratum, else ~/.local/state/stratum."""
    if env.get("STATE_DIRECTORY"):
        return Path(env["STATE_DIRECTORY"].split(":")[0])
    base = env.get("XDG_STATE_HOME") or str(Path(env.get("HOME", "~")).expanduser() / ".local" / "state")
    return Path(base) / "stratum"


@dataclass(frozen=True, slots=True)
class Settings:
    """Everything the daemon and CLI need to know about this host."""

    repo: str = "."
    branch: str = "main"
    data_dir: Path = Path(".")
    root: Path | None = None                  # the local provider's root; default <data_dir>/root
    interval: float = 60.0                    # seconds between fetches of a remote
    drift_interval: float = 300.0             # seconds between drift checks (0: off)
    on_interrupted: str = "rollback"          # rollback | resume
    parallelism: int = 4
    http_listen: str = "127.0.0.1:0"          # host:port for /metrics (port 0: pick a free one)
    log_format: str = "auto"                  # auto | json | console
    nickel_timeout: float = 10.0
    nickel_memory_mb: int = 1024
    max_files: int = 50_000                   # files per revision (a repo's stratum.ncl may ask for fewer)
    notes: bool = True
    sections: Mapping[str, Any] = field(default_factory=lambda: MappingProxyType({}))
    config_path: Path | None = None           # the stratumd.toml these came from (for messages and reloads)

    @property
    def socket_path(self) -> Path:
        """The daemon's control socket."""
        return self.data_dir / "stratumd.sock"

    @property
    def index_path(self) -> Path:
        """The DuckDB index file."""
        return self.data_dir / "index.duckdb"

    @property
    def local_root(self) -> Path:
        """Where the local provider keeps its resources."""
        return self.root or self.data_dir / "root"

    def reconciler_settings(self) -> dict[str, Any]:
        """Host settings per reconciler section, with the infra root filled in."""
        out = {k: dict(v) for k, v in self.sections.items() if isinstance(v, Mapping)}
        out.setdefault("infra", {})["root"] = str(self.local_root)
        return out


_SCALARS = {f.name: f.type for f in fields(Settings) if f.name not in ("sections", "config_path")}
RESTART_ONLY = ("repo", "branch", "data_dir", "root", "http_listen", "parallelism", "nickel_timeout",
                "nickel_memory_mb", "log_format", "notes")      # what a SIGHUP reload cannot change in place


def _coerce(name: str, value: Any) -> Any:
    kind = _SCALARS[name]
    try:
        if "Path" in str(kind):
            return None if value in (None, "") else Path(str(value)).expanduser()
        if kind in ("float", float):
            return float(value)
        if kind in ("int", int):
            return int(value)
        if kind in ("bool", bool):
            return value if isinstance(value, bool) else str(value).lower() in ("1", "true", "yes", "on")
        return str(value)
    except (TypeError, ValueError) as err:
        raise SettingsError(f"setting {name}: {value!r} is not a valid {kind}") from err


def load_settings(flags: Mapping[str, Any], env: Mapping[str, str] | None = None,
                  config: Path | None = None) -> Settings:
    """Build Settings from (lowest first) defaults, the TOML file, STRATUM_* variables, then flags."""
    env = dict(os.environ if env is None else env)
    values: dict[str, Any] = {}
    data_dir = flags.get("data_dir") or env.get("STRATUM_DATA_DIR") or default_data_dir(env)
    config = config or (Path(env["STRATUM_CONFIG"]) if env.get("STRATUM_CONFIG") else Path(data_dir) / "stratumd.toml")
    sections: dict[str, Any] = {}
    if config.exists():
        try:
            raw = tomllib.loads(config.read_text())
        except (tomllib.TOMLDecodeError, OSError, UnicodeDecodeError) as err:
            raise SettingsError(f"cannot read host settings: {err}", where=str(config),
                                hint="fix the TOML syntax") from err
        for key, value in raw.items():
            # Tables (`[webhooks.gh]`, `[signing]`) and arrays of tables (`[[windows]]`) are sections the
            # components that own them validate.
            if isinstance(value, dict) or (isinstance(value, list) and all(isinstance(v, dict) for v in value)):
                sections[key] = value
            elif key in _SCALARS:
                values[key] = value
            else:
                raise SettingsError(f"unknown setting {key!r}", where=str(config),
                                    hint=f"known: {', '.join(sorted(_SCALARS))}")
    for name in _SCALARS:
        if f"STRATUM_{name.upper()}" in env:
            values[name] = env[f"STRATUM_{name.upper()}"]
    values.update({k: v for k, v in flags.items() if v is not None and k in _SCALARS})
    values["data_dir"] = data_dir
    settings = Settings(**{k: _coerce(k, v) for k, v in values.items()},
                        sections=MappingProxyType(sections), config_path=config)
    if settings.on_interrupted not in ("rollback", "resume"):
        raise SettingsError(f"on_interrupted must be rollback or resume, not {settings.on_interrupted!r}")
    if settings.parallelism < 1:
        raise SettingsError("parallelism must be at least 1")
    if settings.max_files < 1:
        raise SettingsError("max_files must be at least 1", hint="the most files a revision may hold")
    return replace(settings, data_dir=Path(settings.data_dir).expanduser().resolve())
