"""The kernel's pull-request plan for interfaces inside the daemon (ReconcilerEnv.plans): the forms web
backend shows a person the plan of the branch a form would make, and of the branch it made.

It runs `stratum plan --base B --head H --format markdown` as a child process, the command CI posts on pull
requests, so the page shows the same markdown a reviewer reads: every reconciler, admission, the principal.
A child and not the daemon's own pipeline: planning builds every reconciler and a Nickel worker, which must
neither share the daemon's (busy with its runs) nor keep its memory, and a deadline ends it whatever it does.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable

from daemon.errors import SourceError
from daemon.settings import Settings

PLAN_TIMEOUT_S = 180.0
MAX_PLAN_BYTES = 2 * 1024 * 1024


def kernel_planner(settings: Settings) -> Callable[[str, str], str]:
    """(base, head) -> the markdown plan of commit `head` against `base` in the repository of `settings`."""

    def plan(base: str, head: str) -> str:
        argv = [sys.executable, "-c", "from daemon.cli.main import main; main()", "plan", "--base", base,
                "--head", head, "--format", "markdown", "--repo", str(settings.repo),
                "--data-dir", str(settings.data_dir), "--branch", settings.branch]
        if settings.config_path is not None:
            argv += ["--config", str(settings.config_path)]
        if settings.root is not None:
            argv += ["--root", str(settings.root)]
        try:
            proc = subprocess.run(argv, capture_output=True, timeout=PLAN_TIMEOUT_S, stdin=subprocess.DEVNULL,
                                  env={**os.environ, "STRATUM_LOG_FORMAT": "json"}, check=False)
        except subprocess.TimeoutExpired as err:
            raise SourceError(f"the plan of {head[:12]} took over {PLAN_TIMEOUT_S:.0f} s", where=head,
                              hint="run `stratum plan --base ... --head ...` to see why") from err
        out = proc.stdout[:MAX_PLAN_BYTES].decode("utf-8", "replace")
        # Exit 1 with a plan: the head would be rejected, and the plan says why (what a reviewer must see).
        if proc.returncode not in (0, 1) or "stratum-plan part" not in out:
            last = proc.stderr.decode("utf-8", "replace").strip().splitlines()[-1:] or ["no message"]
            raise SourceError(f"`stratum plan` failed (exit {proc.returncode}): {last[0][:500]}", where=head,
                              hint="run `stratum plan --base ... --head ... --format markdown` to see the error")
        return out

    return plan
