"""Push-to-run-start and push-to-applied latency of a one-file change in a repository of 5,000 files.

A real `stratumd` watches a bare repository; a work clone commits a change of one resource's content and
pushes it, N times, waiting for each run to finish (plus a short gap) before the next push.

Times (all wall clock, `time.time()`, the same clock in the daemon and here):
- push bases: `before` = just before `git push` starts; `ref` = when the branch ref moved in the bare repo
  (seen here through inotify, the same signal the daemon's watcher uses); `returned` = just after `git push`
  returned. The ref moves inside `git push` (receive-pack updates it, then reports back), so `returned` comes
  after the daemon has already been woken: latencies from `returned` are shorter and can be negative.
- run start: the run record's `started` (set by the daemon when it opens the run, read from the index after
  the daemon stopped).
- applied: the daemon's checkpoint of the changed resource's action (`actions.finished`); cross-checked with
  the moment the file's new content appeared under the root (inotify here).
- run end: the run record's `finished` (after the index, inventory and git note were written).
"""

from __future__ import annotations

import argparse
import threading
import time
from pathlib import Path
from typing import Any

import common
from common import DaemonProcess, InfraLayout, Repo, ms, print_table, summary, verdict
from watchdog.events import FileSystemEvent, FileSystemEventHandler
from watchdog.observers import Observer

TARGET_START_P50_MS = 50.0
TARGET_APPLIED_P50_MS = 300.0


