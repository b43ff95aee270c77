"""Fixtures for the cloud providers: moto's AWS emulator (a real third-party EC2 API server, `moto_server`) on a
free loopback port for the module, a loopback HTTP proxy in front of it that counts API calls and injects
faults (answers 500 or throttling errors for chosen actions: the only fault injection, done at the HTTP level),
and a pipeline whose infra reconciler has an `aws` provider pointed at the proxy.

Work-arounds for moto live here, never in product code (../shared/PLATFORM.md): moto writes the EC2 XML
namespace without the trailing slash, so libcloud's `ec2.NAMESPACE` is set to moto's for the tests.

Route 53 (DNS records) needs three more, all test scaffolding in the proxy and the namespace fixture, because
moto 5.2.6 cannot serve libcloud's Route53 driver as it is:
1. moto's server picks the service from the SigV4 credential scope of the `Authorization` header; libcloud
   signs Route 53 the old AWS3-HTTPS way (`X-Amzn-Authorization`), so moto routes the request to S3 (seen:
   `GET /2012-02-29/hostedzone` answered `NoSuchBucket 2012-02-29`). The proxy adds an `Authorization` whose
   scope names route53 (moto checks no signature).
2. moto serves Route 53 only under API version 2013-04-01 (its botocore model); libcloud speaks 2012-02-29
   (seen: 404 for `/2012-02-29/hostedzone` with the route53 scope). The proxy rewrites the version in the path;
   the calls used (ListHostedZones, ListResourceRecordSets, ChangeResourceRecordSets) have the same shape in both.
3. moto answers in the 2013-04-01 XML namespace: libcloud's `route53.NAMESPACE` is set to it for the tests.
4. moto refuses a CREATE identical to one in its change journal whenever any record set sorts after its name
   (ResourceRecordAlreadyExists), even when the same batch deletes the set first (real Route 53 applies the
   batch in order, and a set deleted before may be created again). Stratum changes a record in place as DELETE
   old + CREATE new in one batch, and re-creates a record deleted behind its back as it was: both trip it. The
   proxy sends such a DELETE + CREATE pair as one UPSERT, and any other CREATE as UPSERT. So the API's own
   refusal of a CREATE over an existing set is not exercised here; Stratum checks that before (the set must
   not be someone else's: test_aws_dns.py covers it).
"""

from __future__ import annotations

import http.client
import http.server
import itertools
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest

from daemon.nickel.evaluator import Evaluator
from daemon.run.pipeline import Pipeline
from daemon.run.retry import RetryPolicy
from reconcilers.base import ReconcilerEnv
from reconcilers.infra.reconciler import InfraReconciler
from tests.fixtures import Stack, WorkRepo
from tests.servers import free_port

MOTO_NAMESPACE = "http://ec2.amazonaws.com/doc/2016-11-15"
ROUTE53_ROOT, MOTO_ROUTE53_ROOT = "/2012-02-29/", "/2013-04-01/"    # libcloud's API version, moto's
MOTO_ROUTE53_NAMESPACE = "https://route53.amazonaws.com/doc/2013-04-01/"
LIBCLOUD_ROUTE53_NAMESPACE = "https://route53.amazonaws.com/doc/2012-02-29/"
# Test scaffolding (see the module docstring): routes a request to moto's Route 53; moto checks no signature.
ROUTE53_SCOPE = ("AWS4-HMAC-SHA256 Credential=test-key/20260101/us-east-1/route53/aws4_request, "
                 "SignedHeaders=host, Signature=0")


def upsert_pairs(body: bytes) -> bytes:
    """A Route 53 change batch with each DELETE + CREATE of one name and type made one UPSERT, other CREATEs
    UPSERTs (item 4 of the module docstring: test scaffolding around a moto bug)."""
    import xml.etree.ElementTree as ET

    root = ET.fromstring(body)
    ns = root.tag.partition("}")[0] + "}" if root.tag.startswith("{") else ""
    changes = root.find(f"{ns}ChangeBatch/{ns}Changes")
    if changes is None:
        return body

    def key(change: ET.Element) -> tuple[str, str, str]:
        return (change.findtext(f"{ns}Action") or "", change.findtext(f"{ns}ResourceRecordSet/{ns}Name") or "",
                change.findtext(f"{ns}ResourceRecordSet/{ns}Type") or "")

    items = list(changes)
    for first, second in itertools.pairwise(items):
        (a1, n1, t1), (a2, n2, t2) = key(first), key(second)
        if (a1, a2) == ("DELETE", "CREATE") and (n1, t1) == (n2, t2) and first in list(changes):
            changes.remove(first)
    for change in changes:
        action = change.find(f"{ns}Action")
        if action is not None and action.text == "CREATE":
            action.text = "UPSERT"
    ET.register_namespace("", ns.strip("{}"))
    return bytes(ET.tostring(root, encoding="utf-8", xml_declaration=True))


