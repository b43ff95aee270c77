"""The listener of a real stratumd process: slow clients do not take it down, tokens gate it, and an exposed
address in clear is refused at start. Bounded in count (500 slow clients) and in time (deadlines of 2 s)."""

from __future__ import annotations

import http.client
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from daemon.http.auth import token_digest
from tests.fixtures import WorkRepo, bare_repo, infra_file
from tests.proc import DaemonProc, cli_env, http_token_config, wait_for

pytestmark = pytest.mark.slow

NOFILE = 300          # the daemon's descriptor limit in the flood test (soft = hard: it cannot raise it)
SLOW_CLIENTS = 500
TOKEN = "daemon-test-token-0123456789abcdef"
NEW_TOKEN = "daemon-test-token-rotated-0123456789"


def _motd(text: str) -> str:
    return infra_file(f'    motd = {{ kind = \'file, path = "motd", content = "{text}\\n" }},')


def _get(port: int, path: str, token: str | None = None) -> tuple[int, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request("GET", path, headers={"Authorization": f"Bearer {token}"} if token else {})
        resp = conn.getresponse()
        return resp.status, resp.read()
    finally:
        conn.close()


class SlowFlood:
    """`count` clients that each send a request line, then one header line every half second, reconnecting
    when the daemon cuts them off; stops by itself after `seconds`."""

    def __init__(self, port: int, count: int, seconds: float) -> None:
        self.port, self.count, self.seconds = port, count, seconds
        self.opened = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> SlowFlood:
        self._thread.start()
        return self

    def running(self) -> bool:
        """True while the clients keep coming."""
        return self._thread.is_alive()

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(30)

    def _open(self) -> socket.socket | None:
        sock = socket.socket()
        sock.setblocking(False)
        self.opened += 1
        if sock.connect_ex(("127.0.0.1", self.port)) not in (0, 115):   # 115: EINPROGRESS
            sock.close()
            return None
        return sock

    def _run(self) -> None:
        socks: list[socket.socket | None] = [self._open() for _ in range(self.count)]
        end = time.monotonic() + self.seconds
        first = True
        while time.monotonic() < end and not self._stop.is_set():
            for i, sock in enumerate(socks):
                if sock is None:
                    socks[i] = sock = self._open()
                if sock is None:
                    continue
                try:
                    sock.send(b"GET /healthz HTTP/1.1\r\n" if first else b"X-Slow: 1\r\n")
                except (BlockingIOError, InterruptedError):
                    pass                      # still connecting: try again next round
                except OSError:
                    sock.close()
                    socks[i] = None           # cut off by the daemon: come back as a new client
            first = False
            self._stop.wait(0.5)
        for sock in socks:
            if sock is not None:
                sock.close()


def test_slow_clients_do_not_take_the_daemon_down(tmp_path: Path) -> None:
    """500 slow HTTP clients (reconnecting when cut off) and 200 idle control-socket clients against a daemon
    limited to 300 descriptors: /healthz keeps answering, `stratum status` answers, a pushed commit is applied,
    the daemon never holds more descriptors than its limit, and nothing is logged as a traceback."""
    remote = bare_repo(tmp_path / "remote.git")
    work = WorkRepo(tmp_path / "work", remote=remote)
    first = work.commit({"infra/motd.ncl": _motd("one")})
    work.push()
    config = tmp_path / "stratumd.toml"
    config.write_text("[http]\nheader_timeout = 2\nbody_timeout = 2\nfd_reserve = 150\nmetrics_public = true\n")
    d = DaemonProc(str(remote), tmp_path / "data", tmp_path / "root", "--config", str(config), nofile=NOFILE)
    idle: list[socket.socket] = []
    try:
        assert d.wait_run(first)["status"] == "succeeded"
        port = d.call("status")["status"]["daemon"]["http_port"]
        peak = 0

        def cut_off() -> float:
            """Connections the daemon has cut so far (its /metrics, read during the flood)."""
            metrics = _get(port, "/metrics")[1].decode()
            return sum(float(line.rsplit(" ", 1)[1]) for line in metrics.splitlines()
                       if line.startswith("stratum_http_connections_closed_total"))

        with SlowFlood(port, SLOW_CLIENTS, seconds=60) as flood:
            wait_for(lambda: flood.opened >= SLOW_CLIENTS, 20)
            for _ in range(200):
                sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                sock.connect(str(d.socket))
                idle.append(sock)
            # The flood is pressing once the daemon has had to cut hundreds of clients off; all that follows
            # happens under it (it lasts until the `with` ends, 60 s at most).
            wait_for(lambda: cut_off() >= 2 * SLOW_CLIENTS, 40, interval=0.5)
            second = work.commit({"infra/motd.ncl": _motd("two")})
            work.push()
            for _ in range(3):
                assert _get(port, "/healthz")[0] == 200
                assert d.call("status")["status"]["daemon"]["http_port"] == port
                peak = max(peak, len(os.listdir(f"/proc/{d.proc.pid}/fd")))
            assert d.wait_run(second, 60)["status"] == "succeeded"
            assert (tmp_path / "root/motd").read_text() == "two\n"
            assert flood.running()
        assert peak < NOFILE
        assert d.proc.poll() is None
        log = d.log()
        assert "Traceback" not in log
        assert log.count("accept_failed") <= 2
    finally:
        for sock in idle:
            sock.close()
        assert d.stop() == 0


def test_tokens_gate_a_real_daemon_and_denials_are_events(tmp_path: Path) -> None:
    """A daemon with a tokens file: /metrics needs the scraper's token, /healthz does not, a refusal is
    recorded as an `http_denied` event naming the principal, and SIGHUP puts an edited tokens file in force."""
    remote = bare_repo(tmp_path / "remote.git")
    work = WorkRepo(tmp_path / "work", remote=remote)
    first = work.commit({"infra/motd.ncl": _motd("one")})
    work.push()
    tokens = tmp_path / "tokens"
    tokens.write_text("# no clients yet\n")
    tokens.chmod(0o600)
    config = tmp_path / "stratumd.toml"
    config.write_text(f'[http]\ntokens_file = "{tokens}"\n')
    d = DaemonProc(str(remote), tmp_path / "data", tmp_path / "root", "--config", str(config))
    try:
        assert d.wait_run(first)["status"] == "succeeded"
        port = d.call("status")["status"]["daemon"]["http_port"]
        assert _get(port, "/healthz")[0] == 200
        assert _get(port, "/metrics", TOKEN)[0] == 401
        # The first client, added to a file that had none, is let in at SIGHUP.
        tokens.write_text(f"prom:metrics:{token_digest(TOKEN)}\n")
        d.proc.send_signal(signal.SIGHUP)
        wait_for(lambda: _get(port, "/metrics", TOKEN)[0] == 200, 20)
        assert _get(port, "/metrics")[0] == 401
        status, body = _get(port, "/metrics", TOKEN)
        assert status == 200 and b"stratum_runs_total" in body
        assert _get(port, "/mcp/", TOKEN)[0] == 403
        # SIGHUP re-reads the tokens file: the old token is revoked, the new one works, no restart.
        tokens.write_text(f"prom:metrics:{token_digest(NEW_TOKEN)}\n")
        d.proc.send_signal(signal.SIGHUP)
        wait_for(lambda: _get(port, "/metrics", TOKEN)[0] == 401, 20)
        assert _get(port, "/metrics", NEW_TOKEN)[0] == 200
        # A tokens file others may read fails the reload as a whole; the tokens in force stay.
        tokens.write_text(f"prom:metrics:{token_digest(TOKEN)}\n")
        tokens.chmod(0o644)
        d.proc.send_signal(signal.SIGHUP)
        wait_for(lambda: [e for e in d.call("events", limit=50)["events"] if e["kind"] == "reload_failed"], 20)
        assert _get(port, "/metrics", NEW_TOKEN)[0] == 200
        assert _get(port, "/metrics", TOKEN)[0] == 401

        def denied() -> list[dict[str, Any]]:
            found = [e for e in d.call("events", limit=50)["events"] if e["kind"] == "http_denied"]
            return found if len(found) >= 2 else []
        events = wait_for(denied, 20)
    finally:
        assert d.stop() == 0
    assert any(e["subject"] == "anonymous" and "HTTP 401" in e["message"] and "/metrics" in e["message"]
               for e in events)
    assert any(e["subject"] == "prom" and "HTTP 403" in e["message"] and "/mcp" in e["message"] for e in events)
    assert TOKEN not in json.dumps(events) and TOKEN not in d.log()


def test_the_knowledge_mcp_mount_needs_a_token_on_a_real_daemon(tmp_path: Path) -> None:
    """/mcp on a real daemon: 401 without a token (whatever the Host header says), and the MCP server answers
    an `initialize` sent with the admin token of `http_token_config`."""
    remote = bare_repo(tmp_path / "remote.git")
    work = WorkRepo(tmp_path / "work", remote=remote)
    first = work.commit({"infra/motd.ncl": _motd("one")})
    work.push()
    config, token = http_token_config(tmp_path)
    d = DaemonProc(str(remote), tmp_path / "data", tmp_path / "root", "--config", str(config))
    try:
        assert d.wait_run(first)["status"] == "succeeded"
        port = d.call("status")["status"]["daemon"]["http_port"]
        body = json.dumps({"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
            "protocolVersion": "2025-06-18", "capabilities": {}, "clientInfo": {"name": "t", "version": "1"}}})
        headers = {"Content-Type": "application/json", "Accept": "application/json, text/event-stream",
                   "Host": f"127.0.0.1:{port}"}
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        try:
            conn.request("POST", "/mcp/", body=body, headers=headers)
            resp = conn.getresponse()
            assert (resp.status, resp.read() and None) == (401, None)
            conn.request("POST", "/mcp/", body=body, headers={**headers, "Authorization": f"Bearer {token}"})
            resp = conn.getresponse()
            answer = resp.read()
            assert resp.status == 200, answer
            assert json.loads(answer)["result"]["serverInfo"]["name"]
        finally:
            conn.close()
    finally:
        assert d.stop() == 0


def test_exposed_address_in_clear_is_refused_at_start(tmp_path: Path) -> None:
    """`--http-listen 0.0.0.0:0` without TLS and tokens: the daemon does not start, says why and what to do,
    and prints no traceback."""
    remote = bare_repo(tmp_path / "remote.git")
    proc = subprocess.run(
        [sys.executable, "-c", "from daemon.cli.main import daemon_main; daemon_main()", "--repo", str(remote),
         "--data-dir", str(tmp_path / "data"), "--http-listen", "0.0.0.0:0", "--log-format", "json"],
        env=cli_env(), capture_output=True, text=True, timeout=60, check=False)
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0
    assert "refusing to listen on 0.0.0.0:0" in out and "tls_cert" in out and "127.0.0.1" in out
    assert "Traceback" not in out
    assert not (tmp_path / "data" / "stratumd.sock").exists()
