"""Real servers for tests: PostgreSQL, etcd and NATS (JetStream) on loopback, on free ports, in temp dirs.

Each is a Debian package that `.ci/run` installs (postgresql, etcd-server, nats-server); the tests start their own
instances and stop them at the end. A missing server binary fails the test with what to install: a silently
skipped backend would let a whole storage or queue implementation go untested.

Use the session-wide fixtures (`postgres`, `etcd`, `nats`) for ordinary tests, and the `start_*` functions for a
test that stops or kills its server (a backend that goes away mid-request) so it does not disturb the others.
Register them in a conftest with `from tests.servers import postgres, etcd, nats  # noqa: F401`, or use them
directly as below.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

READY_TIMEOUT = 60.0            # seconds a server gets to answer before the test fails (a loaded CI machine)


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _need(binary: str, package: str, *candidates: str) -> str:
    for path in (*candidates, shutil.which(binary)):
        if path and os.access(path, os.X_OK):
            return path
    pytest.fail(f"{binary} is not installed: `apt-get install {package}` (.ci/run installs it)", pytrace=False)


def _wait(ready: Callable[[], bool], what: str, log: Path, proc: subprocess.Popen[bytes] | None = None) -> None:
    """Poll `ready` until it holds, the process died, or READY_TIMEOUT passed (then fail with the server's log)."""
    deadline = time.monotonic() + READY_TIMEOUT
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            break
        try:
            if ready():
                return
        except OSError:
            pass
        time.sleep(0.1)
    tail = log.read_text(errors="replace")[-3000:] if log.exists() else "(no log)"
    pytest.fail(f"{what} did not become ready within {READY_TIMEOUT:.0f} s; its log ends:\n{tail}", pytrace=False)


def _tcp_open(port: int) -> bool:
    with socket.create_connection(("127.0.0.1", port), timeout=0.5):
        return True


def _http_ok(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=1.0) as resp:
            return bool(resp.status == 200)
    except urllib.error.URLError:
        return False


# ---------------------------------------------------------------------------------------------------- PostgreSQL

PG_BIN = Path("/usr/lib/postgresql/15/bin")


@dataclass
class Postgres:
    """A PostgreSQL cluster of its own: `url` for psycopg (user postgres, trust auth on loopback)."""

    root: Path
    port: int
    as_user: list[str] = field(default_factory=list)

    @property
    def data(self) -> Path:
        return self.root / "data"

    @property
    def log(self) -> Path:
        return self.root / "server.log"

    @property
    def url(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def _ctl(self, *args: str) -> None:
        pg_ctl = _need("pg_ctl", "postgresql", str(PG_BIN / "pg_ctl"))
        subprocess.run([*self.as_user, pg_ctl, "-D", str(self.data), *args], check=True,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=READY_TIMEOUT + 30)

    def start(self) -> None:
        """Start (again) on the same port and data; returns when it accepts connections."""
        opts = (f"-p {self.port} -k {self.root / 'sock'} -c listen_addresses=127.0.0.1 -c fsync=off "
                "-c max_connections=200")
        self._ctl("-o", opts, "-l", str(self.log), "-w", "-t", str(int(READY_TIMEOUT)), "start")
        _wait(lambda: _tcp_open(self.port), "PostgreSQL", self.log)

    def stop(self, mode: str = "fast") -> None:
        """Stop it (`immediate` is a crash, as a kill would be)."""
        self._ctl("-m", mode, "-w", "stop")

    def running(self) -> bool:
        return (self.data / "postmaster.pid").exists()

    def psql(self, sql: str) -> str:
        """Run SQL with psql (for a test's setup and checks) and return its unaligned output."""
        psql = _need("psql", "postgresql-client", str(PG_BIN / "psql"))
        out = subprocess.run([psql, "-X", "-A", "-t", "-d", self.url, "-c", sql], check=True, capture_output=True,
                             text=True, timeout=60)
        return out.stdout.strip()


def start_postgres(root: Path) -> Postgres:
    """initdb and start a new cluster under `root` (initdb refuses root: run it as the postgres user then)."""
    initdb = _need("initdb", "postgresql", str(PG_BIN / "initdb"))
    as_user: list[str] = []
    root.mkdir(parents=True, exist_ok=True)
    (root / "sock").mkdir(exist_ok=True)
    if os.geteuid() == 0:
        as_user = ["runuser", "-u", "postgres", "--"]
        shutil.chown(root, "postgres")
        shutil.chown(root / "sock", "postgres")
        root.chmod(0o700)
        for parent in root.parents:         # the postgres user must be able to reach its folder
            if parent == Path("/"):
                break
            if parent.stat().st_uid == 0:
                parent.chmod(parent.stat().st_mode | 0o011)
    pg = Postgres(root, free_port(), as_user)
    subprocess.run([*as_user, initdb, "-D", str(pg.data), "-A", "trust", "-U", "postgres", "--no-sync"], check=True,
                   stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, timeout=120)
    pg.start()
    return pg


@pytest.fixture(scope="session")
def postgres() -> Iterator[Postgres]:
    """One PostgreSQL for the session (create your own database or schema in it; do not stop it)."""
    root = Path(tempfile.mkdtemp(prefix="stratum-pg-"))
    pg = start_postgres(root)
    try:
        yield pg
    finally:
        if pg.running():
            pg.stop("immediate")
        shutil.rmtree(root, ignore_errors=True)


# ------------------------------------------------------------------------------------------- processes

@dataclass
class _Process:
    """A server this module started as a child process (etcd, nats-server): its log, stop and liveness."""

    root: Path
    port: int
    proc: subprocess.Popen[bytes] | None = field(default=None, init=False)

    @property
    def log(self) -> Path:
        return self.root / "server.log"

    def _spawn(self, argv: list[str]) -> subprocess.Popen[bytes]:
        with self.log.open("ab") as log:
            self.proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        return self.proc

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=30)
        self.proc = None

    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None


# ---------------------------------------------------------------------------------------------------------- etcd

@dataclass
class Etcd(_Process):
    """An etcd 3.4 member of its own: `url` is the client URL (HTTP, the v3 grpc-gateway that etcd3gw speaks)."""

    peer_port: int = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        etcd = _need("etcd", "etcd-server", "/usr/bin/etcd")
        peer = f"http://127.0.0.1:{self.peer_port}"
        proc = self._spawn([etcd, "--name", "t", "--data-dir", str(self.root / "data"),
                            "--listen-client-urls", self.url, "--advertise-client-urls", self.url,
                            "--listen-peer-urls", peer, "--initial-advertise-peer-urls", peer,
                            "--initial-cluster", f"t={peer}", "--log-level", "warn"])
        _wait(lambda: _http_ok(self.url + "/health"), "etcd", self.log, proc)


def start_etcd(root: Path) -> Etcd:
    root.mkdir(parents=True, exist_ok=True)
    server = Etcd(root, free_port(), peer_port=free_port())
    server.start()
    return server


@pytest.fixture(scope="session")
def etcd() -> Iterator[Etcd]:
    """One etcd for the session (use your own key prefix; do not stop it)."""
    root = Path(tempfile.mkdtemp(prefix="stratum-etcd-"))
    server = start_etcd(root)
    try:
        yield server
    finally:
        server.stop(signal.SIGKILL)
        shutil.rmtree(root, ignore_errors=True)


# ---------------------------------------------------------------------------------------------------------- NATS

@dataclass
class Nats(_Process):
    """A nats-server with JetStream: `url` for nats-py (nats://127.0.0.1:PORT)."""

    monitor_port: int = 0

    @property
    def url(self) -> str:
        return f"nats://127.0.0.1:{self.port}"

    def start(self) -> None:
        binary = _need("nats-server", "nats-server", "/usr/sbin/nats-server", "/usr/bin/nats-server")
        proc = self._spawn([binary, "-js", "-a", "127.0.0.1", "-p", str(self.port), "-m", str(self.monitor_port),
                            "-sd", str(self.root / "js")])
        _wait(lambda: _http_ok(f"http://127.0.0.1:{self.monitor_port}/healthz?js-enabled-only=true"), "nats-server",
              self.log, proc)


def start_nats(root: Path) -> Nats:
    root.mkdir(parents=True, exist_ok=True)
    server = Nats(root, free_port(), monitor_port=free_port())
    server.start()
    return server


@pytest.fixture(scope="session")
def nats() -> Iterator[Nats]:
    """One nats-server with JetStream for the session (use your own stream names; do not stop it)."""
    root = Path(tempfile.mkdtemp(prefix="stratum-nats-"))
    server = start_nats(root)
    try:
        yield server
    finally:
        server.stop(signal.SIGKILL)
        shutil.rmtree(root, ignore_errors=True)