def route53_action(method: str, path: str) -> str:
    """The Route 53 API action of a request (REST: named by method and path), for counting calls."""
    parts = urlsplit(path).path[len(ROUTE53_ROOT):].strip("/").split("/")
    if parts[-1] == "rrset":
        return "ChangeResourceRecordSets" if method == "POST" else "ListResourceRecordSets"
    if parts == ["hostedzone"]:
        return "CreateHostedZone" if method == "POST" else "ListHostedZones"
    return f"{method}HostedZone"


@pytest.fixture(scope="session")
def moto_port(tmp_path_factory: pytest.TempPathFactory) -> Iterator[int]:
    """A moto server for the session (stopped at the end)."""
    port = free_port()
    exe = Path(sys.executable).with_name("moto_server")
    log = tmp_path_factory.mktemp("moto") / "moto.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen([str(exe), "-H", "127.0.0.1", "-p", str(port)], stdout=out, stderr=out)
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                    break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"moto_server did not start: {log.read_text()[-2000:]}") from None
                time.sleep(0.1)
        yield port
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)                     # reaped: a loaded machine once left it running at teardown


@pytest.fixture
def moto_namespace() -> Iterator[None]:
    """libcloud parses moto's answers only with moto's namespace (a moto quirk; see the module docstring):
    set for one test that talks to moto, restored after it."""
    from libcloud.compute.drivers import ec2
    from libcloud.dns.drivers import route53

    old, old53 = ec2.NAMESPACE, route53.NAMESPACE
    ec2.NAMESPACE = MOTO_NAMESPACE
    route53.NAMESPACE = route53.Route53DNSResponse.namespace = MOTO_ROUTE53_NAMESPACE
    yield
    ec2.NAMESPACE = old
    route53.NAMESPACE = route53.Route53DNSResponse.namespace = old53


Rule = Callable[[str, dict[str, str]], tuple[int, str] | None]


class FaultProxy:
    """A loopback HTTP proxy in front of moto: records each EC2 `Action`, and answers with an error instead of
    forwarding when a rule says so (`rules`: (action, params) -> (status, EC2 error code) or None)."""

    def __init__(self, upstream: int, *, fix_namespaces: bool = False, port: int = 0) -> None:
        self.upstream = upstream
        # True: moto's answers are given libcloud's namespaces (moto_front.py, for people trying Stratum
        # against moto); the tests instead set libcloud's namespaces to moto's (`moto_namespace`).
        self.fix_namespaces = fix_namespaces
        self.calls: list[str] = []
        self.seconds: list[float] = []        # how long each forwarded call took upstream
        self.timed: list[tuple[str, float]] = []   # (action, seconds) of each forwarded call
        self.rules: list[Rule] = []
        self.rewrites: list[Callable[[str, str], str]] = []     # (action, path) -> the path forwarded
        self.after: list[Rule] = []           # rules applied after forwarding (the call happened, answer lost)
        # action -> page size: the proxy answers that Describe* in pages, as AWS may (see `page`)
        self.pages: dict[str, int] = {}
        proxy = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def do_GET(self) -> None:
                self._handle(b"")

            def do_POST(self) -> None:
                self._handle(self.rfile.read(int(self.headers.get("Content-Length", 0))))

            def do_DELETE(self) -> None:
                self._handle(b"")

            def _handle(self, body: bytes) -> None:
                query = {k: v[0] for k, v in parse_qs(urlsplit(self.path).query).items()}
                query |= {k: v[0] for k, v in parse_qs(body.decode("utf-8", "replace")).items()}
                dns = urlsplit(self.path).path.startswith(ROUTE53_ROOT)
                action = route53_action(self.command, self.path) if dns else query.get("Action", "?")
                proxy.calls.append(action)
                for rule in proxy.rules:
                    hit = rule(action, query)
                    if hit is not None:
                        return self._error(*hit)
                started = time.perf_counter()
                path = self.path
                for rewrite in proxy.rewrites:
                    path = rewrite(action, path)
                conn = http.client.HTTPConnection("127.0.0.1", proxy.upstream, timeout=60)
                headers = {k: v for k, v in self.headers.items() if k.lower() not in ("connection",)}
                if dns:                       # moto's Route 53, reached (module docstring)
                    path = path.replace(ROUTE53_ROOT, MOTO_ROUTE53_ROOT, 1)
                    headers["Authorization"] = ROUTE53_SCOPE
                    if action == "ChangeResourceRecordSets":
                        body = upsert_pairs(body)
                        headers = {k: v for k, v in headers.items() if k.lower() != "content-length"}
                        headers["Content-Length"] = str(len(body))
                conn.request(self.command, path, body=body or None, headers=headers)
                resp = conn.getresponse()
                data = resp.read()
                proxy.seconds.append(time.perf_counter() - started)
                proxy.timed.append((action, proxy.seconds[-1]))
                for rule in proxy.after:
                    hit = rule(action, query)
                    if hit is not None:
                        return self._error(*hit)
                if action in proxy.pages and resp.status == 200:
                    data = page(data, proxy.pages[action], int(query.get("NextToken", "0")))
                if proxy.fix_namespaces:
                    data = data.replace(f'xmlns="{MOTO_NAMESPACE}"'.encode(), f'xmlns="{MOTO_NAMESPACE}/"'.encode())
                    data = data.replace(MOTO_ROUTE53_NAMESPACE.encode(), LIBCLOUD_ROUTE53_NAMESPACE.encode())
                self.send_response(resp.status)
                for k, v in resp.getheaders():
                    if k.lower() not in ("transfer-encoding", "connection", "content-length"):
                        self.send_header(k, v)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def _error(self, status: int, code: str) -> None:
                body = (f'<?xml version="1.0" encoding="UTF-8"?><Response><Errors><Error><Code>{code}</Code>'
                        f"<Message>injected by the test proxy</Message></Error></Errors>"
                        f"<RequestID>test</RequestID></Response>").encode()
                self.send_response(status)
                self.send_header("Content-Type", "text/xml")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", port), Handler)
        self.port = int(self.server.server_address[1])
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        """Stop serving."""
        self.server.shutdown()
        self.server.server_close()


