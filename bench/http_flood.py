"""A real `stratumd` under a slow-client flood (issue 16, item 10): does it keep answering and applying?

The daemon watches a bare repository and runs with a descriptor limit of `--nofile` (soft = hard, set with
`prlimit`, so it cannot raise it). For `--seconds`, `--clients` slow HTTP clients each send a request line and
then one header line every half second, reconnecting when the daemon cuts them off (slowloris). Meanwhile, every
half second, a fresh client asks GET /healthz (5 s timeout), the daemon's open descriptors are counted from
/proc, and `--pushes` one-file commits are pushed, spaced out, each timed from `git push` returning to the
daemon's `run` log line (30 s timeout). A quiet phase first gives the same /healthz figures without the flood.

`--code DIR` runs the daemon from another checkout (the code before a change; the venv's editable install is
taken out of the import path for it), and `--name` keeps its results apart.
"""

from __future__ import annotations

import argparse
import http.client
import os
import socket
import sys
import threading
import time
from pathlib import Path
from typing import Any

import common
from common import DaemonProcess, Repo, infra_ncl, ms, print_table, summary

HEALTHZ_TIMEOUT_S = 5.0
APPLY_TIMEOUT_S = 30.0


def healthz(port: int) -> float | None:
    """Seconds for GET /healthz on a fresh connection, or None when it failed or timed out."""
    start = time.perf_counter()
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=HEALTHZ_TIMEOUT_S)
    try:
        conn.request("GET", "/healthz")
        ok = conn.getresponse().status == 200
    except (OSError, http.client.HTTPException):
        ok = False
    finally:
        conn.close()
    return time.perf_counter() - start if ok else None


class Flood:
    """Slow clients on a thread, reconnecting when cut off, until stopped."""

    def __init__(self, port: int, count: int) -> None:
        self.port, self.count = port, count
        self.opened = 0
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _open(self) -> socket.socket | None:
        sock = socket.socket()
        sock.setblocking(False)
        self.opened += 1
        if sock.connect_ex(("127.0.0.1", self.port)) not in (0, 115):
            sock.close()
            return None
        return sock

    def _run(self) -> None:
        socks: list[socket.socket | None] = [self._open() for _ in range(self.count)]
        sent: set[int] = set()
        while not self.stop.is_set():
            for i, sock in enumerate(socks):
                if sock is None:
                    socks[i] = sock = self._open()
                    sent.discard(i)
                if sock is None:
                    continue
                try:
                    sock.send(b"X-Slow: 1\r\n" if i in sent else b"GET /healthz HTTP/1.1\r\n")
                    sent.add(i)
                except (BlockingIOError, InterruptedError):
                    pass
                except OSError:
                    sock.close()
                    socks[i] = None
            self.stop.wait(0.5)
        for sock in socks:
            if sock is not None:
                sock.close()


