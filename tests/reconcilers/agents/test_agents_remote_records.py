"""Executions of remote workers recorded centrally (issue 13, "Records"), against a real nats-server: a worker
(`serve_worker`, in a thread) runs a task; the daemon's agents service records the execution in its own DuckDB
file once, with its execution node and metrics; a copy delivered again is recorded once; records published while
the daemon is down are picked up when it comes back; a record the worker could not publish is shipped by the next
sweep; `stratum task history` on the daemon's data directory shows them all."""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from types import MappingProxyType

import nats as nats_client
import pytest

from reconcilers.agents.budget import Spend
from reconcilers.agents.model import Agent, AgentsDesired, AgentSettings, Provider, Task
from reconcilers.agents.natsqueue import EXEC_STREAM, MAX_RECORD, NatsQueue, NatsQueueError, encode_record
from reconcilers.agents.remote import outcome_from, record_body, serve_worker
from reconcilers.agents.runner import Outcome
from reconcilers.agents.service import AgentService
from reconcilers.agents.store import Store
from tests.proc import cli_env
from tests.reconcilers.agents.test_agents_nats_worker import wait_for
from tests.servers import Nats, start_nats

STRATUM = [sys.executable, "-c", "from daemon.cli.main import main; main()"]


@pytest.fixture
def server(tmp_path: Path) -> Iterator[Nats]:
    """A nats-server of this test's own (the executions stream is shared by everyone who uses the server)."""
    srv = start_nats(tmp_path / "nats")
    yield srv
    srv.stop(signal.SIGKILL)


def team(task: Task) -> AgentsDesired:
    """One devops agent with a command provider, and `task`."""
    return AgentsDesired(providers=MappingProxyType({"local": Provider("local", "command")}),
                         agents=MappingProxyType({"ops": Agent("ops", "devops", ("local",))}),
                         tasks=MappingProxyType({task.id: task}), settings=AgentSettings(visibility=30),
                         revision="a" * 40)


def stream_messages(url: str) -> int:
    """Records waiting in the executions stream (work-queue retention: an acked record is gone)."""
    async def count() -> int:
        nc = await nats_client.connect(url)
        try:
            return int((await nc.jetstream().stream_info(EXEC_STREAM)).state.messages)
        finally:
            await nc.close()
    return asyncio.run(count())


def publish_raw(url: str, subject: str, body: bytes, msg_id: str) -> None:
    """Publish as a worker would, under a message id of the test's choosing."""
    async def go() -> None:
        nc = await nats_client.connect(url)
        await nc.jetstream().publish(subject, body, headers={"Nats-Msg-Id": msg_id})
        await nc.close()
    asyncio.run(go())


def drain(svc: AgentService, url: str, until: Callable[[], bool], what: str) -> None:
    """Import records until `until()` holds and the stream is empty (bounded)."""
    def step() -> bool:
        svc.import_executions(timeout=0.3)
        return until() and stream_messages(url) == 0
    wait_for(step, what, limit=60)


def rows(store: Store) -> list[dict[str, object]]:
    """The daemon's execution rows, oldest first."""
    return store.dicts("SELECT * FROM executions ORDER BY finished")