def page(answer: bytes, size: int, start: int) -> bytes:
    """One page of a Describe* answer: `size` items of its item set from `start`, and a `nextToken` when more
    follow. moto pages only DescribeInstances; AWS pages every Describe* (MaxResults/NextToken), so the proxy
    cuts moto's whole answer into pages to show that a listing reads them all."""
    import xml.etree.ElementTree as ET

    root = ET.fromstring(answer)
    ns = root.tag.partition("}")[0] + "}" if root.tag.startswith("{") else ""
    found = [c for c in root if c.tag.endswith("Set") or c.tag.endswith("securityGroupInfo")]
    if not found:
        return answer
    items = list(found[0])
    for item in items:
        found[0].remove(item)
    for item in items[start:start + size]:
        found[0].append(item)
    if start + size < len(items):
        ET.SubElement(root, f"{ns}nextToken").text = str(start + size)
    ET.register_namespace("", ns.strip("{}"))
    return ET.tostring(root, encoding="utf-8", xml_declaration=True)


@pytest.fixture
def proxy(moto_port: int, moto_namespace: None) -> Iterator[FaultProxy]:
    """A fresh fault-injecting proxy in front of the session's moto."""
    p = FaultProxy(moto_port)
    yield p
    p.close()


def aws_settings(port: int, owner: str, root: Path) -> dict[str, Any]:
    """Host settings of an `aws` provider at a loopback endpoint (test credentials; moto checks none)."""
    return {"infra": {"root": str(root), "owner": owner, "providers": {
        "aws": {"type": "aws", "key": "test-key", "secret": "test-secret", "region": "us-east-1",
                "host": "127.0.0.1", "port": port, "secure": False, "poll": 0.05}}}}


class CloudStack(Stack):
    """The real pipeline with an infra reconciler whose `aws` provider goes through the proxy to moto; a
    unique owner tag per stack, so stacks sharing the moto server never see each other's objects."""

    def __init__(self, tmp: Path, location: Path, evaluator: Evaluator, proxy: FaultProxy,
                 settings: dict[str, Any] | None = None, *, explicit_owner: bool = True) -> None:
        super().__init__(tmp, location, evaluator=evaluator)
        self.owner = f"test-{uuid.uuid4().hex[:10]}"
        self.proxy = proxy
        self.settings = settings or aws_settings(proxy.port, self.owner, self.root)
        if explicit_owner:
            self.settings["infra"]["owner"] = self.owner
        else:                                 # derived from the repository, as a host without [infra] owner
            self.settings["infra"].pop("owner", None)
            self.settings["infra"]["repo_identity"] = f"{location}#main-{self.owner}"
            from reconcilers.infra.providers import default_owner

            self.owner = default_owner(self.settings["infra"], self.data)
        self.infra.close()
        self.infra = InfraReconciler(ReconcilerEnv(data_dir=self.data, settings=self.settings,
                                                   evaluator=evaluator))
        self.pipeline = Pipeline(source=self.source, index=self.index, reconcilers={"infra": self.infra},
                                 evaluator=evaluator, retry=RetryPolicy(attempts=3, base=0.02, cap=0.05))

    def close(self) -> None:
        """Stop the reconciler's workers, then the stack."""
        self.infra.close()
        self.pipeline.close()
        super().close()