def motd(n: int) -> dict[str, str]:
    """The repo's one infra file, its content numbered."""
    return {"infra/motd.ncl": infra_ncl([common.FileResource("motd", "motd", f"version {n}\n", "0644")])}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=500)
    parser.add_argument("--nofile", type=int, default=300)
    parser.add_argument("--seconds", type=float, default=30.0)
    parser.add_argument("--pushes", type=int, default=3)
    parser.add_argument("--code", type=Path, help="run the daemon from this checkout instead of the venv's")
    parser.add_argument("--name", default="http_flood", help="results file name (bench/results/<name>.json)")
    parser.add_argument("--keep", action="store_true")
    parser.add_argument("--quick", action="store_true", help="200 clients for 15 s")
    args = parser.parse_args()
    if args.quick:
        args.clients, args.seconds = 200, 15.0
    with common.workspace("http-flood", args.keep) as base:
        repo = Repo.create(base)
        repo.write(motd(0))
        first = repo.commit("v0")
        repo.push()
        config = base / "stratumd.toml"
        # Read by the daemon with the listener limits; a daemon without them ignores the table.
        config.write_text("[http]\nheader_timeout = 2\nbody_timeout = 2\nfd_reserve = 150\n")
        daemon = DaemonProcess(repo.bare, base / "data", base / "root", "--config", str(config),
                               "--drift-interval", "0", "--http-listen", "127.0.0.1:0")
        if args.code:
            boot = ("import sys; sys.meta_path[:] = [f for f in sys.meta_path if not type(f).__module__"
                    f".startswith('__editable__')]; sys.path.insert(0, {str(args.code.resolve())!r}); "
                    "from daemon.cli.main import daemon_main; daemon_main()")
            daemon.argv = [sys.executable, "-c", boot, *daemon.argv[1:]]
        daemon.argv = ["prlimit", f"--nofile={args.nofile}:{args.nofile}", *daemon.argv]
        with daemon:
            daemon.wait_run(first, 60)
            port = int(daemon.wait_for(lambda e: e.get("event") == "started", 30)["http_port"])
            quiet = [healthz(port) for _ in range(20)]
            flood = Flood(port, args.clients)
            flood.thread.start()
            samples: list[float | None] = []
            fds: list[int] = []
            applied: list[float | None] = []
            end = time.monotonic() + args.seconds
            push_every = args.seconds / (args.pushes + 1)
            next_push = time.monotonic() + push_every
            pushed = 0
            # Until the time is up and every commit was pushed (a minute past the time at most).
            while ((time.monotonic() < end or pushed < args.pushes) and time.monotonic() < end + 60
                   and daemon.proc is not None and daemon.proc.poll() is None):
                samples.append(healthz(port))
                try:
                    fds.append(len(os.listdir(f"/proc/{daemon.pid}/fd")))
                except OSError:
                    pass
                if pushed < args.pushes and time.monotonic() >= next_push:
                    pushed += 1
                    repo.write(motd(pushed))
                    rev = repo.commit(f"v{pushed}")
                    mark = len(daemon.events)
                    _, returned = repo.push()
                    try:
                        run = daemon.wait_run(rev, APPLY_TIMEOUT_S, mark)
                        applied.append(run["_received"] - returned if run.get("outcome") == "succeeded" else None)
                    except TimeoutError:
                        applied.append(None)
                    next_push = time.monotonic() + push_every
                time.sleep(0.5)
            flood.stop.set()
            flood.thread.join(30)
            alive = daemon.proc is not None and daemon.proc.poll() is None
        stderr = daemon.stderr_tail(10 ** 9)
        tracebacks = stderr.count("Traceback") + sum("Traceback" in line for line in daemon.stray)
        log_bytes = len(stderr) + sum(len(line) for line in daemon.stray) + sum(len(str(e)) for e in daemon.events)
    ok = [s for s in samples if s is not None]
    done = [a for a in applied if a is not None]
    result: dict[str, Any] = {
        "parameters": {"clients": args.clients, "nofile": args.nofile, "seconds": args.seconds,
                       "pushes": args.pushes, "code": str(args.code or common.PROJECT_DIR)},
        "healthz_quiet_ms": summary([ms(s) for s in quiet if s is not None]),
        "healthz_flood": {"asked": len(samples), "answered": len(ok), "ms": summary([ms(s) for s in ok]) if ok
                          else {}},
        "pushes_applied": len(done), "push_to_applied_ms": [ms(a) if a is not None else None for a in applied],
        "fds_max": max(fds, default=0), "daemon_alive": alive, "tracebacks_logged": tracebacks,
        "log_bytes": log_bytes, "slow_connections_opened": flood.opened,
    }
    q, f = result["healthz_quiet_ms"], result["healthz_flood"].get("ms", {})
    title = f"stratumd under {args.clients} slow clients, nofile {args.nofile}, {args.seconds:g} s"
    print_table(title, ["figure", "value"], [
        ["/healthz quiet p50 / p90 ms", f"{q.get('p50', 0):.1f} / {q.get('p90', 0):.1f}"],
        ["/healthz under flood answered", f"{len(ok)} of {len(samples)}"],
        ["/healthz under flood p50 / p90 ms", f"{f.get('p50', 0):.1f} / {f.get('p90', 0):.1f}" if f else "-"],
        ["commits applied under flood", f"{len(done)} of {len(applied)} pushed"],
        ["push -> applied ms", ", ".join(f"{ms(a):.0f}" if a is not None else "timeout" for a in applied)],
        ["daemon descriptors, max seen", result["fds_max"]],
        ["daemon alive at the end", alive],
        ["tracebacks logged", tracebacks],
        ["log bytes", log_bytes],
        ["slow connections opened", flood.opened],
    ])
    common.write_result(args.name, result)


if __name__ == "__main__":
    main()
