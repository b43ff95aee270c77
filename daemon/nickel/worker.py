"""The Nickel evaluation worker: a child process that evaluates requests from stdin, one JSON line each.

py-nickel holds the GIL for a whole evaluation and cannot be interrupted (PLATFORM.md), so evaluation runs
here, under an address-space limit, and the parent kills this process when a request overruns its deadline.
Request: {"src": str, "paths": [str]}; reply: {"ok": json-text} or {"error": text without ANSI codes}.
"""

from __future__ import annotations

import json
import re
import resource
import select
import sys

_ANSI = re.compile(r"\x1b\[[0-9;]*m")


TRIM_AFTER_S = 1.0     # quiet this long after a reply: the heap the evaluation freed goes back to the system


def _wait(idle: float, trim: bool) -> bool:
    """Whether a request came within `idle` seconds (0: wait for ever); trims the heap once quiet."""
    if trim:
        if select.select([sys.stdin], [], [], TRIM_AFTER_S)[0]:
            return True                                         # a burst of requests: no trimming between them
        # Imported here, after the first reply: its module brings subprocess and ctypes (~25 ms of CPU), which a
        # worker started ahead of a cold plan should not spend before its first evaluation.
        from reconcilers.workers import trim_heap

        trim_heap()          # a worker waiting for the next commit held its last evaluation's peak (5 MB and more)
        if idle > 0:
            idle = max(idle - TRIM_AFTER_S, 0.001)
    return idle <= 0 or bool(select.select([sys.stdin], [], [], idle)[0])


def main() -> None:
    """Serve requests until stdin closes."""
    limit_mb = int(sys.argv[1]) if len(sys.argv) > 1 else 1024
    if limit_mb > 0:
        limit = limit_mb * 1024 * 1024
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    import nickel  # after the limit, so a runaway evaluation cannot take the host's memory

    idle = float(sys.argv[2]) if len(sys.argv) > 2 else 0.0
    served = False
    while True:
        # An idle worker exits (its memory back to the host); the parent starts a new one when needed.
        if not _wait(idle, served):
            return
        served = True
        line = sys.stdin.readline()
        if not line:
            return
        request = json.loads(line)
        try:
            reply = {"ok": nickel.run(request["src"], request["paths"])}  # type: ignore[attr-defined]
        except MemoryError:
            reply = {"error": "error: evaluation ran out of memory (the worker's limit)"}
        except Exception as err:  # noqa: BLE001 every Nickel failure becomes a reply, never a dead worker
            reply = {"error": _ANSI.sub("", str(err))}
        sys.stdout.write(json.dumps(reply) + "\n")
        sys.stdout.flush()
        del request, reply                                      # not held while idle


if __name__ == "__main__":
    main()
