"""The command runner: a task's program run with a timeout, an environment allow-list, output caps and a
working directory inside the host's agents work dir.

The child starts in its own session, so a timeout kills it and everything it started, and is killed when its
worker dies (so a redelivered run never races an orphan of the first delivery). Output beyond the cap
is counted and drained (a child blocked on a full pipe would never finish) but not kept; past HARD_LIMIT the
child is killed as flooding. The environment holds PATH, LANG and HOME of the host, the names the task lists
(when set on the host), and STRATUM_* values the runner adds; nothing else of the host leaks in.
"""

from __future__ import annotations

import os
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

BASE_ENV = ("PATH", "LANG", "LC_ALL", "HOME", "TZ")
HARD_LIMIT = 64 * 1024 * 1024       # bytes of output after which the child is killed as flooding


@dataclass(frozen=True, slots=True)
class CommandResult:
    """What a command did; `stdout`/`stderr` hold at most the task's cap (UTF-8, replaced when not)."""

    exit_code: int
    stdout: str
    stderr: str
    duration: float
    timed_out: bool = False
    truncated: bool = False
    flooded: bool = False
    error: str = ""                   # why it could not start, when it could not

    @property
    def ok(self) -> bool:
        """Exit 0 within the time and without flooding."""
        return self.exit_code == 0 and not self.timed_out and not self.flooded and not self.error

    def summary(self) -> str:
        """One line for the execution record."""
        if self.error:
            return self.error
        if self.timed_out:
            return f"timed out after {self.duration:.1f} s"
        if self.flooded:
            return f"killed: wrote more than {HARD_LIMIT} bytes of output"
        tail = (self.stdout.strip().splitlines() or [""])[-1][:200]
        return f"exit {self.exit_code}" + (f": {tail}" if tail else "") + (" (output truncated)" if self.truncated
                                                                          else "")


class _Sink:
    """Reads one pipe to its end, keeping the first `cap` bytes."""

    def __init__(self, pipe: IO[bytes], cap: int) -> None:
        self.cap, self.kept, self.total = cap, bytearray(), 0
        self.thread = threading.Thread(target=self._drain, args=(pipe,), daemon=True)
        self.thread.start()

    def _drain(self, pipe: IO[bytes]) -> None:
        with pipe:
            while chunk := pipe.read(65536):
                self.total += len(chunk)
                if len(self.kept) < self.cap:
                    self.kept += chunk[: self.cap - len(self.kept)]


def environment(allow: Sequence[str], extra: Mapping[str, str],
                host: Mapping[str, str] | None = None) -> dict[str, str]:
    """The child's environment: the base names and the allowed ones present on the host, then `extra`."""
    src = os.environ if host is None else host
    env = {k: src[k] for k in (*BASE_ENV, *allow) if k in src}
    env.update(extra)
    return env


def workdir(root: Path, cwd: str) -> Path:
    """The task's working directory under `root` (validate refused absolute paths and `..`)."""
    target = (root / cwd).resolve() if cwd else root.resolve()
    if root.resolve() not in (target, *target.parents):
        raise ValueError(f"working directory {cwd!r} leaves {root}")
    target.mkdir(parents=True, exist_ok=True)
    return target


def _prctl() -> Callable[..., int] | None:
    """libc's prctl, looked up once in the parent (loading it in each child cost ~25 ms per command)."""
    import ctypes

    try:
        fn: Callable[..., int] = ctypes.CDLL(None, use_errno=True).prctl
        return fn
    except (OSError, AttributeError):
        return None             # not Linux: the timeout still bounds the child


_PRCTL = _prctl()


def _setpriv() -> str | None:
    """util-linux's setpriv (Debian: always there), which sets PR_SET_PDEATHSIG on itself and execs the task."""
    import shutil

    found = shutil.which("setpriv")
    return found if found and os.access(found, os.X_OK) else None


_SETPRIV = _setpriv()


def _spawn_args(argv: Sequence[str], env: Mapping[str, str], cwd: Path) -> tuple[list[str], dict[str, Any]]:
    """The argv and Popen options that kill the child with its worker.

    A `preexec_fn` makes Python fork the worker (copying the page tables of a process holding DuckDB: ~166 ms a
    command on a loaded 2-core machine, against ~5 ms with vfork), so the death signal is set by `setpriv
    --pdeathsig KILL` in front of the program instead; `preexec_fn` only where setpriv is missing. The program
    is looked up first so one that cannot start is still refused here (no retry), not as setpriv's exit 127."""
    if _SETPRIV is None or _PRCTL is None:
        return list(argv), {"preexec_fn": _die_with_parent}
    program = argv[0]
    if "/" not in program:
        import shutil

        found = shutil.which(program, path=env.get("PATH", os.defpath))
        if found is None:
            raise FileNotFoundError(2, "No such file or directory", program)
        program = found
    elif not os.access(cwd / program, os.X_OK):
        missing = not (cwd / program).exists()
        raise (FileNotFoundError if missing else PermissionError)(
            2 if missing else 13, "No such file or directory" if missing else "Permission denied", program)
    return [_SETPRIV, "--pdeathsig", "KILL", "--", program, *argv[1:]], {}


def _die_with_parent() -> None:
    """In the child before exec: be killed when the worker dies (Linux PR_SET_PDEATHSIG), so a worker killed
    mid-task leaves no orphan finishing the task behind the run's redelivery."""
    if _PRCTL is not None:
        _PRCTL(1, signal.SIGKILL)                # 1 = PR_SET_PDEATHSIG


def run_command(argv: Sequence[str], *, cwd: Path, timeout: float, allow_env: Sequence[str] = (),
                extra_env: Mapping[str, str] | None = None, max_output: int = 65536,
                host_env: Mapping[str, str] | None = None) -> CommandResult:
    """Run `argv` (no shell) and wait, bounded by `timeout` seconds and the output caps."""
    start = time.monotonic()
    env = environment(allow_env, extra_env or {}, host_env)
    try:
        args, extra = _spawn_args(argv, env, cwd)
        proc = subprocess.Popen(args, cwd=cwd, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, start_new_session=True, **extra)
    except OSError as err:
        return CommandResult(127, "", "", 0.0, error=f"cannot start {argv[0]!r}: {err.strerror or err}")
    assert proc.stdout is not None and proc.stderr is not None
    out, errs = _Sink(proc.stdout, max_output), _Sink(proc.stderr, max_output)
    timed_out = flooded = False
    deadline = start + timeout
    while proc.poll() is None:
        if out.total + errs.total > HARD_LIMIT:
            flooded = True
        elif time.monotonic() >= deadline:
            timed_out = True
        if flooded or timed_out:
            _kill(proc)
            break
        try:
            proc.wait(timeout=max(0.001, min(0.05, deadline - time.monotonic())))
        except subprocess.TimeoutExpired:
            continue
    proc.wait()
    out.thread.join(5)
    errs.thread.join(5)
    return CommandResult(proc.returncode, out.kept.decode("utf-8", "replace"), errs.kept.decode("utf-8", "replace"),
                         time.monotonic() - start, timed_out=timed_out,
                         truncated=out.total > max_output or errs.total > max_output, flooded=flooded)


def _kill(proc: subprocess.Popen[bytes]) -> None:
    """Kill the child's whole session (it may have started others)."""
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass                    # it ended between the poll and the kill
