"""Test helpers for real daemon processes: start stratumd, wait for runs, kill it, read its index."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import duckdb

from daemon.service import control_socket as api

ROOT = Path(__file__).resolve().parent.parent


def cli_env() -> dict[str, str]:
    """Environment for child processes that import the checkout."""
    return {**os.environ, "PYTHONPATH": str(ROOT), "STRATUM_LOG_FORMAT": "json"}


def wait_for(predicate: Callable[[], Any], timeout: float = 20.0, interval: float = 0.02) -> Any:
    """Poll `predicate` until it returns a truthy value (returned) or fail after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"condition not met within {timeout} s")


class DaemonProc:
    """A real `stratum daemon` child process on a repo and data dir."""

    def __init__(self, repo: str, data_dir: Path, root: Path, *extra: str,
                 env: Mapping[str, str] | None = None, nofile: int | None = None, python: str = sys.executable,
                 ) -> None:
        """Start the daemon and wait for its control socket; `env` is laid over `cli_env()`; `nofile` sets
        the descriptor limit (soft and hard) the daemon starts with; `python` is the interpreter (a venv's)."""
        self.data_dir = data_dir
        self.log_path = data_dir.parent / f"{data_dir.name}-daemon.log"
        data_dir.mkdir(parents=True, exist_ok=True)
        self._log = self.log_path.open("ab")
        limit = f"import resource; resource.setrlimit(resource.RLIMIT_NOFILE, ({nofile}, {nofile}))\n" if nofile else ""
        self.proc = subprocess.Popen(
            [python, "-c", limit + "from daemon.cli.main import daemon_main; daemon_main()",
             "--repo", repo, "--data-dir", str(data_dir), "--root", str(root), "--log-format", "json",
             "--drift-interval", "0", *extra],
            env={**cli_env(), **(env or {})}, stdout=self._log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        wait_for(lambda: self.proc.poll() is not None or api.daemon_running(self.socket), 30)
        if self.proc.poll() is not None:
            self._log.close()                 # no unclosed-file warning on top of the real failure
            raise AssertionError(f"daemon exited {self.proc.returncode}: {self.log()}")

    @property
    def socket(self) -> Path:
        """The control socket."""
        return self.data_dir / "stratumd.sock"

    def call(self, op: str, **fields: Any) -> dict[str, Any]:
        """One control-API request."""
        return api.call(self.socket, op, **fields)

    def runs(self) -> list[dict[str, Any]]:
        """Runs, newest first."""
        return list(self.call("log", limit=200)["runs"])

    def wait_run(self, revision: str, timeout: float = 30.0) -> dict[str, Any]:
        """Wait until a finalized run of `revision` exists; returns it."""
        def finished() -> dict[str, Any] | None:
            for r in self.runs():
                if r["revision"] == revision and r["status"] != "running":
                    return r
            return None
        return dict(wait_for(finished, timeout))

    def log(self) -> str:
        """The daemon's output so far."""
        return self.log_path.read_text(errors="replace")

    def log_events(self) -> list[dict[str, Any]]:
        """The daemon's JSON log lines."""
        out = []
        for line in self.log().splitlines():
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError:
                continue
        return out

    def stop(self) -> int:
        """SIGTERM and wait; returns the exit code."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()
        return int(self.proc.returncode)

    def kill(self) -> None:
        """SIGKILL the daemon (and leave its Nickel worker to die with its stdin)."""
        self.proc.kill()
        self.proc.wait()
        self._log.close()


def index_rows(data_dir: Path, sql: str, params: list[Any] | None = None) -> list[tuple[Any, ...]]:
    """Query a stopped daemon's index directly."""
    con = duckdb.connect(str(data_dir / "index.duckdb"), read_only=True)
    try:
        return con.execute(sql, params or []).fetchall()
    finally:
        con.close()


def tree_of(root: Path) -> dict[str, str]:
    """Every file under `root` (not following links) -> its content or `-> target` for links."""
    out: dict[str, str] = {}
    if not root.exists():
        return out
    for path in sorted(root.rglob("*")):
        rel = str(path.relative_to(root))
        if path.is_symlink():
            out[rel] = "-> " + os.readlink(path)
        elif path.is_file():
            out[rel] = path.read_text(errors="replace")
        elif path.is_dir():
            out[rel + "/"] = ""
    return out


def http_token_config(base: Path, role: str = "admin", extra: str = "") -> tuple[Path, str]:
    """A stratumd.toml (with `extra` TOML appended) whose [http] tokens_file holds one client, `test`, with
    `role`; returns (the settings file for `--config`, the bearer token to send)."""
    token = "test-token-" + os.urandom(16).hex()
    tokens = base / "http-tokens"
    tokens.write_text(f"test:{role}:{hashlib.sha256(token.encode()).hexdigest()}\n")
    tokens.chmod(0o600)
    config = base / "stratumd-http.toml"
    config.write_text(f'[http]\ntokens_file = "{tokens}"\n{extra}')
    return config, token