@pytest.mark.slow
def test_a_remote_workers_executions_are_recorded_once_by_the_daemon(tmp_path: Path, server: Nats) -> None:
    task = Task("disk-report", "Report disk space", "devops", command=(sys.executable, "-c", "print('disk ok 42%')"),
                timeout=60)
    desired = team(task)
    daemon, work = tmp_path / "daemon", tmp_path / "worker"
    # A record the worker wrote but never published (the server was away, or it died before publishing).
    work.mkdir()
    early = Store(work / "agents-worker.duckdb")
    early.execute("INSERT INTO executions VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                  ["early-1", "run-0", task.id, task.id, "devops", "ops", "local", "cron", 1000.0, 1002.5,
                   "failed", 0, 0, 0.0, "exit 1", "no space left", 1, 1.0, "least-loaded", ""])
    early.close()
    commits: list[dict[str, str]] = []
    svc = AgentService(daemon, start_threads=False, queue_url=server.url)
    svc.record_executions(lambda files, _msg: commits.append(dict(files)))
    stop = threading.Event()
    failures: list[BaseException] = []

    def serve() -> None:
        try:
            serve_worker(work, ["devops"], server.url, stop=stop)
        except BaseException as err:  # noqa: BLE001 reported by the test below
            failures.append(err)

    worker = threading.Thread(target=serve, daemon=True)
    svc2: AgentService | None = None
    closed = False
    other: NatsQueue | None = None
    try:
        svc.update(desired)                                 # shares the declarations with the worker
        worker.start()
        run = svc.enqueue_task(task, "manual", {})
        wait_for(lambda: svc.queue.state(run) == "done", "the worker to run the task")
        drain(svc, server.url, lambda: len(rows(svc.store)) == 2, "both records to reach the daemon")
        got = rows(svc.store)
        assert got[0]["id"] == "early-1"           # the sweep shipped the unpublished record
        live = got[1]
        assert (live["task"], live["role"], live["agent"], live["provider"], live["trigger"], live["outcome"]) == \
            (task.id, "devops", "ops", "local", "manual", "succeeded")
        assert live["message"] == run and "disk ok" not in str(live["error"])
        metric = svc.runner.metrics.registry.get_sample_value(
            "stratum_agent_executions_total", {"role": "devops", "provider": "local", "outcome": "succeeded"})
        assert metric == 1.0
        assert svc.nodes is not None and svc.nodes.flush() == 2           # a node per record, in one commit
        failed = [n for n in commits[-1].values() if "Task disk-report failed" in n]
        succeeded = [n for n in commits[-1].values() if "Task disk-report succeeded" in n]
        assert len(failed) == 1 and "no space left" in failed[0]
        assert len(succeeded) == 1 and "disk ok 42%" in succeeded[0] and run in succeeded[0]

        # The same record delivered again, past the server's duplicate window (another message id): once.
        worker_store_row = dict(live)
        publish_raw(server.url, "stratum.executions.devops", json.dumps(record_body(worker_store_row)).encode(),
                    "another-id")
        publish_raw(server.url, "stratum.executions.devops", b"{not json", "garbage")
        drain(svc, server.url, lambda: True, "the copies to be consumed")
        assert len(rows(svc.store)) == 2
        assert svc.runner.metrics.registry.get_sample_value(
            "stratum_agent_executions_total", {"role": "devops", "provider": "local", "outcome": "succeeded"}) == 1.0
        assert svc.nodes.pending() == 0

        # The daemon down while the worker runs: its records wait in the stream for the durable consumer.
        svc.close()
        closed = True
        other = NatsQueue(server.url)
        run2 = other.enqueue("devops", {**task.spec(), "inputs": {}}, trigger="cron")
        wait_for(lambda: other is not None and other.state(run2) == "done", "the worker to run the second task")
        svc2 = AgentService(daemon, start_threads=False, queue_url=server.url)
        drain(svc2, server.url, lambda: svc2 is not None and len(rows(svc2.store)) == 3,
              "the daemon back to pick up the record")
        assert [r["message"] for r in rows(svc2.store)][2] == run2
        svc2.close()
        svc2 = None
    finally:
        stop.set()
        worker.join(60)
        if other is not None:
            other.close()
        if svc2 is not None:
            svc2.close()
        if not closed:
            svc.close()
    assert not failures, failures
    # The worker keeps its own file within the retention: the 1970 record went once shipped, with its mark.
    kept = Store(work / "agents-worker.duckdb")
    try:
        assert kept.query("SELECT count(*) FROM executions WHERE id = 'early-1'") == [(0,)]
        assert kept.query("SELECT count(*) FROM shipped WHERE id = 'early-1'") == [(0,)]
        assert kept.query("SELECT count(*) FROM executions")[0][0] == 2
    finally:
        kept.close()
    history = subprocess.run([*STRATUM, "task", "history", "--data-dir", str(daemon), "--output", "json"],
                             capture_output=True, text=True, timeout=120, check=False, env=cli_env())
    assert history.returncode == 0, history.stderr
    shown = json.loads(history.stdout)
    assert sorted(r["trigger"] for r in shown) == ["cron", "cron", "manual"]
    assert {r["provider"] for r in shown} == {"local"}


