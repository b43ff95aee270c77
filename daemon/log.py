"""Logging: structlog, JSON lines when not on a TTY (systemd, CI), readable on a TTY.

The only module holding logging's global state. Nothing secret is ever logged: callers pass ids, paths and
counts, never values; URLs go through `daemon.git.source.sanitize_url`.
"""

from __future__ import annotations

import logging
import sys
from types import ModuleType
from typing import Any


def _structlog_without_rich() -> ModuleType:
    """Import structlog without letting it import rich.

    structlog imports rich when it is installed (rich is, for the CLI's progress bar), only to draw tracebacks
    in console logs, and with it pygments and attrs: ~0.15 s of every `stratum` command and ~8 MB of the
    daemon, for a feature Stratum does not use (configure() below asks for plain tracebacks). Hiding rich
    while structlog's modules load makes its optional imports fail as if rich were absent; rich stays
    importable afterwards. Has no effect when structlog or rich was imported earlier."""
    if "structlog" in sys.modules or "rich" in sys.modules:
        import structlog as already
        return already
    sys.modules["rich"] = None  # type: ignore[assignment]  # a None entry makes `import rich` fail
    try:
        import structlog as module
    finally:
        if "rich" in sys.modules and sys.modules["rich"] is None:
            del sys.modules["rich"]
    return module


def __getattr__(name: str) -> Any:
    """`daemon.log.structlog`, imported on first use (`from daemon.log import structlog` included): a verb
    that logs nothing, such as `stratum validate`, does not pay for structlog and the asyncio it imports
    (~40 ms)."""
    if name == "structlog":
        module = _structlog_without_rich()
        globals()["structlog"] = module
        return module
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def configure(fmt: str = "auto", stream: Any = None) -> None:
    """Set up structlog once per process; `fmt` is auto | json | console."""
    structlog = __getattr__("structlog")
    stream = stream or sys.stdout
    use_json = fmt == "json" or (fmt == "auto" and not stream.isatty())
    renderer: Any = (structlog.processors.JSONRenderer() if use_json else
                     structlog.dev.ConsoleRenderer(colors=False, exception_formatter=structlog.dev.plain_traceback))
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
    return __getattr__("structlog").get_logger(name).bind(**bind)
