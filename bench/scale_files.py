"""20,000 tiny `.ncl` files: validate, first apply, a one-file change and deleting them all.

Issue 16 item 5 found the daemon took 18 minutes to apply 20,000 one-resource infra files, `stratum validate`
did not finish in 10 minutes and deleting them took 69 s. This benchmark builds that repository (each file
`infra/sNN/fNNNNN.ncl` declares one small `file` resource) and measures, in fresh processes and data dirs:

- validate: `stratum validate --rev main` (CLI wall time, cold: Python start-up, Nickel worker, contracts);
- first apply: `pipeline.run(head)` from an empty root and index (library, the run alone), as the daemon runs
  a new commit (`incremental=True`);
- one-file change: a commit changing one resource's content, run the same way (the runtime warm, as in a
  daemon);
- delete all: a commit removing every infra file, run the same way (every file pruned from the root).

Targets (issue 16): validate < 10 s, first apply < 60 s, one-file change < 1 s. Deleting has no target (69 s
before). Prints a table beside the figures measured before the scale work (bench/results/scale_files_before.json,
commit 377d87c) and writes bench/results/scale_files.json (another file count: scale_files_<n>.json), with the
before figures under `before`. Figures are wall-clock on whatever load the machine carries: the 1-minute load
average is recorded at the start and end of every step (`*_load`); run on a quiet host for comparable numbers.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import common
from common import print_table, verdict

TARGETS = {"validate_s": 10.0, "first_apply_s": 60.0, "one_change_s": 1.0}


def ncl(i: int, tag: str = "v0") -> str:
    """One tiny infra file declaring resource `r<i>`."""
    return (f"{{\n  resources = {{\n    r{i:05d} = {{ kind = 'file, path = \"scale/s{i % 100:02d}/f{i:05d}.conf\", "
            f"content = \"n = {i} {tag}\\n\" }},\n  }},\n}}\n")


def rel(i: int) -> str:
    """The repo path of file `i`."""
    return f"infra/s{i % 100:02d}/f{i:05d}.ncl"


def build_repo(base: Path, n: int) -> common.Repo:
    """A work repository with `n` tiny infra files in one commit."""
    repo = common.Repo.create(base)
    repo.write({rel(i): ncl(i) for i in range(n)})
    repo.commit(f"{n} tiny infra files")
    return repo


def child(repo: str, data_dir: str, root: str, n: int) -> dict[str, Any]:
    """In a fresh interpreter: first apply, one-file change, delete all; each run timed alone."""
    sys.path.insert(0, str(common.PROJECT_DIR))
    from daemon.run.runtime import build
    from daemon.settings import Settings

    work = Path(repo)
    rt = build(Settings(repo=repo, data_dir=Path(data_dir), root=Path(root)))
    out: dict[str, Any] = {}
    try:
        def timed(name: str) -> None:
            head = rt.source.resolve("main")
            # The previous run's hooks (its execution node, the collector's settle) run between pushes in a
            # daemon: finished before the clock starts, so each run is timed alone.
            rt.pipeline.wait_hooks()
            load = os.getloadavg()[0]
            t, cpu = time.perf_counter(), time.process_time()
            result = rt.pipeline.run(head, trigger="bench", incremental=True)
            out[f"{name}_s"] = time.perf_counter() - t
            # CPU of this process (every thread; the Nickel workers are other processes): less swayed by a
            # loaded host than wall time.
            out[f"{name}_cpu_s"] = time.process_time() - cpu
            out[f"{name}_load"] = [load, os.getloadavg()[0]]
            out[f"{name}_status"] = result.status
            out[f"{name}_actions"] = len(result.actions)
            if result.problems:
                out[f"{name}_problem"] = str(result.problems[0])

        timed("first_apply")
        files = sum(1 for _ in Path(root).rglob("*.conf"))
        out["files_on_disk_after_apply"] = files
        (work / rel(7)).write_text(ncl(7, "v1"))
        common.git(work, "commit", "-qam", "one file")
        timed("one_change")
        out["changed_content_ok"] = (Path(root) / "scale/s07/f00007.conf").read_text() == "n = 7 v1\n"
        common.git(work, "rm", "-rq", "infra")
        common.git(work, "commit", "-qm", "delete all")
        timed("delete_all")
        out["files_on_disk_after_delete"] = sum(1 for _ in Path(root).rglob("*.conf"))
    finally:
        rt.close()
    return out


def main() -> None:
    """Build the repository, measure validate with the CLI, then the runs in a child process."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--files", type=int, default=20_000)
    parser.add_argument("--quick", action="store_true", help="2,000 files")
    parser.add_argument("--keep", action="store_true")
    parser.add_argument("--child", nargs=4, metavar=("REPO", "DATA", "ROOT", "N"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(args.child[0], args.child[1], args.child[2], int(args.child[3]))))
        return
    n = 2_000 if args.quick else args.files
    with common.workspace("scale", args.keep) as base:
        t = time.perf_counter()
        repo = build_repo(base, n)
        build_s = time.perf_counter() - t
        load = os.getloadavg()[0]
        t = time.perf_counter()
        proc = subprocess.run([common.tool("stratum"), "validate", "--rev", "main", "--repo", str(repo.work),
                               "--data-dir", str(base / "validate-data")], capture_output=True, text=True,
                              check=False, timeout=1800)
        validate_s = time.perf_counter() - t
        validate_load = [load, os.getloadavg()[0]]
        runs = subprocess.run([sys.executable, __file__, "--child", str(repo.work), str(base / "data"),
                               str(base / "root"), str(n)], capture_output=True, text=True, check=False,
                              timeout=7200)
        if runs.returncode != 0:
            raise SystemExit(f"child failed:\n{runs.stderr[-4000:]}")
        figures: dict[str, Any] = json.loads(runs.stdout.strip().splitlines()[-1])
    figures.update({"files": n, "build_repo_s": build_s, "validate_s": validate_s, "validate_load": validate_load,
                    "validate_exit": proc.returncode, "validate_output_tail": (proc.stdout + proc.stderr)[-300:]})
    before_file = common.RESULTS_DIR / "scale_files_before.json"
    before_doc: dict[str, Any] = json.loads(before_file.read_text()) if before_file.exists() else {}
    before: dict[str, Any] = before_doc.get("figures", {})
    before_load = round(float(before_doc.get("environment", {}).get("loadavg_at_end", [0.0])[0]), 1)
    same_size = before.get("files") == n

    def was(key: str) -> str:
        return f"{before[key]:.2f} s" if same_size and key in before else "-"

    def loads(key: str) -> str:
        start, end = figures[key]
        return f"{start:.1f} -> {end:.1f}"

    rows = [
        ("validate (CLI, cold)", was("validate_s"), f"{validate_s:.2f} s", f"< {TARGETS['validate_s']:g} s",
         verdict(validate_s, TARGETS["validate_s"]), loads("validate_load"), f"exit {proc.returncode}"),
        ("first apply", was("first_apply_s"), f"{figures['first_apply_s']:.2f} s",
         f"< {TARGETS['first_apply_s']:g} s", verdict(figures["first_apply_s"], TARGETS["first_apply_s"]),
         loads("first_apply_load"), f"{figures['first_apply_status']}, {figures['first_apply_actions']} actions"),
        ("one-file change", was("one_change_s"), f"{figures['one_change_s']:.3f} s",
         f"< {TARGETS['one_change_s']:g} s", verdict(figures["one_change_s"], TARGETS["one_change_s"]),
         loads("one_change_load"), f"{figures['one_change_status']}, {figures['one_change_actions']} actions, "
                                   f"CPU {figures['one_change_cpu_s']:.3f} s"),
        ("delete all", was("delete_all_s"), f"{figures['delete_all_s']:.2f} s", "(69 s in the issue)", "",
         loads("delete_all_load"), f"{figures['delete_all_status']}, {figures['delete_all_actions']} actions"),
    ]
    print_table(f"{n} tiny .ncl files (before: {before_file.name}, load1 {before_load} at its end)",
                ["step", "before", "after", "target", "verdict", "load1 start -> end", "outcome"], rows)
    name = "scale_files" if n == 20_000 else f"scale_files_{n}"
    common.write_result(name, {"figures": figures, "targets": TARGETS,
                               "before": before if same_size else None})


if __name__ == "__main__":
    main()
