"""An index opened on a background thread while its caller goes on: what a CLI `stratum plan` uses.

Importing DuckDB and opening (or creating) the index costs ~0.25 s of CPU, and a plan needs the index only
after the revision is loaded, which spends about as long waiting for the Nickel and template workers (child
processes; the main thread sits in `select`, the GIL free). Opened on a thread, the index is ready by then:
the DuckDB import runs while the main thread waits. The first use of the index waits for the thread and
raises what opening raised (a LockError, a damaged file), so callers see the same errors, only later.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, cast

if TYPE_CHECKING:
    from daemon.index.store import Index


class IndexOpening:
    """Stands for an `Index` being opened by `open_index` on a thread; every attribute is the opened index's."""

    __slots__ = ("_error", "_index", "_thread")

    def __init__(self, open_index: Callable[[], Index]) -> None:
        self._index: Index | None = None
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._open, args=(open_index,), name="index-open", daemon=True)
        self._thread.start()

    def _open(self, open_index: Callable[[], Index]) -> None:
        try:
            self._index = open_index()
        except BaseException as err:  # noqa: BLE001 handed to the first user of the index, in its thread
            self._error = err

    def opened(self) -> Index:
        """The index, once open (waits for the thread); raises what opening raised."""
        self._thread.join()
        if self._error is not None:
            raise self._error
        assert self._index is not None
        return self._index

    def close(self) -> None:
        """Close the index if it opened; an index that failed to open has nothing to close (its error was, or
        will be, raised by the use that needed it)."""
        self._thread.join()
        if self._index is not None:
            self._index.close()

    def __getattr__(self, name: str) -> Any:
        return getattr(self.opened(), name)


def open_in_background(open_index: Callable[[], Index]) -> Index:
    """`open_index()` run on a thread; the result stands for the index it returns (see IndexOpening)."""
    # Imported here, before the thread starts, so the thread's imports are DuckDB's alone (module locks taken
    # by two threads importing project modules that import each other could deadlock).
    import daemon.run.journal  # noqa: F401  (the index module's only project import not loaded by now)

    return cast("Index", IndexOpening(open_index))
