"""The safe editing flow: plaintext only in a 0600 file in a private 0700 directory (on tmpfs when there is
one), removed on every exit path: normal return, errors, Ctrl-C, SIGTERM and SIGHUP.
"""

from __future__ import annotations

import contextlib
import os
import shlex
import shutil
import signal
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path
from types import FrameType
from typing import Any

from reconcilers.vault.errors import ManifestError, VaultError
from reconcilers.vault.manifest import META_KEY, check_keys, dump_yaml, load_yaml

TMPFS_CANDIDATES = ("/dev/shm", os.environ.get("XDG_RUNTIME_DIR", ""))


class Interrupted(VaultError):
    """The edit was stopped by a signal; the plaintext was removed."""


def _tmp_base() -> str | None:
    for base in TMPFS_CANDIDATES:
        if base and os.path.isdir(base) and os.access(base, os.W_OK | os.X_OK):
            return base
    return None  # the system default temp dir


def _shred(folder: Path) -> None:
    # Overwrite before unlinking: cheap, and it keeps plaintext out of a disk-backed temp dir's free blocks.
    for f in folder.glob("*"):
        with contextlib.suppress(OSError):
            size = f.stat().st_size
            with open(f, "r+b") as fh:
                fh.write(b"\0" * size)
    shutil.rmtree(folder, ignore_errors=True)


@contextlib.contextmanager
def private_dir() -> Iterator[Path]:
    """A fresh 0700 directory, shredded and removed on exit, whatever the exit."""
    folder = Path(tempfile.mkdtemp(prefix="stratum-edit-", dir=_tmp_base()))

    def on_signal(signum: int, _frame: FrameType | None) -> None:
        raise Interrupted(f"stopped by signal {signal.Signals(signum).name}; the plaintext copy was removed")

    previous = {s: signal.signal(s, on_signal) for s in (signal.SIGTERM, signal.SIGHUP)}
    try:
        yield folder
    finally:
        _shred(folder)
        for s, handler in previous.items():
            signal.signal(s, handler)


def editor_command() -> list[str]:
    """$VISUAL, else $EDITOR, else vi, split like a shell would."""
    return shlex.split(os.environ.get("VISUAL") or os.environ.get("EDITOR") or "vi")


def edit_values(values: dict[str, Any], where: str, header: str = "") -> dict[str, Any]:
    """Let the user edit `values` in $EDITOR; the edited values; the plaintext file dies with the call."""
    with private_dir() as folder:
        path = folder / Path(where).name
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as fh:
            fh.write(header + (dump_yaml(values) if values else "{}\n"))
        try:
            result = subprocess.run([*editor_command(), str(path)], check=False)
        except OSError as err:
            raise ManifestError(
                f"cannot start the editor: {err.strerror}",
                where=where,
                hint="set $EDITOR to an installed editor",
            ) from err
        if result.returncode != 0:
            raise ManifestError(
                f"the editor exited with status {result.returncode}; nothing was saved",
                where=where,
                hint="save and quit normally to keep the changes",
            )
        edited = load_yaml(path.read_text(), where)
    if edited is None:
        edited = {}
    if not isinstance(edited, dict):
        raise ManifestError("the edited document must be a YAML mapping; nothing was saved", where=where)
    if META_KEY in edited:
        raise ManifestError(f"the top-level key `{META_KEY}` is reserved for the metadata block", where=where)
    check_keys(edited, where)
    return edited
