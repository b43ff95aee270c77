"""Plan and apply cloud servers with networks and volumes against moto (an AWS EC2 emulator on loopback),
through libcloud's real EC2 driver and Stratum's real pipeline: cold plan, cold apply, then the no-op plan and
run of the same revision. A loopback proxy in front of moto counts the EC2 API calls by action, so the table
shows that the no-op plan makes only Describe* calls, and how many (target: under 1 s for 200 servers). Each
step's time is split: waiting in API calls (timed in libcloud's client), of which inside moto (timed by the
proxy), and Stratum's own share (the rest of the wall time), which is what the target is read against.

    python bench/cloud.py [--servers 200] [--networks 10]

Each network has one subnet; servers are spread over the subnets, each with one attached volume. The moto
namespace work-around (PLATFORM.md) is applied here as in the tests' fixture.
"""

from __future__ import annotations

import argparse
import collections
import os
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import common
from common import print_table, verdict

TARGET_NOOP_S = 1.0
AMI = "ami-03cf127a"


def infra_text(servers: int, networks: int) -> str:
    """The Nickel of the benchmark's resources."""
    lines = ["{", "  resources = {"]
    for n in range(networks):
        lines.append(f"    net-{n} = {{ kind = 'network, provider = 'aws, cidr = \"10.{n}.0.0/16\" }},")
        lines.append(f"    sub-{n} = {{ kind = 'subnet, provider = 'aws, network = \"net-{n}\", "
                     f"cidr = \"10.{n}.1.0/24\", zone = \"us-east-1a\" }},")
    for s in range(servers):
        lines.append(f"    vm-{s} = {{ kind = 'server, provider = 'aws, size = \"t2.micro\", image = \"{AMI}\", "
                     f"subnet = \"sub-{s % networks}\", tags = {{ role = \"bench\" }} }},")
        lines.append(f"    disk-{s} = {{ kind = 'volume, provider = 'aws, size_gb = 1, zone = \"us-east-1a\", "
                     f"server = \"vm-{s}\" }},")
    lines += ["  },", "}"]
    return "\n".join(lines) + "\n"


API_SECONDS: dict[str, float] = {}
HTTP_SECONDS: dict[str, float] = {}
_IN_HTTP: list[float] = []          # seconds of each API call, measured in the client (libcloud's request)


def time_http_calls() -> None:
    """Time every libcloud request from the client's side (sending, the proxy, moto, reading the answer):
    what Stratum waits for. The rest of a plan's wall time is Stratum's own share."""
    from libcloud.common.base import Connection

    original = Connection.request

    def timed(self: Any, *args: Any, **kwargs: Any) -> Any:
        t = time.perf_counter()
        try:
            return original(self, *args, **kwargs)
        finally:
            _IN_HTTP.append(time.perf_counter() - t)

    Connection.request = timed  # type: ignore[method-assign]


