"""A structlog logger that imports structlog when something is first logged, not when its module loads.

Validating or planning a repository logs nothing, yet the reconcilers that log from the daemon (agents,
knowledge) imported structlog at load, and with it asyncio: ~40 ms of every `stratum validate`. The daemon
configures structlog (daemon/log.py) long before any of these loggers is used, so binding late changes nothing.
"""

from __future__ import annotations

from typing import Any


class LazyLogger:
    """Forwards every call (`info`, `warning`, `exception`, `bind`, ...) to structlog's logger of `name`."""

    __slots__ = ("_name",)

    def __init__(self, name: str) -> None:
        self._name = name

    def __getattr__(self, attr: str) -> Any:
        import structlog

        return getattr(structlog.get_logger(self._name), attr)


def lazy_logger(name: str) -> LazyLogger:
    """The logger of `name`, structlog imported on first use."""
    return LazyLogger(name)