@pytest.fixture
def cloud(tmp_path: Path, repo: WorkRepo, evaluator: Evaluator, proxy: FaultProxy) -> Iterator[CloudStack]:
    """A CloudStack over `repo`."""
    s = CloudStack(tmp_path, repo.path, evaluator, proxy)
    yield s
    s.close()


@pytest.fixture
def ec2(proxy: FaultProxy) -> Any:
    """A libcloud EC2 driver straight to moto (what someone acting behind Stratum's back uses)."""
    from libcloud.compute.providers import get_driver
    from libcloud.compute.types import Provider

    return get_driver(Provider.EC2)("test-key", "test-secret", region="us-east-1", host="127.0.0.1",
                                    port=proxy.upstream, secure=False, signature_version="4")



class UpcloudReplay:
    """A loopback HTTP server that replays the UpCloud API answers libcloud itself ships
    (libcloud/test/compute/fixtures/upcloud/), with just enough state to be driven: a POST /1.2/server answers
    the recorded create response with the requested title, plan and zone and a new uuid, and the server is then
    listed (as `started`, where the recording says `maintenance`: the replay skips UpCloud's boot); stop,
    DELETE and a PUT of the title and labels (modify server) change that state. Zones, plans, prices and the
    recorded servers are the fixtures as shipped."""

    def __init__(self) -> None:
        import json
        from pathlib import Path as P

        import libcloud

        self.fixtures = P(libcloud.__file__).parent / "test/compute/fixtures/upcloud"
        self.servers: dict[str, dict[str, Any]] = {}
        self.calls: list[str] = []
        replay = self

        def fixture(name: str) -> Any:
            return json.loads((replay.fixtures / name).read_text())

        for server in fixture("api_1_2_server.json")["servers"]["server"]:
            self.servers[server["uuid"]] = server

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def _send(self, status: int, body: Any = None) -> None:
                data = b"" if body is None else json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self) -> None:
                path = urlsplit(self.path).path.strip("/")
                replay.calls.append(f"GET {path}")
                if path == "1.2/server":
                    return self._send(200, {"servers": {"server": list(replay.servers.values())}})
                if path.startswith("1.2/server/"):
                    uuid_ = path.split("/")[2]
                    found = replay.servers.get(uuid_)
                    return self._send(200, {"server": found}) if found else self._send(
                        404, {"error": {"error_code": "SERVER_NOT_FOUND", "error_message": "not found"}})
                name = "api_" + path.replace(".", "_").replace("/", "_") + ".json"
                if (replay.fixtures / name).exists():
                    return self._send(200, fixture(name))
                return self._send(404, {"error": {"error_code": "NOT_FOUND", "error_message": path}})

            def do_POST(self) -> None:
                path = urlsplit(self.path).path.strip("/")
                replay.calls.append(f"POST {path}")
                body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))) or b"{}")
                if path == "1.2/server":
                    server = fixture("api_1_2_server_from_template.json")["server"]
                    asked = body["server"]
                    server.update(uuid=str(uuid.uuid4()), title=asked["title"], hostname=asked["hostname"],
                                  plan=asked["plan"], zone=asked["zone"], state="started")
                    replay.servers[server["uuid"]] = server
                    return self._send(202, {"server": server})
                if path.endswith("/stop"):
                    server = replay.servers[path.split("/")[2]]
                    server["state"] = "stopped"
                    return self._send(202, {"server": server})
                return self._send(404, {"error": {"error_code": "NOT_FOUND", "error_message": path}})

            def do_PUT(self) -> None:
                path = urlsplit(self.path).path.strip("/")
                replay.calls.append(f"PUT {path}")
                body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))) or b"{}")
                server = replay.servers.get(path.split("/")[2]) if path.startswith("1.2/server/") else None
                if server is None:
                    return self._send(404, {"error": {"error_code": "SERVER_NOT_FOUND", "error_message": path}})
                for key in ("title", "labels"):          # what Stratum modifies (the API allows more)
                    if key in body["server"]:
                        server[key] = body["server"][key]
                return self._send(202, {"server": server})

            def do_DELETE(self) -> None:
                path = urlsplit(self.path).path.strip("/")
                replay.calls.append(f"DELETE {path}")
                replay.servers.pop(path.split("/")[2], None)
                self._send(204)

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = int(self.server.server_address[1])
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def ours(self, owner: str) -> dict[str, dict[str, Any]]:
        """Servers whose title marks them as `owner`'s, by resource id."""
        from reconcilers.infra.providers.upcloud import parse_title

        out = {}
        for server in self.servers.values():
            mine = parse_title(server["title"])
            if mine and mine[0] == owner:
                out[mine[1]] = server
        return out

    def close(self) -> None:
        """Stop serving."""
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def upcloud() -> Iterator[UpcloudReplay]:
    """A fresh UpCloud replay server."""
    u = UpcloudReplay()
    yield u
    u.close()
