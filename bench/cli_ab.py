"""`stratum validate` and `stratum plan` of the template, before and after a change, alternately in one run.

Each sample runs `daemon.cli.main.main()` in a fresh interpreter through a small harness that records, at the
process's exit (the verbs end with `os._exit`), the wall time since the harness's first line (Python's own
start-up excluded, the same for both sides), the process's CPU and its reaped children's (the Nickel and
template workers). The code before is a checkout put first on PYTHONPATH (`git worktree add --detach DIR REV`).
On a loaded host, compare the minimum and lower quartile more than the median: bench/results/clifast_s23_ab.md.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
from pathlib import Path
from typing import Any

import common
from common import print_table

HARNESS = """
import os, resource, sys, time
t0 = time.perf_counter()
real = os._exit
def report(code=0):
    me, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    with open(os.environ["CLI_AB_OUT"], "w") as out:
        out.write(f"{time.perf_counter() - t0} {me.ru_utime + me.ru_stime} {kids.ru_utime + kids.ru_stime}")
    real(code)
os._exit = report
import atexit
atexit.register(report)
sys.argv = ["stratum", *sys.argv[1:]]
from daemon.cli.main import main
main()
"""


def sample(argv: list[str], cwd: Path, env: dict[str, str], out: Path) -> tuple[float, float, float]:
    """(wall, own CPU, children's CPU) of one command."""
    proc = subprocess.run([sys.executable, "-c", HARNESS, *argv], cwd=cwd, env={**env, "CLI_AB_OUT": str(out)},
                          capture_output=True, text=True, timeout=600, check=False)
    if proc.returncode not in (0, 2):
        raise SystemExit(f"{argv} failed ({proc.returncode}): {proc.stderr[-2000:]}")
    wall, own, kids = map(float, out.read_text().split())
    return wall, own, kids


def stats(values: list[float]) -> dict[str, float]:
    ordered = sorted(values)
    return {"min": ordered[0], "p25": ordered[len(ordered) // 4], "p50": statistics.median(ordered)}


def run(args: argparse.Namespace) -> dict[str, Any]:
    before = str(Path(args.compare).resolve())
    results: dict[str, dict[str, list[float]]] = {}
    with common.workspace("cli-ab", args.keep) as base:
        env = {**os.environ, **common.GIT_ENV, "HOME": str(base), "XDG_STATE_HOME": str(base / "state")}
        env.pop("PYTHONDONTWRITEBYTECODE", None)      # a user's install has its bytecode compiled
        env.pop("STATE_DIRECTORY", None)
        subprocess.run([common.tool("stratum"), "init", str(base / "ops")], cwd=base, env=env, check=True,
                       capture_output=True, timeout=300)
        for i in range(args.samples):
            for verb in ("validate", "plan"):
                for side, side_env in (("before", {**env, "PYTHONPATH": before}), ("after", env)):
                    data = base / f"data-{verb}-{side}-{i}"
                    wall, own, kids = sample([verb, "--data-dir", str(data)], base / "ops", side_env,
                                             base / "sample.txt")
                    for key, value in (("wall", wall), ("cpu", own), ("workers_cpu", kids)):
                        results.setdefault(f"{verb}:{side}", {}).setdefault(key, []).append(value)
    rows = []
    for verb in ("validate", "plan"):
        for key in ("wall", "cpu", "workers_cpu"):
            b, a = stats(results[f"{verb}:before"][key]), stats(results[f"{verb}:after"][key])
            rows.append([f"stratum {verb} {key}", *(f"{b[q]:.3f} -> {a[q]:.3f}" for q in ("min", "p25", "p50"))])
    print_table(f"before -> after (before = {before}, interleaved, {args.samples} samples each; load average "
                f"now {os.getloadavg()[0]:.1f})", ["what (s)", "min", "p25", "median"], rows)
    return {"params": {"samples": args.samples, "compare": before}, "samples": results}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--compare", required=True, help="a checkout of the code before")
    parser.add_argument("--samples", type=int, default=10)
    parser.add_argument("--name", default="cli_ab", help="results file name (bench/results/<name>.json)")
    parser.add_argument("--keep", action="store_true")
    args = parser.parse_args()
    common.write_result(args.name, run(args))


if __name__ == "__main__":
    main()
