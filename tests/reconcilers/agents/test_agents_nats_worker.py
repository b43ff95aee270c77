"""Workers on other machines: `stratumd --worker --role devops` processes against a real nats-server. A worker
killed mid-task: the run is redelivered to another worker after the visibility timeout and runs to completion
once; a copy of a finished run delivered again does not act (its idempotency key)."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from types import MappingProxyType

import nats as nats_client
import pytest

from reconcilers.agents.model import Agent, AgentsDesired, AgentSettings, Provider, Task
from reconcilers.agents.service import AgentService
from tests.proc import cli_env
from tests.servers import Nats, start_nats

STRATUMD = [sys.executable, "-c", "from daemon.cli.main import daemon_main; daemon_main()"]   # this checkout


@pytest.fixture
def server(tmp_path: Path) -> Iterator[Nats]:
    """A nats-server of this test's own (the workers share its KV buckets)."""
    srv = start_nats(tmp_path / "nats")
    yield srv
    srv.stop(signal.SIGKILL)


def worker(url: str, data: Path) -> subprocess.Popen[bytes]:
    """A `stratumd --worker` process for the devops role."""
    data.mkdir(parents=True, exist_ok=True)
    with (data / "out.log").open("wb") as out:
        return subprocess.Popen([*STRATUMD, "--worker", "--role", "devops", "--queue-url", url, "--data-dir",
                                 str(data), "--log-format", "json"], stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True, env=cli_env())


def wait_for(check: Callable[[], bool], what: str, limit: float = 90.0) -> None:
    """Poll `check()` until true (bounded; fails with `what`)."""
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.2)
    pytest.fail(f"timed out waiting for {what}")


def stop(proc: subprocess.Popen[bytes], sig: int = signal.SIGTERM) -> None:
    """Signal a worker's process group and reap it."""
    if proc.poll() is None:
        os.killpg(proc.pid, sig)
    proc.wait(timeout=60)


@pytest.mark.slow
def test_a_worker_killed_mid_task_is_redelivered_and_the_run_acts_once(tmp_path: Path, server: Nats) -> None:
    """Worker A dies inside the command (which waits for the test's go-ahead); worker B gets the run after the
    visibility timeout (2 s) and, let go, finishes it; the marker shows two starts and one end. A copy of the
    finished run published again is skipped by B."""
    marker, go = tmp_path / "marker", tmp_path / "go"
    # The command waits for the test's go-ahead (a file), so where it stands never depends on timing.
    code = (f"import os, time\nopen({str(marker)!r}, 'a').write('start\\n')\n"
            f"for _ in range(2400):\n    if os.path.exists({str(go)!r}): break\n    time.sleep(0.05)\n"
            f"open({str(marker)!r}, 'a').write('end\\n')\nprint('restarted postgres')")
    task = Task("restart-db", "Restart the database", "devops", command=(sys.executable, "-c", code),
                idempotency_key="incident-1234", retries=3, backoff=0.5, timeout=60)
    team = AgentsDesired(providers=MappingProxyType({"local": Provider("local", "command")}),
                         agents=MappingProxyType({"ops": Agent("ops", "devops", ("local",))}),
                         tasks=MappingProxyType({task.id: task}), settings=AgentSettings(visibility=2))
    svc = AgentService(tmp_path / "daemon", start_threads=False, queue_url=server.url)
    a = b = None
    try:
        svc.update(team)                                  # shares the declarations through the KV bucket
        run = svc.enqueue_task(task, "manual", {})
        a = worker(server.url, tmp_path / "worker-a")
        wait_for(lambda: marker.exists() and "start" in marker.read_text(), "worker A to start the command")
        stop(a, signal.SIGKILL)
        assert "end" not in marker.read_text()
        b = worker(server.url, tmp_path / "worker-b")
        wait_for(lambda: marker.read_text().split() == ["start", "start"], "worker B to start the run again")
        go.touch()
        wait_for(lambda: svc.queue.state(run) == "done", "the run to be done by worker B")
        assert marker.read_text().split() == ["start", "start", "end"]
        assert svc.queue.done_result("incident-1234") is not None

        # The same run delivered once more (as after a lost ack): B acks it from the key, the command does not run.
        async def publish_copy() -> None:
            nc = await nats_client.connect(server.url)
            body = {"id": "copy-1", "role": "devops", "task": task.id, "spec": task.spec(), "trigger": "manual",
                    "idem_key": "incident-1234", "max_attempts": 1, "backoff": 0, "enqueued_at": time.time()}
            await nc.jetstream().publish("stratum.tasks.devops", json.dumps(body).encode())
            await nc.close()

        asyncio.run(publish_copy())
        wait_for(lambda: svc.queue.state("copy-1") == "done", "the copy to be acked")
        assert marker.read_text().split() == ["start", "start", "end"]
    finally:
        for proc in (a, b):
            if proc is not None:
                stop(proc)
        svc.close()


@pytest.mark.slow
def test_a_worker_without_a_role_or_server_says_what_to_do(tmp_path: Path) -> None:
    """`stratumd --worker` with no role, or a server that does not answer: one error line, exit 1, no traceback."""
    proc = subprocess.run([*STRATUMD, "--worker", "--queue-url", "nats://127.0.0.1:1", "--data-dir", str(tmp_path)],
                          capture_output=True, text=True, timeout=120, check=False,
                          env=cli_env())
    assert proc.returncode == 1 and "a worker needs at least one --role" in proc.stderr, proc.stderr
    proc = subprocess.run([*STRATUMD, "--worker", "--role", "devops", "--queue-url", "nats://127.0.0.1:1",
                           "--data-dir", str(tmp_path)], capture_output=True, text=True, timeout=120, check=False,
                          env=cli_env())
    assert proc.returncode == 1 and "cannot use NATS JetStream at nats://127.0.0.1:1" in proc.stderr, proc.stderr
    assert "Traceback" not in proc.stderr