def test_a_shipped_record_is_checked_and_cut() -> None:
    """What a worker ships round-trips; a record from anyone else on the server is checked and bounded."""
    out = Outcome("e1", "m1", "t", "t", "devops", agent="ops", provider="local", trigger="cron", started=1.0,
                  finished=2.0, outcome="succeeded", tokens_in=3, tokens_out=4, cost=0.5, summary="s" * 900,
                  output="x" * 5000)
    back = outcome_from(json.loads(json.dumps(record_body(out))))
    assert (back.id, back.tokens_in, back.cost, back.outcome) == ("e1", 3, 0.5, "succeeded")
    assert len(back.summary) == 500 and len(back.output) == 1500
    bads: list[object] = [[], {"outcome": "succeeded"}, {"id": "x", "outcome": "waiting"},
                {"id": "x", "outcome": "failed", "cost": "lots"}, {"id": "x", "outcome": "failed", "attempt": True}]
    for bad in bads:
        with pytest.raises(ValueError):
            outcome_from(bad)
    huge: Mapping[str, object] = {"id": "x" * 10_000, "outcome": "failed", "error": "e" * 100_000}
    cut = outcome_from(dict(huge))
    assert len(cut.id) == 64 and len(cut.error) == 2000
    # Every text field at its limit in 4-byte characters, and a lone surrogate: still one publishable record.
    w = "\U0001f4be"
    wide = Outcome(w * 100, "\ud800" * 300, w * 300, w * 300, w * 300, agent="\U0001f4be" * 300,
                   provider="\U0001f4be" * 300, trigger="\U0001f4be" * 100, summary="\U0001f4be" * 600,
                   error="\U0001f4be" * 3000, rule="\U0001f4be" * 300, explain="\U0001f4be" * 5000,
                   output="\U0001f4be" * 3000, outcome="failed")
    assert len(encode_record(record_body(wide))) <= MAX_RECORD
    with pytest.raises(NatsQueueError, match="limit"):
        encode_record({"id": "x", "output": "y" * (MAX_RECORD + 1)})


@pytest.mark.slow
def test_the_running_service_imports_records_and_counts_spend_once(tmp_path: Path, server: Nats) -> None:
    """The service's own thread (start_threads, as in the daemon) records a published LLM execution; the same
    record published twice more (past the duplicate window: other message ids) leaves one row, one spend."""
    task = Task("summarise", "Summarise", "devops", prompt="hi", timeout=60)
    svc = AgentService(tmp_path / "daemon", start_threads=True, queue_url=server.url)
    try:
        svc.update(team(task))
        now = time.time()
        body = json.dumps(record_body(Outcome("llm-1", "run-9", task.id, task.id, "devops", agent="ops",
                                              provider="gpt", trigger="manual", started=now - 2, finished=now,
                                              outcome="succeeded", tokens_in=100, tokens_out=50, cost=0.25,
                                              summary="done", output="all good"))).encode()
        for n in range(3):
            publish_raw(server.url, "stratum.executions.devops", body, f"copy-{n}")
        wait_for(lambda: len(rows(svc.store)) == 1 and stream_messages(server.url) == 0,
                 "the service's thread to take the three copies", limit=60)
        assert len(rows(svc.store)) == 1
        assert Spend(svc.store, time.time).usage("devops").month == pytest.approx(0.25)
        assert svc.runner.metrics.registry.get_sample_value(
            "stratum_agent_tokens_total", {"role": "devops", "provider": "gpt", "direction": "in"}) == 100.0
    finally:
        svc.close()
