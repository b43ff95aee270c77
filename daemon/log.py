"""Logging: structlog, JSON lines when not on a TTY (systemd, CI), readable on a TTY.

The only module holding logging's global state. Nothing secret is ever logged: callers pass ids, paths and
counts, never values; URLs go through `daemon.source.sanitize_url`.
"""

from __future__ import annotations

import logging
import sys
from typing import Any

import structlog


def configure(fmt: str = "auto", stream: Any = None) -> None:
    """Set up structlog once per process; `fmt` is auto | json | console."""
    stream = stream or sys.stdout
    use_json = fmt == "json" or (fmt == "auto" and not stream.isatty())
    renderer: Any = structlog.processors.JSONRenderer() if use_json else structlog.dev.ConsoleRenderer(colors=False)
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(logging.INFO),
        logger_factory=structlog.PrintLoggerFactory(file=stream),
        cache_logger_on_first_use=False,
    )


def get(name: str = "stratumd", **bind: Any) -> Any:
    """A bound logger."""
    return structlog.get_logger(name).bind(**bind)
