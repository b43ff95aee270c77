"""Apply 1,000 local `file` resources with Stratum, side by side with ansible-core applying the same files.

Both start from an empty root and write the same 1,000 files (same paths, contents and modes).
- Stratum, CLI: `stratum apply --output json` on a fresh data directory (wall time of the whole command:
  Python start-up, index creation, Nickel evaluation, plan, apply, records).
- Stratum, library: `pipeline.run(head)` in a fresh process and data directory (the run alone, timed in the
  process; start-up and `runtime.build` excluded), then the same revision again (nothing to change).
- ansible-core: `ansible-playbook -i localhost, -c local` with one `ansible.builtin.copy` task looping over
  the 1,000 files (`content`, `dest`, `mode`), after one `ansible.builtin.file` task creating their 10
  directories; pipelining on (ansible's fastest local setting); `-e ansible_python_interpreter=<this python>`.
  A second, smaller playbook times `ansible.builtin.file` (state=touch) per item, for reference.
The ratio is ansible's wall time over Stratum's.
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
from common import FileResource, InfraLayout, Repo, print_table, verdict

TARGET_RATIO = 100.0


def child(repo: str, data_dir: str, root: str) -> dict[str, Any]:
    """In a fresh interpreter: build the runtime, then time one run and a second (no-change) run."""
    from daemon.run.runtime import build
    from daemon.settings import Settings

    rt = build(Settings(repo=repo, data_dir=Path(data_dir), root=Path(root)))
    try:
        head = rt.source.resolve("main")
        t = time.perf_counter()
        first = rt.pipeline.run(head, trigger="bench")
        first_s = time.perf_counter() - t
        t = time.perf_counter()
        second = rt.pipeline.run(head, trigger="bench")
        second_s = time.perf_counter() - t
        return {"run_s": first_s, "status": first.status, "actions": len(first.actions),
                "duration_ms": first.duration_ms, "noop_run_s": second_s, "noop_status": second.status,
                "noop_actions": len(second.actions)}
    finally:
        rt.close()


def check_root(root: Path, resources: list[FileResource]) -> int:
    """How many of the resources are on disk with the right content and mode."""
    good = 0
    for r in resources:
        path = root / r.path
        try:
            if path.read_text() == r.content and format(path.stat().st_mode & 0o777, "04o") == r.mode:
                good += 1
        except OSError:
            pass
    return good


def ansible_env(base: Path) -> dict[str, str]:
    """Ansible confined to the workspace: its own home and temp dirs, no config file, quiet."""
    home = base / "ansible-home"
    home.mkdir(exist_ok=True)
    return {**os.environ, "ANSIBLE_HOME": str(home), "ANSIBLE_LOCAL_TEMP": str(home / "tmp"),
            "ANSIBLE_REMOTE_TEMP": str(home / "remote-tmp"), "ANSIBLE_CONFIG": str(home / "none.cfg"),
            "ANSIBLE_LOCALHOST_WARNING": "False", "ANSIBLE_INVENTORY_UNPARSED_WARNING": "False",
            "ANSIBLE_PIPELINING": "True", "ANSIBLE_NOCOLOR": "1", "ANSIBLE_RETRY_FILES_ENABLED": "False",
            "ANSIBLE_STDOUT_CALLBACK": "default", "ANSIBLE_DISPLAY_OK_HOSTS": "False",
            "ANSIBLE_DISPLAY_SKIPPED_HOSTS": "False"}


def run_playbook(base: Path, name: str, tasks: list[dict[str, Any]], variables: dict[str, Any]) -> float:
    """Write and run a playbook (JSON is YAML); returns its wall time in seconds."""
    playbook = base / f"{name}.yml"
    playbook.write_text(json.dumps([{"hosts": "localhost", "gather_facts": False, "tasks": tasks}], indent=1))
    vars_file = base / f"{name}-vars.json"
    vars_file.write_text(json.dumps(variables))
    argv = [common.tool("ansible-playbook"), "-i", "localhost,", "-c", "local", str(playbook),
            "-e", f"@{vars_file}", "-e", f"ansible_python_interpreter={sys.executable}"]
    t = time.perf_counter()
    proc = subprocess.run(argv, capture_output=True, text=True, env=ansible_env(base), check=False)
    wall = time.perf_counter() - t
    if proc.returncode != 0:
        raise SystemExit(f"ansible-playbook {name} failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n"
                         f"{proc.stderr[-2000:]}")
    return wall


def run(args: argparse.Namespace) -> dict[str, Any]:
    with common.workspace("apply-files", args.keep) as base:
        repo = Repo.create(base)
        layout = InfraLayout.generate(args.infra_files, args.per_file)
        repo.write(layout.rendered())
        repo.commit("generated files")
        repo.push()
        resources = [r for rs in layout.files.values() for r in rs]
        n = len(resources)
        print(f"{n:,} file resources")

        # Stratum through the CLI, cold.
        cli_root = base / "stratum-cli-root"
        t = time.perf_counter()
        proc = subprocess.run([common.tool("stratum"), "apply", "--repo", str(repo.bare), "--data-dir",
                               str(base / "stratum-cli-data"), "--root", str(cli_root), "--output", "json"],
                              capture_output=True, text=True, check=False, timeout=3600)
        cli_s = time.perf_counter() - t
        if proc.returncode != 0:
            raise SystemExit(f"stratum apply failed: {proc.stdout[-2000:]} {proc.stderr[-2000:]}")
        cli_run = json.loads(proc.stdout)
        cli_ok = check_root(cli_root, resources)
        print(f"stratum apply (CLI): {cli_s:.2f} s, {cli_ok}/{n} files correct")

        # Stratum through the library, timed around pipeline.run only.
        lib_root = base / "stratum-lib-root"
        proc = subprocess.run([sys.executable, __file__, "--child", str(repo.bare), str(base / "stratum-lib-data"),
                               str(lib_root)], capture_output=True, text=True, check=False, timeout=3600)
        if proc.returncode != 0:
            raise SystemExit(f"library child failed: {proc.stderr[-3000:]}")
        lib = json.loads(proc.stdout.strip().splitlines()[-1])
        lib_ok = check_root(lib_root, resources)
        print(f"stratum pipeline.run: {lib['run_s']:.2f} s ({lib['status']}), {lib_ok}/{n} files correct")

        # ansible-core, same files.
        ans_root = base / "ansible-root"
        items = [{"path": r.path, "content": r.content, "mode": r.mode} for r in resources]
        dirs = sorted({str(Path(r.path).parent) for r in resources})
        print(f"ansible-playbook: copy x {n:,} (expect several minutes) ...", flush=True)
        copy_s = run_playbook(base, "copy", [
            {"name": "directories", "ansible.builtin.file": {"path": "{{ root }}/{{ item }}", "state": "directory",
                                                            "mode": "0755"}, "loop": "{{ dirs }}"},
            {"name": "files", "ansible.builtin.copy": {"dest": "{{ root }}/{{ item.path }}",
                                                      "content": "{{ item.content }}", "mode": "{{ item.mode }}"},
             "loop": "{{ files }}", "loop_control": {"label": "{{ item.path }}"}},
        ], {"root": str(ans_root), "dirs": dirs, "files": items})
        ans_ok = check_root(ans_root, resources)
        print(f"ansible copy: {copy_s:.1f} s, {ans_ok}/{n} files correct", flush=True)
        file_items = items[: args.ansible_file_items]
        touch_root = base / "ansible-touch-root"
        touch_s = run_playbook(base, "touch", [
            {"name": "directories", "ansible.builtin.file": {"path": "{{ root }}/{{ item }}", "state": "directory",
                                                            "mode": "0755"}, "loop": "{{ dirs }}"},
            {"name": "touch", "ansible.builtin.file": {"path": "{{ root }}/{{ item.path }}", "state": "touch",
                                                      "mode": "{{ item.mode }}"},
             "loop": "{{ files }}", "loop_control": {"label": "{{ item.path }}"}},
        ], {"root": str(touch_root), "dirs": dirs, "files": file_items})

    ratio_cli = copy_s / cli_s
    ratio_lib = copy_s / lib["run_s"]
    rows = [
        ["stratum apply (CLI, cold, whole command)", n, cli_s, 1000 * cli_s / n, ratio_cli,
         f">= {TARGET_RATIO:g}x", verdict(ratio_cli, TARGET_RATIO, lower_is_better=False)],
        ["stratum pipeline.run (library, first apply)", n, lib["run_s"], 1000 * lib["run_s"] / n, ratio_lib,
         f">= {TARGET_RATIO:g}x", verdict(ratio_lib, TARGET_RATIO, lower_is_better=False)],
        ["stratum pipeline.run again (no change)", n, lib["noop_run_s"], 1000 * lib["noop_run_s"] / n, "", "", ""],
        ["ansible-playbook copy (+10 dirs)", n, copy_s, 1000 * copy_s / n, "1.0x", "", ""],
        [f"ansible-playbook file state=touch (+{len(dirs)} dirs)", len(file_items), touch_s,
         1000 * touch_s / len(file_items), "", "", ""],
    ]
    print_table(f"Apply {n:,} local files, seconds (ratio = ansible copy wall / this)",
                ["tool", "files", "s", "ms/file", "ratio", "target", ""], rows)
    if min(cli_ok, lib_ok, ans_ok) != n:
        print(f"\nWARNING: correct files: stratum CLI {cli_ok}, stratum library {lib_ok}, ansible {ans_ok} of {n}")
    return {"params": {"files": n, "infra_files": args.infra_files, "per_file": args.per_file,
                       "ansible_file_items": len(file_items)},
            "target_ratio": TARGET_RATIO, "ratio_cli": ratio_cli, "ratio_library": ratio_lib,
            "stratum_cli_s": cli_s, "stratum_cli_run": {k: cli_run.get(k) for k in ("status", "duration_ms")},
            "stratum_library": lib, "ansible_copy_s": copy_s, "ansible_file_touch_s": touch_s,
            "ansible_version": subprocess.run([common.tool("ansible-playbook"), "--version"], capture_output=True,
                                              text=True, check=False).stdout.splitlines()[0],
            "correct_files": {"stratum_cli": cli_ok, "stratum_library": lib_ok, "ansible": ans_ok}}


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        print(json.dumps(child(*sys.argv[2:5])))
        return
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--infra-files", type=int, default=10)
    parser.add_argument("--per-file", type=int, default=100)
    parser.add_argument("--ansible-file-items", type=int, default=100,
                        help="items of the reference `ansible.builtin.file` playbook")
    parser.add_argument("--quick", action="store_true", help="100 files")
    parser.add_argument("--keep", action="store_true")
    args = parser.parse_args()
    if args.quick:
        args.infra_files, args.per_file, args.ansible_file_items = 2, 50, 20
    common.write_result("apply_files", run(args))


if __name__ == "__main__":
    main()
