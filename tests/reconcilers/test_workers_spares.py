"""Spare workers (reconcilers/workers.py): a worker started ahead is the one the next start of exactly that
command gets; anything else gets a new process, and spares nobody took are stopped."""

from __future__ import annotations

import os
import sys

from reconcilers.workers import start_spare, start_worker, stop_spares, stop_worker

# A worker that echoes its pid once asked, then waits for stdin to close.
ECHO = [sys.executable, "-c", "import os, sys\nsys.stdin.readline()\nprint(os.getpid(), flush=True)\nsys.stdin.read()"]


def _pid_of(proc_argv: list[str], env: dict[str, str]) -> tuple[int, int]:
    proc = start_worker(proc_argv, env)
    try:
        assert proc.stdin is not None and proc.stdout is not None
        proc.stdin.write("pid?\n")
        proc.stdin.flush()
        return proc.pid, int(proc.stdout.readline())
    finally:
        stop_worker(proc)


def test_the_spare_is_the_worker_the_same_command_gets() -> None:
    """start_spare, then start_worker of the same command and environment: the same process answers."""
    env = dict(os.environ)
    start_spare(ECHO, env)
    try:
        from reconcilers import workers

        spare_pid = next(iter(workers._spares.values())).pid
        pid, answered = _pid_of(ECHO, env)
        assert pid == answered == spare_pid
        assert workers._spares == {}
    finally:
        stop_spares()


def test_another_environment_gets_a_new_worker_and_unclaimed_spares_stop() -> None:
    """A spare is never handed to a command with another environment; stop_spares ends the one left."""
    from reconcilers import workers

    env = dict(os.environ)
    start_spare(ECHO, env)
    spare = next(iter(workers._spares.values()))
    pid, _ = _pid_of(ECHO, {**env, "STRATUM_TEST_OTHER": "1"})
    assert pid != spare.pid
    assert stop_spares() == 1
    assert spare.poll() is not None                      # stopped and reaped


def test_a_spare_that_left_is_replaced_by_a_new_worker() -> None:
    """A spare that exited (its idle time passed) is reaped and a fresh worker started instead."""
    from reconcilers import workers

    env = dict(os.environ)
    start_spare(ECHO, env)
    spare = next(iter(workers._spares.values()))
    spare.kill()
    spare.wait()
    pid, answered = _pid_of(ECHO, env)
    assert pid == answered != spare.pid
    assert stop_spares() == 0
