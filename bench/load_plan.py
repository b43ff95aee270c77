"""Cold and warm load + plan of 5,000 Nickel resources (50 infra files of 100 `file` resources).

Cold: a fresh Python process and a fresh data directory (empty Nickel cache, no Nickel worker yet, empty
index), through the library API: `daemon.run.runtime.build(settings)` (it starts the Nickel workers first), then
one `pipeline.plan(revision)` (snapshot, Nickel evaluation with the infra contract, validation, observation of
the root, diff, dependency order).
Each cold sample runs in its own child process so nothing is cached in memory; the phases are timed inside
the child. Warm: the same runtime planning the same revision again (in-memory Nickel cache by blob id).
Also: the CLI, `stratum plan --output json`, cold (wall time of the whole command, Python start-up included).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import common
from common import InfraLayout, Repo, print_table, summary, verdict

TARGET_S = 1.0          # library: build + plan (issue 10)
TARGET_CLI_S = 1.5      # `stratum plan`, Python start-up included


def _children_cpu() -> float:
    """User + system seconds of the children waited for so far (a CLI command and its Nickel workers)."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def child(repo: str, data_dir: str, root: str, warm_runs: int, timeline: bool = False,
          profile: str = "") -> dict[str, Any]:
    """Runs inside a fresh interpreter: times import, build, plan (cold), then warm plans. `timeline`: record
    the stages of the cold build + plan (bench/timeline.py); `profile`: a cProfile of them into that file."""
    t0 = time.perf_counter()
    from daemon.run.runtime import build
    from daemon.settings import Settings

    t_import = time.perf_counter()
    tl = None
    if timeline:
        import timeline as timeline_mod

        tl = timeline_mod.instrument()
    profiler = None
    if profile:
        import cProfile

        profiler = cProfile.Profile()
        profiler.enable()
    cpu0 = time.process_time()
    if tl is not None:
        tl.origin = time.perf_counter()
    settings = Settings(repo=repo, data_dir=Path(data_dir), root=Path(root))
    rt = build(settings)
    t_build = time.perf_counter()
    if tl is not None:
        timeline_mod.instrument_reconcilers(tl, rt.reconcilers)
    try:
        head = rt.source.resolve("main")
        report = rt.pipeline.plan(head)          # cold: the one load inside plan() evaluates every file
        t_plan = time.perf_counter()
        if profiler is not None:
            profiler.disable()
            profiler.dump_stats(profile)
        # This process's CPU for the cold build + plan alone (its threads included, the Nickel workers not):
        # the figure that a loaded host disturbs least.
        cpu_cold = time.process_time() - cpu0
        t = time.perf_counter()
        loaded = rt.pipeline.load(head)          # warm load (Nickel results cached by blob id)
        t_load_warm = time.perf_counter() - t
        infra = loaded.desired.get("infra")
        out: dict[str, Any] = {
            "import_s": t_import - t0, "build_s": t_build - t_import, "plan_s": t_plan - t_build,
            "load_warm_s": t_load_warm, "cpu_cold_s": cpu_cold,
            "resources": len(infra.resources) if infra is not None else 0,
            "actions": len(report.actions), "problems": [str(p) for p in report.problems[:5]],
            "nickel_evaluations": rt.evaluator.stats["evaluations"],
            "nickel_eval_ms": getattr(rt.evaluator, "last_eval_ms", None)}
        warm = []
        for _ in range(warm_runs):
            t = time.perf_counter()
            again = rt.pipeline.plan(head)
            warm.append(time.perf_counter() - t)
            assert len(again.actions) == len(report.actions)
        out["warm_plan_s"] = warm
        if tl is not None:
            out["timeline"] = tl.rows(until=t_plan)      # the cold build + plan only
        out["nickel_cache_hits"] = rt.evaluator.stats["cache_hits"]
    finally:
        rt.close()
    # CPU seconds, fairer than wall time on a loaded host: this process, and the Nickel workers it started
    # (reaped by close(), so counted as its children). Both include the warm runs.
    own, workers = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    out["cpu_self_s"] = own.ru_utime + own.ru_stime
    out["cpu_workers_s"] = workers.ru_utime + workers.ru_stime
    return out