class _Recorder(FileSystemEventHandler):
    """Wall-clock times of filesystem events, by absolute path (moves recorded under their destination)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.times: dict[str, list[float]] = {}

    def on_any_event(self, event: FileSystemEvent) -> None:
        now = time.time()
        if event.event_type not in ("created", "modified", "moved", "closed"):
            return
        path = getattr(event, "dest_path", "") or event.src_path
        text = path.decode() if isinstance(path, bytes) else path
        with self.lock:
            self.times.setdefault(text, []).append(now)

    def first_after(self, path: Path, since: float) -> float | None:
        with self.lock:
            return next((t for t in self.times.get(str(path), []) if t >= since), None)


def build_repo(base: Path, total_files: int, infra_files: int, per_file: int) -> tuple[Repo, InfraLayout, str]:
    """A repo of `total_files` files: `infra_files` Nickel files of `per_file` resources, the rest plain."""
    repo = Repo.create(base)
    layout = InfraLayout.generate(infra_files, per_file)
    repo.write(common.plain_files(total_files - infra_files))
    repo.write(layout.rendered())
    head = repo.commit("initial: generated bench repository")
    repo.push()
    return repo, layout, head


def run(args: argparse.Namespace) -> dict[str, Any]:
    with common.workspace("latency", args.keep) as base:
        print(f"building a repo of {args.files:,} files ({args.infra_files} infra files x {args.per_file} "
              f"resources) in {base}")
        t = time.monotonic()
        repo, layout, head = build_repo(base, args.files, args.infra_files, args.per_file)
        build_s = time.monotonic() - t
        data_dir, root = base / "data", base / "root"
        root.mkdir()
        recorder = _Recorder()
        observer = Observer()
        observer.schedule(recorder, str(repo.bare / "refs" / "heads"), recursive=False)
        observer.schedule(recorder, str(root), recursive=True)
        observer.start()
        pushes: list[dict[str, Any]] = []
        daemon = DaemonProcess(repo.bare, data_dir, root)
        try:
            daemon.start()
            first = daemon.wait_run(head, timeout=300)
            print(f"initial run: {first.get('outcome')} in {first.get('duration_ms')} ms "
                  f"({first.get('actions')} actions)")
            if first.get("outcome") != "succeeded":
                raise SystemExit(f"the initial run did not succeed: {first}")
            rels = sorted(layout.files)
            for i in range(args.warmup + args.pushes):
                rel = rels[i % len(rels)]
                index = (i // len(rels)) % args.per_file
                res = layout.set_content(rel, index, f"# push {i}\nvalue = {i}\n")
                repo.write({rel: layout.rendered_one(rel)})
                commit = repo.commit(f"bench: change {res.id} (push {i})")
                time.sleep(args.gap)
                mark = len(daemon.events)
                before, returned = repo.push()
                event = daemon.wait_run(commit, timeout=60, start=mark)
                target = root / res.path
                deadline = time.monotonic() + 5
                while time.monotonic() < deadline and recorder.first_after(target, before) is None:
                    time.sleep(0.005)
                content_ok = target.read_text() == res.content
                pushes.append({
                    "i": i, "warmup": i < args.warmup, "commit": commit, "resource": res.id,
                    "before": before, "returned": returned,
                    "ref": recorder.first_after(repo.bare / "refs" / "heads" / "main", before),
                    "file_seen": recorder.first_after(target, before),
                    "outcome": event.get("outcome"), "duration_ms": event.get("duration_ms"),
                    "actions": event.get("actions"), "content_ok": content_ok,
                    "log_run_line": event.get("_received")})
                if (i + 1) % 10 == 0:
                    print(f"  {i + 1}/{args.warmup + args.pushes} pushes")
        finally:
            daemon.stop()
            observer.stop()
            observer.join(5)

        # After the fact, from the index: the daemon's own records of each run and its action.
        runs = {r["revision"]: r for r in common.read_index(data_dir, """
            SELECT r.revision, r.started, r.finished, r.status, min(a.started) AS act_started,
                   max(a.finished) AS act_finished, count(a.seq) AS n_actions
            FROM runs r LEFT JOIN actions a ON a.run_id = r.id GROUP BY ALL""")}
        return analyse(args, pushes, runs, build_s, first)


def analyse(args: argparse.Namespace, pushes: list[dict[str, Any]], runs: dict[str, dict[str, Any]],
            build_s: float, first: dict[str, Any]) -> dict[str, Any]:
    measured = [p for p in pushes if not p["warmup"]]
    for p in measured:
        r = runs.get(p["commit"], {})
        p.update(run_started=r.get("started"), run_finished=r.get("finished"), applied=r.get("act_finished"),
                 action_started=r.get("act_started"), n_actions=r.get("n_actions"), run_status=r.get("status"))
    problems = [p for p in measured if p["run_status"] != "succeeded" or not p["content_ok"] or p["n_actions"] != 1]
    series: dict[str, list[float]] = {}

    def add(name: str, end_key: str, base_key: str) -> None:
        series[name] = [ms(p[end_key] - p[base_key]) for p in measured
                        if p.get(end_key) is not None and p.get(base_key) is not None]

    for base_key in ("before", "ref", "returned"):
        add(f"run start | from {base_key}", "run_started", base_key)
        add(f"applied (checkpoint) | from {base_key}", "applied", base_key)
        add(f"applied (file seen) | from {base_key}", "file_seen", base_key)
        add(f"run end | from {base_key}", "run_finished", base_key)
    series["git push duration (before -> returned)"] = [ms(p["returned"] - p["before"]) for p in measured]
    series["ref moved (before -> ref)"] = [ms(p["ref"] - p["before"]) for p in measured if p["ref"]]
    series["run duration (daemon)"] = [float(p["duration_ms"]) for p in measured if p["duration_ms"] is not None]
    stats = {k: summary(v) for k, v in series.items()}
    targets = {"run start | from ref": TARGET_START_P50_MS, "run start | from before": TARGET_START_P50_MS,
               "applied (checkpoint) | from ref": TARGET_APPLIED_P50_MS,
               "applied (checkpoint) | from before": TARGET_APPLIED_P50_MS}
    rows = []
    for name, s in stats.items():
        target = targets.get(name)
        rows.append([name, s.get("n", 0), s.get("p50", float("nan")), s.get("p99", float("nan")),
                     s.get("max", float("nan")), f"p50 < {target:g}" if target else "",
                     verdict(s["p50"], target) if target and s.get("n") else ""])
    print_table(f"Push latency, ms ({len(measured)} pushes after {args.warmup} warm-up; repo of {args.files:,} "
                f"files, {args.infra_files * args.per_file:,} resources)",
                ["metric | basis", "n", "p50", "p99", "max", "target", ""], rows)
    if problems:
        print(f"\nWARNING: {len(problems)} push(es) did not end in exactly one successful action: "
              f"{[(p['i'], p['run_status'], p['n_actions'], p['content_ok']) for p in problems][:5]}")
    return {"params": {"files": args.files, "infra_files": args.infra_files, "per_file": args.per_file,
                       "resources": args.infra_files * args.per_file, "pushes": args.pushes,
                       "warmup": args.warmup, "gap_s": args.gap},
            "targets_ms": {"run_start_p50": TARGET_START_P50_MS, "applied_p50": TARGET_APPLIED_P50_MS},
            "repo_build_s": build_s, "initial_run": {k: first.get(k) for k in ("outcome", "duration_ms", "actions")},
            "stats_ms": stats, "problems": len(problems), "pushes": pushes}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--files", type=int, default=5000, help="files in the repository (all kinds)")
    parser.add_argument("--infra-files", type=int, default=100, help="how many of them are infra .ncl files")
    parser.add_argument("--per-file", type=int, default=10, help="resources per infra file")
    parser.add_argument("--pushes", type=int, default=50, help="measured pushes")
    parser.add_argument("--warmup", type=int, default=3, help="pushes before measuring (not counted)")
    parser.add_argument("--gap", type=float, default=0.3, help="idle seconds between a run's end and the next push")
    parser.add_argument("--quick", action="store_true", help="1,000 files, 20 pushes")
    parser.add_argument("--keep", action="store_true", help="keep the temp directory")
    args = parser.parse_args()
    if args.quick:
        args.files, args.infra_files, args.pushes = 1000, 20, 20
    common.write_result("latency", run(args))


if __name__ == "__main__":
    main()
