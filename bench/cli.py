"""What a user feels at the command line: start-up, the template repo, and a cold apply of a few hundred files.

Each figure is the wall time of a whole `stratum` command in a fresh process (Python start-up included), the
median of `--samples` runs:

- `stratum --version` and `stratum --help` (the cost of importing the CLI);
- on the template repo (`stratum init`): `stratum validate`, `stratum plan`, and the first `stratum apply`
  (a fresh data directory and root for every sample, so each one is a first apply);
- a cold `stratum apply` of 200 new `file` resources (2 Nickel files of 100) from an empty root;
- `stratum status` and `stratum plan` while a `stratumd` runs on the template (the CLI asks it over its socket).

`--baseline FILE` prints a previous results file (for example one measured before a change) side by side.
`--compare DIR` measures a checkout of the code before a change (`git archive main | tar -x -C DIR`) in the
same run: every sample of a command runs once with DIR's packages ahead of this checkout's (PYTHONPATH) and
once without, alternately, so both see the same load (the daemon-answered figures are this checkout's only).
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
             "template_first_apply": 2.0, "apply_200_files": 1.5, "daemon_status": 0.25, "daemon_plan": 1.0}
LABELS = {"version": "stratum --version", "help": "stratum --help",
          "template_validate": "stratum validate (template)", "template_plan": "stratum plan (template)",
          "template_first_apply": "stratum apply (template, first)",
          "apply_200_files": "stratum apply (200 new files, cold)",
          "daemon_status": "stratum status (a daemon runs)", "daemon_plan": "stratum plan (template, a daemon runs)"}


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


BEFORE_SAMPLES: dict[str, list[float]] = {}


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
        before_env = {**env, "PYTHONPATH": str(Path(args.compare).resolve())} if args.compare else None

        def both(key: str, argv: list[str], cwd: Path, fresh: str = "") -> None:
            """One sample of `argv` for this checkout, then (with --compare) one for the code before; in `argv`,
            "{fresh}" becomes `fresh` and "{tag}" nothing, or both get "-before" for the code before (a first
            apply needs a data directory and root of its own)."""
            def with_dir(tag: str) -> list[str]:
                return [a.replace("{fresh}", f"{fresh}{tag}").replace("{tag}", tag) for a in argv]
            samples[key].append(timed(with_dir(""), cwd, env, key))
            if before_env is not None:
                cpu = _children_cpu()
                BEFORE_SAMPLES.setdefault(key, []).append(timed(with_dir("-before"), cwd, before_env))
                CPU_S.setdefault("before:" + key, []).append(_children_cpu() - cpu)

        for _ in range(args.samples):
            both("version", [stratum, "--version"], base)
            both("help", [stratum, "--help"], base)
        timed([stratum, "init", str(base / "ops")], base, env)
        ops = base / "ops"
        for i in range(args.samples):
            data = ["--data-dir", "{fresh}"]
            both("template_validate", [stratum, "validate", *data], ops, str(base / f"template-data-{i}"))
            both("template_plan", [stratum, "plan", *data], ops, str(base / f"template-data-{i}"))
            both("template_first_apply", [stratum, "apply", *data], ops, str(base / f"template-apply-{i}"))

        # With a daemon on the template, the CLI only asks it over its socket.
        with common.DaemonProcess(ops, base / "daemon-data", base / "daemon-root") as daemon:
            daemon.wait_run(common.git(ops, "rev-parse", "HEAD"), timeout=600)
            data = ["--data-dir", str(base / "daemon-data")]
            for _ in range(args.samples):
                samples["daemon_status"].append(timed([stratum, "status", *data], ops, env, "daemon_status"))
                samples["daemon_plan"].append(timed([stratum, "plan", *data], ops, env, "daemon_plan"))

        repo = Repo.create(base / "files")
        layout = InfraLayout.generate(2, 100)
        repo.write(layout.rendered())
        repo.commit("200 files")
        repo.push()
        for i in range(args.samples):
            both("apply_200_files", [stratum, "apply", "--repo", str(repo.bare), "--data-dir", "{fresh}",
                                     "--root", str(base / f"files-root-{i}") + "{tag}"], base,
                 str(base / f"files-data-{i}"))

    baseline = json.loads(Path(args.baseline).read_text())["median_s"] if args.baseline else {}
    baseline_cpu = json.loads(Path(args.baseline).read_text()).get("cpu_median_s", {}) if args.baseline else {}
    if args.compare:
        baseline = {k: statistics.median(v) for k, v in BEFORE_SAMPLES.items()}
        baseline_cpu = {k.split(":", 1)[1]: statistics.median(v) for k, v in CPU_S.items() if k.startswith("before:")}
    rows = []
    for key, target in TARGETS_S.items():
        med = statistics.median(samples[key])
        before, before_cpu = baseline.get(key), baseline_cpu.get(key)
        rows.append([LABELS[key], before if before is not None else "", med, min(samples[key]), max(samples[key]),
                     before_cpu if before_cpu is not None else "", statistics.median(CPU_S[key]),
                     f"< {target:g}", verdict(med, target)])
    print_table(f"CLI wall time, seconds (median of {args.samples}; before = "
                f"{(args.compare and f'{args.compare}, interleaved') or args.baseline or 'n/a'}; "
                f"load average now {os.getloadavg()[0]:.1f})",
                ["command", "wall before", "wall", "min", "max", "cpu before", "cpu", "target", ""], rows)
    return {"params": {"samples": args.samples}, "targets_s": TARGETS_S,
            "median_s": {k: statistics.median(v) for k, v in samples.items()},
            "cpu_median_s": {k: statistics.median(v) for k, v in CPU_S.items()}, "cpu_samples_s": CPU_S,
            "stats_s": {k: summary(v) for k, v in samples.items()}, "samples_s": samples,
            "baseline_median_s": baseline, "baseline_cpu_median_s": baseline_cpu,
            "compare": args.compare, "before_samples_s": BEFORE_SAMPLES}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=5)
    parser.add_argument("--baseline", default=None, help="a previous results JSON to print side by side")
    parser.add_argument("--compare", default=None,
                        help="a checkout of the code before (its packages go first on PYTHONPATH), sampled "
                             "alternately with this one in the same run")
    parser.add_argument("--name", default="cli", help="results file name (bench/results/<name>.json)")
    parser.add_argument("--quick", action="store_true", help="3 samples")
    parser.add_argument("--keep", action="store_true")
    args = parser.parse_args()
    if args.quick:
        args.samples = 3
    common.write_result(args.name, run(args))


if __name__ == "__main__":
    main()
