# ruff: noqa: E402 - imports follow the sys.path fix that must run first
"""Agent tasks: queue throughput and latency, assignment speed, schedule reconcile time.

    python bench/agents.py [--tasks 10000] [--workers 4] [--queues duckdb,nats]

1. Command tasks through each queue: `--tasks` runs of `true` queued at once, then run by `--workers` threads
   (the Runner: assignment, the command, the execution record, ack). Tasks/s over the whole drain and the queue
   latency of each run (enqueued -> leased: p50/p99; in a burst that is mostly the wait behind the backlog).
   Then `--steady` runs queued at half the measured rate, one at a time: the queue latency of a run that finds
   the queue idle (what a cron task sees). NATS uses a nats-server started here on loopback.
2. Assignment decisions per second: 50 agents of one role, 10,000 history records of the task type, the pure
   `choose` over pre-grouped records; and the Runner's `decide` (history read from DuckDB once, then kept).
3. Schedule reconcile time for 1,000 cron tasks: first (all added), again (nothing changed), 100 changed.
Prints tables and writes bench/results/agents.json. No assertions. Every table names the 1-minute load average
measured when its figures were taken (the machine is shared: compare figures only at a similar load).
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import argparse
import os
import random
import shutil
import signal
import threading
import time
from types import MappingProxyType
from typing import Any

from bench.common import print_table, summary, workspace, write_result
from reconcilers.agents.assign import DAY, Candidate, Record, choose
from reconcilers.agents.model import Agent, AgentsDesired, Provider, Task, Trigger
from reconcilers.agents.queue import DuckDBQueue
from reconcilers.agents.runner import Runner
from reconcilers.agents.schedule import Schedule
from reconcilers.agents.store import Store


def team(agents: int = 4) -> AgentsDesired:
    """A devops team of command agents."""
    return AgentsDesired(providers=MappingProxyType({"local": Provider("local", "command")}),
                         agents=MappingProxyType({f"ops-{i}": Agent(f"ops-{i}", "devops", ("local",),
                                                                    max_concurrency=4) for i in range(agents)}))


def load() -> float:
    """The 1-minute load average now."""
    return os.getloadavg()[0]


def queue_run(kind: str, n: int, workers: int, base: Path, nats_url: str = "",
              steady: int = 200) -> dict[str, Any]:
    """Queue `n` command tasks, drain them with `workers` threads; throughput and queue latency."""
    store = Store(base / f"{kind}.duckdb")
    if kind == "nats":
        from reconcilers.agents.natsqueue import NatsQueue
        queue: Any = NatsQueue(nats_url, visibility=300)
    else:
        queue = DuckDBQueue(store)
    runner = Runner(store, queue, team(), base / "work")
    task = Task("noop", "No-op", "devops", command=("true",), lock=False)
    start = time.perf_counter()
    for _ in range(n):
        queue.enqueue("devops", task.spec())
    enqueued = time.perf_counter() - start
    latencies: list[float] = []
    lock = threading.Lock()
    done = [0]

    def work() -> None:
        while True:
            msg = queue.lease(["devops"], threading.current_thread().name, 300)
            if msg is None:
                return
            with lock:
                latencies.append(time.time() - msg.enqueued_at)
            runner.handle(msg)
            with lock:
                done[0] += 1

    t0 = time.perf_counter()
    threads = [threading.Thread(target=work, name=f"w{i}") for i in range(workers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    drained = time.perf_counter() - t0
    burst_load = load()
    rate = done[0] / drained if drained else 0.0
    # Steady: one run at a time at half the measured rate, leased by a polling worker as the service does.
    steady_lat: list[float] = []
    interval = 2.0 / rate if rate else 0.1
    stop = threading.Event()

    def poll() -> None:
        while not stop.is_set():
            msg = queue.lease(["devops"], "steady", 300)
            if msg is None:
                time.sleep(0.005)
                continue
            steady_lat.append(time.time() - msg.enqueued_at)
            runner.handle(msg)

    poller = threading.Thread(target=poll, name="steady")
    poller.start()
    for _ in range(steady):
        queue.enqueue("devops", task.spec())
        time.sleep(interval)
    deadline = time.monotonic() + 60
    while len(steady_lat) < steady and time.monotonic() < deadline:
        time.sleep(0.01)
    stop.set()
    poller.join()
    if kind == "nats":
        queue.close()
    store.close()
    lat, still = summary(latencies), summary(steady_lat)
    return {"queue": kind, "tasks": n, "done": done[0], "enqueue_s": enqueued, "drain_s": drained,
            "tasks_per_s": rate, "latency_p50_s": lat.get("p50"), "latency_p99_s": lat.get("p99"),
            "load_1m": burst_load, "steady_runs": len(steady_lat), "steady_rate_per_s": 1 / interval,
            "steady_latency_p50_s": still.get("p50"), "steady_latency_p99_s": still.get("p99"),
            "steady_load_1m": load()}


def assignment(base: Path, decisions: int = 2000) -> dict[str, Any]:
    """Decisions/s with 50 agents and 10,000 history records (pure, and through DuckDB)."""
    rng = random.Random(7)
    now = time.time()
    agents = [f"a{i:02d}" for i in range(50)]
    history: dict[str, list[Record]] = {a: [] for a in agents}
    for _ in range(10_000):
        a = rng.choice(agents)
        history[a].append(Record(a, "t", now - rng.uniform(0, 60) * DAY, rng.random() < 0.8, rng.random()))
    cands = [Candidate(a, rng.randint(0, 2), 4) for a in agents]
    t0 = time.perf_counter()
    for _ in range(decisions):
        choose(cands, history, now)
    pure = decisions / (time.perf_counter() - t0)
    store = Store(base / "assign.duckdb")
    rows = [(f"e{i}", "", "t", "t", "devops", r.agent, "local", "manual", r.finished - 1, r.finished,
             "succeeded" if r.succeeded else "failed", 0, 0, 0.0, "", "", 1, r.quality, "score", "")
            for i, r in enumerate(x for rs in history.values() for x in rs)]
    with store.transaction() as con:
        con.executemany("INSERT INTO executions VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                        rows)
    desired = AgentsDesired(agents=MappingProxyType({a: Agent(a, "devops", ("local",), 4) for a in agents}))
    runner = Runner(store, DuckDBQueue(store), desired, base / "work")
    t0 = time.perf_counter()
    runner.decide("devops", "t", desired.agents_for("devops"))       # reads the history from DuckDB once
    first = time.perf_counter() - t0
    t0 = time.perf_counter()
    for _ in range(decisions):
        runner.decide("devops", "t", desired.agents_for("devops"))
    runner_rate = decisions / (time.perf_counter() - t0)
    store.close()
    return {"agents": 50, "history": 10_000, "pure_decisions_per_s": pure, "runner_first_decision_s": first,
            "runner_decisions_per_s": runner_rate}


def schedule_reconcile(base: Path, n: int = 1000) -> dict[str, Any]:
    """Reconcile time for `n` cron tasks: all added, nothing changed, 10 % changed."""
    def desired(shift: int = 0, changed: int = 0) -> AgentsDesired:
        tasks = {f"t{i}": Task(f"t{i}", "T", "devops", Trigger(
            "cron", f"{(i + (shift if i < changed else 0)) % 60} {i % 24} * * *"), command=("true",))
            for i in range(n)}
        return AgentsDesired(tasks=MappingProxyType(tasks))

    store = Store(base / "sched.duckdb")
    sched = Schedule(store, lambda j, t: None)
    out: dict[str, Any] = {"cron_tasks": n}
    try:
        for label, d in (("first_s", desired()), ("unchanged_s", desired()),
                         ("changed_10pct_s", desired(shift=7, changed=n // 10))):
            t0 = time.perf_counter()
            sched.reconcile(d)
            out[label] = time.perf_counter() - t0
        out["jobs"] = len(sched.scheduler.get_jobs())
    finally:
        sched.close()
        store.close()
    return out


def start_nats(base: Path) -> tuple[Any, str]:
    """A nats-server with JetStream on a free loopback port."""
    import socket
    import subprocess

    binary = shutil.which("nats-server") or "/usr/sbin/nats-server"
    if not os.access(binary, os.X_OK):
        raise SystemExit("nats-server is not installed (apt-get install nats-server)")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen([binary, "-js", "-a", "127.0.0.1", "-p", str(port), "-sd", str(base / "js")],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    for _ in range(200):
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                break
        except OSError:
            time.sleep(0.1)
    return proc, f"nats://127.0.0.1:{port}"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--tasks", type=int, default=10_000)
    ap.add_argument("--workers", type=int, default=4)
    ap.add_argument("--queues", default="duckdb,nats")
    ap.add_argument("--steady", type=int, default=200, help="runs queued one at a time after the burst")
    args = ap.parse_args()
    load_before = os.getloadavg()
    results: dict[str, Any] = {"load_before": load_before}
    with workspace("agents") as base:
        rows = []
        for kind in [q for q in args.queues.split(",") if q]:
            proc = None
            url = ""
            if kind == "nats":
                proc, url = start_nats(base)
            try:
                r = queue_run(kind, args.tasks, args.workers, base, url, args.steady)
            finally:
                if proc is not None:
                    proc.send_signal(signal.SIGKILL)
                    proc.wait()
            results[f"queue_{kind}"] = r
            print(f"queue {kind}: {r['done']}/{r['tasks']} done, {r['tasks_per_s']:.1f} tasks/s, burst p99 "
                  f"{(r['latency_p99_s'] or 0) * 1000:.0f} ms, steady p99 {(r['steady_latency_p99_s'] or 0) * 1000:.0f}"
                  f" ms (load {r['load_1m']:.1f})", flush=True)
            rows.append([kind, r["tasks"], r["done"], r["enqueue_s"], r["drain_s"], r["tasks_per_s"],
                         (r["latency_p50_s"] or 0) * 1000, (r["latency_p99_s"] or 0) * 1000, r["load_1m"],
                         r["steady_runs"], (r["steady_latency_p50_s"] or 0) * 1000,
                         (r["steady_latency_p99_s"] or 0) * 1000, r["steady_load_1m"]])
        print_table(f"Command tasks through each queue ({args.workers} worker threads, `true` each; burst, then "
                    f"{args.steady} one at a time)",
                    ["queue", "tasks", "done", "enqueue s", "drain s", "tasks/s", "burst p50 ms", "burst p99 ms",
                     "load", "steady runs", "steady p50 ms", "steady p99 ms", "load"], rows)
        a = assignment(base)
        a["load_1m"] = load()
        results["assignment"] = a
        print_table("Assignment (50 agents, 10,000 history records)",
                    ["decisions/s (pure choose)", "runner: first decision s (reads DuckDB)",
                     "runner: decisions/s (history in memory)", "load"],
                    [[a["pure_decisions_per_s"], a["runner_first_decision_s"], a["runner_decisions_per_s"],
                      a["load_1m"]]])
        s = schedule_reconcile(base)
        s["load_1m"] = load()
        results["schedule"] = s
        print_table("Schedule reconcile, 1,000 cron tasks (APScheduler)", ["first s", "unchanged s",
                                                                           "10 % changed s", "jobs", "load"],
                    [[s["first_s"], s["unchanged_s"], s["changed_10pct_s"], s["jobs"], s["load_1m"]]])
    results["load_after"] = os.getloadavg()
    write_result("agents", results)


if __name__ == "__main__":
    main()
