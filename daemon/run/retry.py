"""Retrying one action by the class of its error (reconcilers/errors.py), like Flux's terminal vs requeue.

    TerminalError   no retry: the action fails, the run rolls back, the revision stalls until a new commit
    TransientError  retried with capped exponential backoff and jitter, `attempts` tries in all, then it fails
    WaitingError    requeued after the delay the reconciler asked for; not a failure and not counted as a try,
                    until `max_wait` seconds of waiting are spent (a dependency that never comes is a failure)
    anything else   as before: the action fails at once

Each retry and each wait is an event (`action_retry`, `action_waiting`) and a count in the metrics, so a target
that limps shows before it fails. Sleeping honours the daemon's stop event: a shutdown never waits out a backoff.
"""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from reconcilers.base import Action, ApplyContext, Outcome
from reconcilers.errors import ApplyError, TransientError, WaitingError

# (kind of retry, action, message) -> None: the executor records an event and counts it
OnRetry = Callable[[str, Action, str], None]


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """How hard to try one action. Delays are seconds; `jitter` is the fraction of each delay drawn at random
    (so actions that failed together do not hammer the target together)."""

    attempts: int = 4                 # tries of a transient failure, the first included
    base: float = 0.5                 # the first backoff
    cap: float = 30.0                 # no backoff is longer
    jitter: float = 0.5
    max_wait: float = 600.0           # total waiting on a dependency before the action fails

    def backoff(self, failures: int, hint: float | None = None, rng: random.Random | None = None) -> float:
        """The delay after the `failures`-th transient failure: base * 2^(failures-1), at most `cap`, the
        target's own hint when it gave a longer one (still capped), less a random share of up to `jitter`."""
        delay = min(self.cap, max(self.base * 2.0 ** (failures - 1), hint or 0.0))
        draw = rng.random() if rng is not None else random.random()
        return delay * (1 - self.jitter * draw)


class Stopped(ApplyError):
    """The daemon is stopping while an action waited to be tried again."""


def apply_with_retry(apply: Callable[[Action, ApplyContext], Outcome], action: Action, ctx: ApplyContext,
                     policy: RetryPolicy, on_retry: OnRetry, stop: threading.Event | None = None) -> Outcome:
    """`apply(action, ctx)`, retried by the class of what it raises (see the module docstring); the last error
    is raised when the tries or the waiting budget are spent, or when the daemon stops meanwhile."""
    failures = 0
    waited = 0.0
    while True:
        try:
            return apply(action, ctx)
        except WaitingError as err:
            delay = max(0.0, min(err.after, policy.max_wait - waited))
            if waited >= policy.max_wait:
                raise WaitingError(f"still waiting after {waited:.0f} s: {err.what}", where=err.where,
                                   hint=err.hint or "check the dependency the action waits for") from err
            waited += delay
            on_retry("waiting", action, f"{action.id} waits {delay:.1f} s ({waited:.0f} of at most "
                                        f"{policy.max_wait:.0f} s): {err.what}")
        except TransientError as err:
            failures += 1
            if failures >= policy.attempts:
                raise
            delay = policy.backoff(failures, err.after)
            on_retry("transient", action, f"{action.id} failed (try {failures} of {policy.attempts}), retrying "
                                          f"in {delay:.1f} s: {err.what}")
        _sleep(delay, stop)


def _sleep(delay: float, stop: threading.Event | None) -> None:
    if stop is None:
        time.sleep(delay)
    elif stop.wait(delay):
        raise Stopped("the daemon is stopping; the action was not tried again",
                      hint="the next start applies the branch again")
