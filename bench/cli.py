"""What a user feels at the command line: start-up, the template repo, and a cold apply of a few hundred files.

Each figure is the wall time of a whole `stratum` command in a fresh process (Python start-up included), the
median of `--samples` runs:

- `stratum --version` and `stratum --help` (the cost of importing the CLI);
- on the template repo (`stratum init`): `stratum validate`, `stratum plan`, and the first `stratum apply`
  (a fresh data directory and root for every sample, so each one is a first apply);
- a cold `stratum apply` of 200 new `file` resources (2 Nickel files of 100) from an empty root.

`--baseline FILE` prints a previous results file (for example one measured before a change) side by side.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import time
from pathlib import Path
from typing import Any

import common
from common import InfraLayout, Repo, print_table, summary, verdict

TARGETS_S = {"version": 0.25, "help": 0.25, "template_validate": 1.0, "template_plan": 1.0,
             "template_first_apply": 2.0, "apply_200_files": 1.5}
LABELS = {"version": "stratum --version", "help": "stratum --help",
          "template_validate": "stratum validate (template)", "template_plan": "stratum plan (template)",
          "template_first_apply": "stratum apply (template, first)",
          "apply_200_files": "stratum apply (200 new files, cold)"}


CPU_S: dict[str, list[float]] = {}


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def timed(argv: list[str], cwd: Path, env: dict[str, str], key: str = "") -> float:
    """Wall time of one command; raises with its output when it fails. The CPU time of the command and
    of the children it waited for (user + system, less sensitive to a loaded machine) goes to CPU_S[key]."""
    cpu = _children_cpu()
    t = time.perf_counter()
    proc = subprocess.run(argv, cwd=cwd, env=env, capture_output=True, text=True, check=False, timeout=600)
    wall = time.perf_counter() - t
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(argv)} failed ({proc.returncode}): {proc.stdout[-1500:]} {proc.stderr[-1500:]}")
    if key:
        CPU_S.setdefault(key, []).append(_children_cpu() - cpu)
    return wall


def run(args: argparse.Namespace) -> dict[str, Any]:
    stratum = common.tool("stratum")
    samples: dict[str, list[float]] = {k: [] for k in TARGETS_S}
    with common.workspace("cli", args.keep) as base:
        env = {**os.environ, **common.GIT_ENV, "HOME": str(base)}
        env.pop("STATE_DIRECTORY", None)
        # A user's install has its bytecode compiled; a PYTHONDONTWRITEBYTECODE inherited from a dev shell would
        # make every sample compile the whole project from source.
        env.pop("PYTHONDONTWRITEBYTECODE", None)
        env["XDG_STATE_HOME"] = str(base / "state")
        for _ in range(args.samples):
            samples["version"].append(timed([stratum, "--version"], base, env, "version"))
            samples["help"].append(timed([stratum, "--help"], base, env, "help"))
        timed([stratum, "init", str(base / "ops")], base, env)
        ops = base / "ops"
        for i in range(args.samples):
            data = ["--data-dir", str(base / f"template-data-{i}")]
            samples["template_validate"].append(timed([stratum, "validate", *data], ops, env, "template_validate"))
            samples["template_plan"].append(timed([stratum, "plan", *data], ops, env, "template_plan"))
            fresh = ["--data-dir", str(base / f"template-apply-{i}")]
            samples["template_first_apply"].append(timed([stratum, "apply", *fresh], ops, env, "template_first_apply"))

        repo = Repo.create(base / "files")
        layout = InfraLayout.generate(2, 100)
        repo.write(layout.rendered())
        repo.commit("200 files")
        repo.push()
        for i in range(args.samples):
            samples["apply_200_files"].append(timed(
                [stratum, "apply", "--repo", str(repo.bare), "--data-dir", str(base / f"files-data-{i}"),
                 "--root", str(base / f"files-root-{i}")], base, env, "apply_200_files"))

    baseline = json.loads(Path(args.baseline).read_text())["median_s"] if args.baseline else {}
    baseline_cpu = json.loads(Path(args.baseline).read_text()).get("cpu_median_s", {}) if args.baseline else {}
    rows = []
    for key, target in TARGETS_S.items():
        med = statistics.median(samples[key])
        before, before_cpu = baseline.get(key), baseline_cpu.get(key)
        rows.append([LABELS[key], before if before is not None else "", med, min(samples[key]), max(samples[key]),
                     before_cpu if before_cpu is not None else "", statistics.median(CPU_S[key]),
                     f"< {target:g}", verdict(med, target)])
    print_table(f"CLI wall time, seconds (median of {args.samples}; before = {args.baseline or 'n/a'}; "
                f"load average now {os.getloadavg()[0]:.1f})",
                ["command", "wall before", "wall", "min", "max", "cpu before", "cpu", "target", ""], rows)
    return {"params": {"samples": args.samples}, "targets_s": TARGETS_S,
            "median_s": {k: statistics.median(v) for k, v in samples.items()},
            "cpu_median_s": {k: statistics.median(v) for k, v in CPU_S.items()}, "cpu_samples_s": CPU_S,
            "stats_s": {k: summary(v) for k, v in samples.items()}, "samples_s": samples,
            "baseline_median_s": baseline}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=5)
    parser.add_argument("--baseline", default=None, help="a previous results JSON to print side by side")
    parser.add_argument("--name", default="cli", help="results file name (bench/results/<name>.json)")
    parser.add_argument("--quick", action="store_true", help="3 samples")
    parser.add_argument("--keep", action="store_true")
    args = parser.parse_args()
    if args.quick:
        args.samples = 3
    common.write_result(args.name, run(args))


if __name__ == "__main__":
    main()
