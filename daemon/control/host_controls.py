"""Host controls: the parts of host settings the daemon's loop consults on every wake (webhook receivers,
deny/allow windows, admission), how a SIGHUP reload merges new settings into running ones, and the check that
refuses a person's apply while applying is suspended or a window blocks it (daemon and CLI alike)."""

from __future__ import annotations

from dataclasses import dataclass, fields, replace
from datetime import UTC, datetime
from types import MappingProxyType
from typing import TYPE_CHECKING

from daemon.control.admission import AdmissionSettings, admission_settings
from daemon.control.windows import Window, gate, windows_from_settings
from daemon.errors import SettingsError, StratumError
from daemon.settings import RESTART_ONLY, Settings

if TYPE_CHECKING:
    from daemon.git.webhook import Receiver
    from daemon.index.store import Index


@dataclass(frozen=True, slots=True)
class HostControls:
    """The parts of host settings the loop consults on every wake, rebuilt (and checked) on SIGHUP."""

    receivers: dict[str, Receiver]
    windows: tuple[Window, ...]
    admission: AdmissionSettings


def host_controls(settings: Settings) -> HostControls:
    """Check and build the webhook, window and admission settings; raises SettingsError naming the file."""
    where = str(settings.config_path or "")
    hooks = settings.sections.get("webhooks", {})
    windows = settings.sections.get("windows", [])
    if not isinstance(hooks, dict):
        raise SettingsError("[webhooks] must be tables: [webhooks.<name>]", where=where)
    if not isinstance(windows, list):
        raise SettingsError("windows must be an array of tables: [[windows]]", where=where)
    receivers: dict[str, Receiver] = {}
    if hooks:
        # Imported only when receivers are declared: the webhook module brings starlette (~0.1 s of every
        # `stratum apply`, which only needs the windows).
        from daemon.git.webhook import receivers_from_settings

        receivers = receivers_from_settings(hooks, where)
    return HostControls(receivers, windows_from_settings(windows, where), admission_settings(settings, where))


LIVE_SECTIONS = frozenset({"webhooks", "signing", "policy", "windows"})   # what a reload changes in place


def merge_reload(old: Settings, new: Settings) -> tuple[Settings, list[str]]:
    """The settings a reload puts in force: `new`, except what only a restart can change (kept from `old`,
    so everything derived from them sees what actually runs); returns them and the names kept back."""
    stuck = [f.name for f in fields(old) if f.name in RESTART_ONLY and getattr(old, f.name) != getattr(new, f.name)]
    sections = dict(new.sections)
    for key in (set(old.sections) | set(new.sections)) - LIVE_SECTIONS:
        if old.sections.get(key) != new.sections.get(key):
            stuck.append(f"[{key}]")
            if key in old.sections:
                sections[key] = old.sections[key]
            else:
                sections.pop(key)
    kept = {n: getattr(old, n) for n in stuck if n in RESTART_ONLY}
    return replace(new, **kept, sections=MappingProxyType(sections)), stuck


def refuse_manual(index: Index, windows: tuple[Window, ...]) -> None:
    """A person's apply/rollback is refused while suspended, or in a window that does not allow manual runs."""
    if index.get_state("suspended") == "true":
        raise StratumError("applying is suspended", hint="`stratum resume` first, or pass --force")
    g = gate(windows, datetime.now(UTC), manual=True)
    if g.blocked:
        raise StratumError(f"blocked: {g.reason}", hint="wait for the window to end, or pass --force")
