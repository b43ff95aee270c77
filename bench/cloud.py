"""Plan and apply cloud servers with networks and volumes against moto (an AWS EC2 emulator on loopback),
through libcloud's real EC2 driver and Stratum's real pipeline: cold plan, cold apply, then the no-op plan and
run of the same revision. A loopback proxy in front of moto counts the EC2 API calls by action, so the table
shows that the no-op plan makes only Describe* calls, and how many (target: under 1 s for 200 servers). Each
step's time is split: waiting in API calls (timed in libcloud's client), of which inside moto (timed by the
proxy), and Stratum's own share (the rest of the wall time), which is what the target is read against.

    python bench/cloud.py [--servers 200] [--networks 10]
    python bench/cloud.py --moto-scaling 50,100,200     # where moto's own time goes (no Stratum, no HTTP)

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


_TAGS = ("stratum:id", "stratum:owner", "stratum:spec", "Name", "role")   # what Stratum tags each object with


def moto_scaling(sizes: list[int], networks: int) -> None:
    """Where the no-op plan's time inside moto goes, by size: moto in-process (its own WSGI app, no HTTP, no
    Stratum), objects made as Stratum makes them (five tags each), then the exact Describe* requests the aws
    backend's listing sends, timed, with moto's tag lookups (`TagBackend.describe_tags`) counted and timed; the
    same requests without the owner filter show what the filter costs moto. Each request's best of three. One
    region per size (moto keeps tags per region), so sizes do not see each other's objects."""
    import re
    from urllib.parse import urlencode

    from moto.ec2.models.tags import TagBackend
    from moto.moto_server.werkzeug_app import DomainDispatcherApplication, create_backend_app
    from werkzeug.test import Client

    lookups: list[float] = []
    original = TagBackend.describe_tags

    def timed(self: Any, *args: Any, **kwargs: Any) -> Any:
        t = time.perf_counter()
        try:
            return original(self, *args, **kwargs)
        finally:
            lookups.append(time.perf_counter() - t)

    TagBackend.describe_tags = timed  # type: ignore[method-assign]
    app = Client(DomainDispatcherApplication(create_backend_app))
    regions = ["us-west-1", "us-west-2", "eu-west-1", "eu-central-1", "ap-south-1", "sa-east-1"]
    rows: list[list[Any]] = []
    data: dict[str, Any] = {"load_avg": os.getloadavg(), "sizes": {}}
    for size, region in zip(sizes, regions, strict=False):
        auth = f"AWS4-HMAC-SHA256 Credential=k/20260101/{region}/ec2/aws4_request, SignedHeaders=host, Signature=0"

        def call(params: dict[str, str], auth: str = auth) -> str:
            r = app.post("/", data=urlencode({"Version": "2016-11-15", **params}),
                         headers={"Authorization": auth, "Content-Type": "application/x-www-form-urlencoded"})
            assert r.status_code == 200, r.data[:300]
            return str(r.data.decode())

        def tagged(kind: str, i: int) -> dict[str, str]:
            out = {"TagSpecification.1.ResourceType": kind}
            for n, key in enumerate(_TAGS, 1):
                out[f"TagSpecification.1.Tag.{n}.Key"] = key
                out[f"TagSpecification.1.Tag.{n}.Value"] = "owner" if key == "stratum:owner" else f"{kind}-{i}"
            return out

        subnets = []
        for n in range(networks):
            vpc = re.findall(r"<vpcId>(.*?)</vpcId>", call({"Action": "CreateVpc", "CidrBlock": f"10.{n}.0.0/16",
                                                             **tagged("vpc", n)}))[0]
            subnets.append(re.findall(r"<subnetId>(.*?)</subnetId>", call(
                {"Action": "CreateSubnet", "VpcId": vpc, "CidrBlock": f"10.{n}.1.0/24",
                 "AvailabilityZone": f"{region}a", **tagged("subnet", n)}))[0])
        for i in range(size):
            call({"Action": "RunInstances", "ImageId": AMI, "MinCount": "1", "MaxCount": "1",
                  "InstanceType": "t2.micro", "SubnetId": subnets[i % networks], **tagged("instance", i)})
            call({"Action": "CreateVolume", "Size": "1", "AvailabilityZone": f"{region}a", **tagged("volume", i)})
        owner = {"Filter.1.Name": "tag:stratum:owner", "Filter.1.Value.1": "owner"}
        requests = [("DescribeVpcs", {"MaxResults": "1000", **owner}),
                    ("DescribeSubnets", {"MaxResults": "1000", **owner}),
                    ("DescribeSecurityGroups", {"MaxResults": "1000", **owner}),
                    ("DescribeInstances", {"MaxResults": "1000", **owner}),
                    ("DescribeVolumes", {"MaxResults": "500", **owner}),
                    ("DescribeInstances (no filter)", {"MaxResults": "1000"}),
                    ("DescribeVolumes (no filter)", {"MaxResults": "500"})]
        per: dict[str, Any] = {}
        for name, params in requests:
            took = float("inf")
            for _ in range(3):                # the best of three: the first of a kind also loads moto's model
                del lookups[:]
                t = time.perf_counter()
                answer = call({"Action": name.split()[0], **params})
                took = min(took, time.perf_counter() - t)
            per[name] = {"s": round(took, 3), "tag_lookups": len(lookups), "tag_lookup_s": round(sum(lookups), 3),
                         "bytes": len(answer)}
            rows.append([size, name, f"{took:.3f}", len(lookups), f"{sum(lookups):.3f}",
                         f"{100 * sum(lookups) / took:.0f}%", len(answer)])
        plan = sum(per[n]["s"] for n, _ in requests[:5])
        per["no-op plan's five EC2 calls"] = {"s": round(plan, 3)}
        rows.append([size, "the no-op plan's five EC2 calls", f"{plan:.3f}", "", "", "", ""])
        data["sizes"][str(size)] = per
    TagBackend.describe_tags = original  # type: ignore[method-assign]
    print_table(f"Inside moto (in-process, no HTTP): the no-op plan's Describe* calls by servers (each with a "
                f"volume; {networks} networks+subnets); load average {data['load_avg']}",
                ["servers", "request", "seconds", "tag lookups", "in lookups s", "share", "answer bytes"], rows)
    common.write_result("cloud_moto", data)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--servers", type=int, default=200)
    parser.add_argument("--networks", type=int, default=10)
    parser.add_argument("--profile", action="store_true", help="print a cProfile of one more no-op plan")
    parser.add_argument("--moto-scaling", default="", metavar="N,N,...",
                        help="only measure moto's own time for the no-op plan's calls at these sizes")
    args = parser.parse_args()
    if args.moto_scaling:
        moto_scaling([int(n) for n in args.moto_scaling.split(",")], args.networks)
        return

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