def run(args: argparse.Namespace) -> dict[str, Any]:
    with common.workspace("load-plan", args.keep) as base:
        repo = Repo.create(base)
        layout = InfraLayout.generate(args.infra_files, args.per_file)
        repo.write(layout.rendered())
        repo.commit("generated resources")
        repo.push()
        resources = layout.count
        print(f"{resources:,} resources in {args.infra_files} files; {args.samples} cold samples")
        samples = []
        for i in range(args.samples):
            data_dir, root = base / f"data-{i}", base / f"root-{i}"
            t = time.perf_counter()
            proc = subprocess.run(
                [sys.executable, __file__, "--child", str(repo.bare), str(data_dir), str(root), str(args.warm)],
                capture_output=True, text=True, check=False, timeout=600)
            wall = time.perf_counter() - t
            if proc.returncode != 0:
                raise SystemExit(f"child failed: {proc.stderr[-3000:]}")
            sample = json.loads(proc.stdout.strip().splitlines()[-1])
            sample["process_wall_s"] = wall
            sample["build_load_plan_s"] = sample["build_s"] + sample["plan_s"]
            samples.append(sample)
            if sample["problems"]:
                print(f"  WARNING: problems: {sample['problems']}")
        stages: list[dict[str, Any]] = []
        if args.timeline or args.profile:
            extra = (["--timeline"] if args.timeline else []) + (["--profile", args.profile] if args.profile else [])
            proc = subprocess.run(
                [sys.executable, __file__, "--child", str(repo.bare), str(base / "data-t"), str(base / "root-t"),
                 "0", *extra], capture_output=True, text=True, check=False, timeout=600)
            if proc.returncode != 0:
                raise SystemExit(f"timeline child failed: {proc.stderr[-3000:]}")
            traced = json.loads(proc.stdout.strip().splitlines()[-1])
            stages = traced.get("timeline", [])
            if stages:
                print_table(f"One cold build + plan, stage by stage (build {traced['build_s']:.3f} s, plan "
                            f"{traced['plan_s']:.3f} s; ms from the start of build)",
                            ["stage", "start", "end", "wall", "cpu", "thread"],
                            [[r["stage"], r["start_ms"], r["end_ms"], r["wall_ms"], r["cpu_ms"], r["thread"]]
                             for r in stages])
        cli: list[float] = []
        cli_again: list[float] = []
        # CPU of each CLI command and the Nickel workers it waited for: on a loaded host the wall time is load
        cli_cpu: list[float] = []
        cli_again_cpu: list[float] = []
        for i in range(args.samples):
            data_dir = base / f"cli-data-{i}"
            # The second command on the same data directory is a new process too, but finds the Nickel values
            # the first one kept on disk (the usual `stratum plan` then `stratum apply`).
            for series, cpu_series in ((cli, cli_cpu), (cli_again, cli_again_cpu)):
                cpu = _children_cpu()
                t = time.perf_counter()
                proc = subprocess.run([common.tool("stratum"), "plan", "--repo", str(repo.bare), "--data-dir",
                                       str(data_dir), "--root", str(base / f"cli-root-{i}"), "--output", "json"],
                                      capture_output=True, text=True, check=False, timeout=600)
                series.append(time.perf_counter() - t)
                cpu_series.append(_children_cpu() - cpu)
                if proc.returncode != 0:
                    raise SystemExit(f"stratum plan failed: {proc.stderr[-3000:]}")
                cli_actions = len(json.loads(proc.stdout)["actions"])

    def med(key: str) -> float:
        return summary([s[key] for s in samples])["p50"]

    warm_all = [w for s in samples for w in s["warm_plan_s"]]
    cold = med("build_load_plan_s")
    rows = [
        ["cold: import daemon modules", med("import_s"), "", ""],
        ["cold: runtime.build (index, worker, reconcilers)", med("build_s"), "", ""],
        ["cold: pipeline.plan (snapshot, Nickel, validate, observe, diff, order)", med("plan_s"), "", ""],
        ["cold: build + plan (library)", cold, f"< {TARGET_S:g}", verdict(cold, TARGET_S)],
        ["  of which the Nickel worker's evaluation", med("nickel_eval_ms") / 1000, "", ""],
        ["cold: CPU of build + plan in the child (Python, its threads; no Nickel worker)", med("cpu_cold_s"), "",
         ""],
        ["cold: CPU of the child process (Python, incl. warm runs)", med("cpu_self_s"), "", ""],
        ["cold: CPU of its Nickel workers (incl. warm runs)", med("cpu_workers_s"), "", ""],
        ["cold: whole child process (python start to exit, incl. warm runs)", med("process_wall_s"), "", ""],
        ["cold: `stratum plan --output json` (CLI wall)", summary(cli)["p50"], f"< {TARGET_CLI_S:g}",
         verdict(summary(cli)["p50"], TARGET_CLI_S)],
        ["cold: `stratum plan --output json` (CLI CPU, with its Nickel workers)", summary(cli_cpu)["p50"], "",
         ""],
        ["again: `stratum plan` on the same data dir (new process, Nickel values on disk)",
         summary(cli_again)["p50"], "", ""],
        ["warm: pipeline.load again, same runtime", med("load_warm_s"), "", ""],
        ["warm: pipeline.plan again, same runtime", summary(warm_all)["p50"], "", ""],
    ]
    print_table(f"Load + plan of {resources:,} resources, seconds (median of {args.samples} cold samples; "
                f"{samples[0]['actions']:,} actions planned; load average now {os.getloadavg()[0]:.1f})",
                ["phase", "s", "target", ""], rows)
    return {"params": {"infra_files": args.infra_files, "per_file": args.per_file, "resources": resources,
                       "samples": args.samples, "warm": args.warm},
            "target_s": TARGET_S, "target_cli_s": TARGET_CLI_S,
            "cold_library_s": summary([s["build_load_plan_s"] for s in samples]),
            "cold_cli_s": summary(cli), "again_cli_s": summary(cli_again), "warm_plan_s": summary(warm_all),
            "cold_cli_cpu_s": summary(cli_cpu), "again_cli_cpu_s": summary(cli_again_cpu),
            "cli_actions": cli_actions, "timeline": stages,
            "samples": samples}


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        repo, data_dir, root, warm = sys.argv[2:6]
        extra = sys.argv[6:]
        print(json.dumps(child(repo, data_dir, root, int(warm), timeline="--timeline" in extra,
                               profile=extra[extra.index("--profile") + 1] if "--profile" in extra else "")))
        return
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--infra-files", type=int, default=50)
    parser.add_argument("--per-file", type=int, default=100)
    parser.add_argument("--samples", type=int, default=3, help="cold samples (each a fresh process and data dir)")
    parser.add_argument("--warm", type=int, default=3, help="warm plans per sample")
    parser.add_argument("--quick", action="store_true", help="1,000 resources, 2 samples")
    parser.add_argument("--keep", action="store_true")
    parser.add_argument("--name", default="load_plan", help="results file name (bench/results/<name>.json)")
    parser.add_argument("--timeline", action="store_true",
                        help="one more cold child, its build + plan recorded stage by stage (wall and CPU)")
    parser.add_argument("--profile", default="", help="cProfile of that child's cold build + plan into this file")
    args = parser.parse_args()
    if args.quick:
        args.infra_files, args.samples = 10, 2
    common.write_result(args.name, run(args))


if __name__ == "__main__":
    main()
