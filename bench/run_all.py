"""Run every benchmark in turn (each in its own process) and print one summary beside the targets.

    .venv/bin/python bench/run_all.py [--quick] [--only latency,idle]

Each benchmark prints its own table and writes bench/results/<name>.json; this script reads those files back
for the summary. A failing benchmark is reported and the others still run.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from typing import Any

from common import BENCH_DIR, RESULTS_DIR, print_table

BENCHMARKS = ("cli", "load_plan", "latency", "apply_files", "idle")


def _load(name: str) -> dict[str, Any]:
    return dict(json.loads((RESULTS_DIR / f"{name}.json").read_text()))


def summary_rows(done: list[str]) -> list[list[Any]]:
    """One row per headline figure: benchmark, measure, value, target, verdict."""
    rows: list[list[Any]] = []
    if "latency" in done:
        r = _load("latency")["stats_ms"]
        for key, label, target in (("run start | from ref", "push->run start p50 (from ref moved)", 50),
                                   ("run start | from before", "push->run start p50 (from before git push)", 50),
                                   ("applied (checkpoint) | from ref", "push->applied p50 (from ref moved)", 300),
                                   ("applied (checkpoint) | from before", "push->applied p50 (from before push)", 300)):
            value = r.get(key, {}).get("p50", float("nan"))
            rows.append(["latency", label, f"{value:.1f} ms (p99 {r.get(key, {}).get('p99', float('nan')):.1f})",
                         f"< {target} ms", "met" if value < target else "MISSED"])
    if "cli" in done:
        r = _load("cli")
        for key, target in r["targets_s"].items():
            value = r["median_s"][key]
            rows.append(["cli", key.replace("_", " "), f"{value:.2f} s (cpu {r['cpu_median_s'][key]:.2f} s)",
                         f"< {target:g} s", "met" if value < target else "MISSED"])
    if "load_plan" in done:
        r = _load("load_plan")
        value = r["cold_library_s"]["p50"]
        rows.append(["load_plan", f"cold build+load+plan, {r['params']['resources']:,} resources (library)",
                     f"{value:.2f} s", "< 1 s", "met" if value < 1 else "MISSED"])
        value = r["cold_cli_s"]["p50"]
        rows.append(["load_plan", "cold `stratum plan` (CLI wall)", f"{value:.2f} s", "< 1.5 s",
                     "met" if value < 1.5 else "MISSED"])
        if "again_cli_s" in r:
            rows.append(["load_plan", "`stratum plan` again (values on disk)", f"{r['again_cli_s']['p50']:.2f} s",
                         "", ""])
        rows.append(["load_plan", "warm plan (same runtime)", f"{r['warm_plan_s']['p50']:.2f} s", "", ""])
    if "apply_files" in done:
        r = _load("apply_files")
        n = r["params"]["files"]
        rows.append(["apply_files", f"ansible copy / stratum apply CLI, {n:,} files",
                     f"{r['ratio_cli']:.1f}x ({r['ansible_copy_s']:.1f} s / {r['stratum_cli_s']:.2f} s)",
                     ">= 100x", "met" if r["ratio_cli"] >= 100 else "MISSED"])
        rows.append(["apply_files", "ansible copy / stratum pipeline.run",
                     f"{r['ratio_library']:.1f}x ({r['stratum_library']['run_s']:.2f} s)", ">= 100x",
                     "met" if r["ratio_library"] >= 100 else "MISSED"])
    if "idle" in done:
        r = _load("idle")
        rows.append(["idle", f"RSS daemon + children over {r['wall_s']:.0f} s", f"{r['rss_mb_max']:.1f} MB",
                     "< 120 MB", "met" if r["rss_mb_max"] < 120 else "MISSED"])
        rows.append(["idle", "CPU daemon + children", f"{r['cpu_pct']:.2f} %", "< 1 %",
                     "met" if r["cpu_pct"] < 1 else "MISSED"])
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smaller sizes (each benchmark's --quick)")
    parser.add_argument("--only", default=",".join(BENCHMARKS), help="comma-separated subset")
    args = parser.parse_args()
    done, failed = [], []
    for name in [n.strip() for n in args.only.split(",") if n.strip()]:
        if name not in BENCHMARKS:
            raise SystemExit(f"unknown benchmark {name!r}; known: {', '.join(BENCHMARKS)}")
        print(f"\n=== {name} ===", flush=True)
        t = time.monotonic()
        proc = subprocess.run([sys.executable, str(BENCH_DIR / f"{name}.py"), *(["--quick"] if args.quick else [])],
                              check=False)
        print(f"=== {name}: exit {proc.returncode} in {time.monotonic() - t:.0f} s", flush=True)
        (done if proc.returncode == 0 else failed).append(name)
    print_table("Summary" + (" (quick sizes)" if args.quick else ""),
                ["benchmark", "measure", "value", "target", ""], summary_rows(done))
    if failed:
        print(f"\nfailed: {', '.join(failed)}")
        sys.exit(1)


if __name__ == "__main__":
    main()