def counted(proxy: Any, fn: Any, name: str = "") -> tuple[Any, float, dict[str, int]]:
    """Run fn(); its result, wall seconds and the EC2 calls it made by action (the seconds those calls
    spent in moto are kept in API_SECONDS[name], the seconds the client waited for them in HTTP_SECONDS)."""
    before, timed, http = len(proxy.calls), len(proxy.seconds), len(_IN_HTTP)
    t = time.perf_counter()
    value = fn()
    took = time.perf_counter() - t
    API_SECONDS[name] = sum(proxy.seconds[timed:])
    HTTP_SECONDS[name] = sum(_IN_HTTP[http:])
    return value, took, dict(collections.Counter(proxy.calls[before:]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--servers", type=int, default=200)
    parser.add_argument("--networks", type=int, default=10)
    parser.add_argument("--profile", action="store_true", help="print a cProfile of one more no-op plan")
    args = parser.parse_args()

    import pytest  # noqa: F401  (the fixtures module imports it)
    from libcloud.compute.drivers import ec2

    from daemon.nickel.evaluator import Evaluator
    from tests.fixtures import WorkRepo
    from tests.reconcilers.infra.cloud.conftest import MOTO_NAMESPACE, CloudStack, FaultProxy, free_port

    ec2.NAMESPACE = MOTO_NAMESPACE
    time_http_calls()
    import subprocess

    port = free_port()
    moto = subprocess.Popen([str(Path(sys.executable).with_name("moto_server")), "-H", "127.0.0.1", "-p",
                             str(port)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    rows: list[list[Any]] = []
    data: dict[str, Any] = {"servers": args.servers, "networks": args.networks, "load_avg": os.getloadavg()}
    try:
        import socket

        for _ in range(300):
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
                break
            except OSError:
                time.sleep(0.1)
        with common.workspace("cloud") as tmp:
            proxy = FaultProxy(port)
            evaluator = Evaluator(tmp / "nickel-cache")
            repo = WorkRepo(tmp / "repo")
            repo.commit({"infra/bench.ncl": infra_text(args.servers, args.networks)})
            stack = CloudStack(tmp / "stack", repo.path, evaluator, proxy)
            try:
                total = args.networks * 2 + args.servers * 2
                plan, cold_plan_s, cold_plan_calls = counted(proxy, lambda: stack.pipeline.plan("main"), "cold plan")
                run, apply_s, apply_calls = counted(proxy, stack.run, "cold apply")
                assert run.status == "succeeded", run.message
                mark = len(proxy.timed)
                noop, noop_plan_s, noop_calls = counted(proxy, lambda: stack.pipeline.plan("main"), "no-op plan")
                data["noop_plan_call_seconds"] = [[a, round(t, 3)] for a, t in proxy.timed[mark:]]
                if args.profile:
                    import cProfile
                    import pstats

                    prof = cProfile.Profile()
                    prof.runcall(stack.pipeline.plan, "main")
                    pstats.Stats(prof).sort_stats("cumulative").print_stats(25)
                again, noop_run_s, noop_run_calls = counted(proxy, stack.run, "no-op run")
                only_describe = all(k.startswith("Describe") for k in noop_calls)
                api, http = API_SECONDS, HTTP_SECONDS
                walls = {"cold plan": cold_plan_s, "cold apply": apply_s, "no-op plan": noop_plan_s,
                         "no-op run": noop_run_s}
                # Wall time outside the API calls. Plans make their calls one after the other; an apply's
                # overlap (threads), so their sum exceeds its wall time and says nothing of its own share.
                ours = {k: walls[k] - http[k] for k in walls if k != "cold apply"}
                rows = [
                    ["cold plan", total, len(plan.actions), f"{cold_plan_s:.2f}", sum(cold_plan_calls.values()),
                     f"{http['cold plan']:.2f}", f"{api['cold plan']:.2f}", f"{ours['cold plan']:.2f}"],
                    ["cold apply (run)", total, len(run.actions), f"{apply_s:.2f}", sum(apply_calls.values()),
                     f"{http['cold apply']:.2f}", f"{api['cold apply']:.2f}", "n/a (calls overlap)"],
                    ["no-op plan", total, len(noop.actions), f"{noop_plan_s:.3f}", sum(noop_calls.values()),
                     f"{http['no-op plan']:.3f}", f"{api['no-op plan']:.3f}", f"{ours['no-op plan']:.3f}"],
                    ["no-op run", total, len(again.actions), f"{noop_run_s:.3f}", sum(noop_run_calls.values()),
                     f"{http['no-op run']:.3f}", f"{api['no-op run']:.3f}", f"{ours['no-op run']:.3f}"],
                ]
                data |= {"resources": total, "cold_plan_s": cold_plan_s, "cold_plan_calls": cold_plan_calls,
                         "cold_apply_s": apply_s, "cold_apply_calls": apply_calls, "noop_plan_s": noop_plan_s,
                         "noop_plan_calls": noop_calls, "noop_plan_only_describe": only_describe,
                         "noop_plan_actions": len(noop.actions), "noop_run_s": noop_run_s,
                         "noop_run_calls": noop_run_calls, "api_seconds_in_moto": dict(API_SECONDS),
                         "api_seconds_in_client": dict(HTTP_SECONDS), "stratum_seconds": ours,
                         "noop_plan_stratum_s": ours["no-op plan"],
                         # Read against our share plus the calls (the brief): moto's own time is not ours.
                         "verdict": verdict(noop_plan_s, TARGET_NOOP_S),
                         "verdict_stratum_share": verdict(ours["no-op plan"], TARGET_NOOP_S)}
            finally:
                stack.close()
                evaluator.close()
                proxy.close()
    finally:
        moto.terminate()
        moto.wait(10)
    print_table(f"Cloud (moto): {args.servers} servers, {args.networks} networks+subnets, {args.servers} volumes",
                ["step", "resources", "actions", "seconds", "EC2 calls", "in API calls s (client)",
                 "in moto s (server)", "Stratum's own s"], rows)
    print(f"\nno-op plan calls: {data['noop_plan_calls']} (only Describe*: {data['noop_plan_only_describe']}); "
          f"target < {TARGET_NOOP_S} s: wall {data['verdict']}, Stratum's own share "
          f"{data['noop_plan_stratum_s']:.3f} s {data['verdict_stratum_share']}; "
          f"moto alone {API_SECONDS['no-op plan']:.3f} s; load average {data['load_avg']}")
    common.write_result("cloud", data)


if __name__ == "__main__":
    main()
