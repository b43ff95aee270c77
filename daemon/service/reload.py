"""SIGHUP: host settings read again. Anything wrong keeps the old settings (the caller reports why)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, fields
from typing import Any

from daemon.control.host_controls import HostControls, host_controls, merge_reload
from daemon.errors import SettingsError
from daemon.http.auth import TokenStore
from daemon.settings import Settings


@dataclass(frozen=True, slots=True)
class Reloaded:
    """New settings and what follows from them."""

    settings: Settings
    controls: HostControls
    tokens: Any                  # the tokens file's entries, read again (revocations too); None without one
    changed: list[str]
    restart_required: list[str]  # settings that only take effect at the next start


def read_again(current: Settings, source: Callable[[], Settings] | None, config_existed: bool,
               tokens: TokenStore | None) -> Reloaded:
    """The settings `source` gives now, merged with what cannot change while running. Raises on any error."""
    if source is None:
        raise SettingsError("this daemon was started without a settings source to reload")
    config = current.config_path
    if config is not None and config_existed and not config.exists():
        raise SettingsError("the settings file is gone; keeping the settings it gave at start",
                            where=str(config), hint="restore the file, then reload again")
    new, stuck = merge_reload(current, source())
    controls = host_controls(new)
    entries = tokens.read() if tokens is not None else None
    changed = sorted(f.name for f in fields(new) if getattr(current, f.name) != getattr(new, f.name))
    return Reloaded(new, controls, entries, changed, list(stuck))
