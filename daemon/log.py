"""Logging: structlog, JSON lines when not on a TTY (systemd, CI), readable on a TTY.

The only module holding logging's global state. Nothing secret is ever logged: callers pass ids, paths and
counts, never values; URLs go through `daemon.git.source.sanitize_url`.
"""

from __future__ import annotations

import importlib.util
import logging
import sys
from collections.abc import Callable
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


class _ConfigureOnImport:
    """A finder on sys.meta_path that finds nothing itself: when structlog is first imported (by anyone, with
    `import structlog` too), it lets the other finders find it, hides rich while it loads (as
    _structlog_without_rich does) and runs `then` right after it loaded, before the importer gets it."""

    def __init__(self, then: Callable[[], None]) -> None:
        self.then = then

    def find_spec(self, name: str, path: Any = None, target: Any = None) -> Any:
        if name != "structlog" or self not in sys.meta_path:
            return None
        sys.meta_path.remove(self)               # once: the spec comes from the finders after this one
        spec = importlib.util.find_spec(name)
        if spec is None or spec.loader is None:
            return spec
        load, then = spec.loader.exec_module, self.then

        def exec_module(module: ModuleType) -> None:
            hide = "rich" not in sys.modules
            if hide:
                sys.modules["rich"] = None  # type: ignore[assignment]  # structlog's optional import fails
            try:
                load(module)
            finally:
                if hide and sys.modules.get("rich", False) is None:
                    del sys.modules["rich"]
            then()

        spec.loader.exec_module = exec_module  # type: ignore[method-assign]
        return spec


def configure_when_imported(fmt: str, stream: Any, level: int = logging.INFO) -> None:
    """configure(fmt, stream) with `level` as the lowest level shown: now when structlog is loaded, else as soon
    as anything imports it. A CLI verb that runs the pipeline and logs nothing (`stratum plan`) then never
    imports structlog and the asyncio it brings (~50 ms), while a line logged does go through this setup."""
    def setup() -> None:
        configure(fmt, stream)
        if level != logging.INFO:
            structlog = __getattr__("structlog")
            structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(level))

    sys.meta_path[:] = [f for f in sys.meta_path if not isinstance(f, _ConfigureOnImport)]
    if "structlog" in sys.modules:
        setup()
    else:
        sys.meta_path.insert(0, _ConfigureOnImport(setup))


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
