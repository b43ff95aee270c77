"""The `plan.read` tool and the prompts' `plan()` helper: the kernel's own plan of the watched branch.

A reconciler cannot build the kernel's plan itself (it imports only the contract) and the plan needs every
reconciler, so it asks the kernel through its public interface: `stratum plan --format markdown` for the
repository and data directory the service runs for. With a daemon on that data directory the CLI asks the
daemon over its control socket (the daemon plans its own head, read-only); without one, the CLI plans in its
own process. Bounded like any command the agents run: a timeout, an output cap, the host's base environment.
A plan that cannot be made is an answer saying why, never an exception in the run.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

from reconcilers.agents.command import run_command

TIMEOUT = 120.0              # seconds a plan may take (a daemon busy applying answers after its run)
MAX_PLAN = 64 * 1024         # bytes of the plan kept (the tool answer is cut further, tools.MAX_RESULT)


def kernel_plan(stratum: str, repo: str, data_dir: Path, *, timeout: float = TIMEOUT,
                config: str = "") -> Callable[[], str]:
    """A function returning the markdown plan of `repo`'s watched branch, as `stratum plan` makes it."""
    argv = [stratum, "plan", "--repo", repo, "--data-dir", str(data_dir), "--format", "markdown"]
    if config:
        argv += ["--config", config]

    def read() -> str:
        work = data_dir / "agents" / "work"
        work.mkdir(parents=True, exist_ok=True)
        # The kernel's own settings (STRATUM_*) pass; nothing else of this process's environment does.
        names = [k for k in os.environ if k.startswith("STRATUM_")]
        r = run_command(argv, cwd=work, timeout=timeout, allow_env=names, max_output=MAX_PLAN)
        if r.ok or (r.exit_code == 1 and r.stdout.strip() and not r.timed_out):
            # Exit 1 with a plan: the revision would be rejected; its problems are the plan's content.
            return r.stdout.strip() or "(no changes)"
        # The CLI's last words: its error line and its hint (no traceback reaches a user from `stratum`).
        said = [line.strip() for line in r.stderr.splitlines() if line.strip()][-2:]
        why = r.error or (f"timed out after {timeout:g} s" if r.timed_out else
                          "; ".join(said)[:500] or f"exit {r.exit_code}")
        return f"error: the plan could not be made: {why}"

    return read
