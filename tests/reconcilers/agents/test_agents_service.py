"""The agents service: pipelines with outputs forwarded and compensations in reverse, checks that trigger
on_check tasks on a transition, on_commit globs, and the requests CLI verbs leave while the daemon runs.
Real processes, a real DuckDB file, real sockets on loopback; a worker thread runs the queue."""

from __future__ import annotations

import socket
import sys
from collections.abc import Iterator
from pathlib import Path
from types import MappingProxyType

import pytest

from reconcilers.agents.model import Agent, AgentsDesired, Check, Pipeline, Provider, Step, Task, Trigger
from reconcilers.agents.queue import AWAITING, READY
from reconcilers.agents.service import AgentService, matches, submit_request


def script(body: str) -> tuple[str, ...]:
    """A command running Python `body`."""
    return (sys.executable, "-c", body)


def appender(log: Path, word: str, fail: bool = False) -> tuple[str, ...]:
    """A command that appends `word` to `log` (and fails when asked) and prints it."""
    return script(f"open({str(log)!r}, 'a').write({word!r} + '\\n'); print({word!r}); "
                  f"import sys; sys.exit({1 if fail else 0})")


def team(tasks: list[Task], pipelines: tuple[Pipeline, ...] | list[Pipeline] = (),
         checks: tuple[Check, ...] | list[Check] = ()) -> AgentsDesired:
    """A devops and a security agent with the command provider."""
    return AgentsDesired(
        providers=MappingProxyType({"local": Provider("local", "command")}),
        agents=MappingProxyType({"ops": Agent("ops", "devops", ("local",), max_concurrency=2),
                                 "sec": Agent("sec", "security", ("local",))}),
        tasks=MappingProxyType({t.id: t for t in tasks}), pipelines=MappingProxyType({p.id: p for p in pipelines}),
        checks=MappingProxyType({c.id: c for c in checks}))


@pytest.fixture
def service(tmp_path: Path) -> Iterator[AgentService]:
    """A running service over a temp data dir."""
    svc = AgentService(tmp_path / "data", roles=("devops", "security"))
    yield svc
    svc.close()


def test_a_pipeline_passes_outputs_forward(service: AgentService, tmp_path: Path) -> None:
    """Each step sees the outputs of the steps before it (STRATUM_INPUTS), in order, across roles."""
    log = tmp_path / "log"
    read = script("import os, json; print(json.loads(os.environ['STRATUM_INPUTS'])['steps']['find'].strip())")
    desired = team([Task("find", "Find", "devops", command=appender(log, "runbook-7")),
                    Task("review", "Review", "security", command=read)],
                   [Pipeline("p", steps=(Step("find", "find"), Step("review", "review", ("find",))))])
    service.update(desired)
    service.start_pipeline(desired.pipelines["p"], "manual", {}, wait=True)
    result = service.pipelines[-1]
    assert result.outcome == "succeeded"
    assert [(s.step, s.state) for s in result.steps] == [("find", "done"), ("review", "done")]
    assert result.steps[1].output.strip() == "runbook-7"


def test_a_failed_step_compensates_completed_steps_in_reverse(service: AgentService, tmp_path: Path) -> None:
    """Step 3 fails: the compensations of steps 2 then 1 run, newest first; the pipeline is failed."""
    log = tmp_path / "log"
    tasks = [Task(w, w, "devops", command=appender(log, w, fail=(w == "three"))) for w in
             ("one", "two", "three", "undo-one", "undo-two")]
    pl = Pipeline("p", steps=(Step("s1", "one", (), "undo-one"), Step("s2", "two", ("s1",), "undo-two"),
                              Step("s3", "three", ("s2",))))
    service.update(team(tasks, [pl]))
    service.start_pipeline(pl, "manual", {}, wait=True)
    result = service.pipelines[-1]
    assert result.outcome == "failed"
    assert log.read_text().split() == ["one", "two", "three", "undo-two", "undo-one"]
    assert [c.step for c in result.compensations] == ["s2", "s1"]


def free_port() -> int:
    """A loopback port nothing listens on."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_a_check_failing_twice_triggers_its_task_once(tmp_path: Path) -> None:
    """A TCP check against a closed port fails; after `failures` consecutive failures the transition queues
    the on_check task once; a listener makes it recover. (No scheduler thread: the test probes by hand.)"""
    service = AgentService(tmp_path / "data", start_threads=False)
    try:
        _check_transitions(service, tmp_path)
    finally:
        service.close()


def _check_transitions(service: AgentService, tmp_path: Path) -> None:
    port = free_port()
    log = tmp_path / "log"
    check = Check("db", "tcp", host="127.0.0.1", port=port, failures=2, timeout=2)
    heal = Task("heal", "Heal", "devops", Trigger("on_check", check="db"), command=appender(log, "healed"))
    service.update(team([heal], checks=[check]))
    assert service.run_check("db") == ""
    assert service.run_check("db") == "failing"
    assert service.run_check("db") == ""
    rows = service.queue.rows()
    assert len(rows) == 1 and rows[0]["task"] == "heal"
    with socket.socket() as srv:
        srv.bind(("127.0.0.1", port))
        srv.listen()
        assert service.run_check("db") == "recovered"
    assert service.checks.get("db").healthy


def test_on_commit_globs_pick_the_tasks(tmp_path: Path) -> None:
    """Only tasks whose globs match a changed path are queued."""
    svc = AgentService(tmp_path / "data", start_threads=False)
    try:
        infra = Task("infra-review", "R", "devops", Trigger("on_commit", paths=("infra/**",)), command=("true",))
        docs = Task("docs", "D", "devops", Trigger("on_commit", paths=("knowledge/*.md",)), command=("true",))
        svc.update(team([infra, docs]), changed=["infra/net/vpc.ncl"])
        assert [r["task"] for r in svc.queue.rows()] == ["infra-review"]
    finally:
        svc.close()
    assert matches(["knowledge/a.md"], ["knowledge/*.md"]) and not matches(["infra/a"], ["knowledge/**"])


def test_cli_requests_reach_a_running_service(tmp_path: Path) -> None:
    """Approve and run requests left in the spool are applied by the service, then removed."""
    svc = AgentService(tmp_path / "data", start_threads=False)
    try:
        gated = Task("gated", "G", "devops", command=("true",), approval=True)
        svc.update(team([gated, Task("other", "O", "devops", command=("true",))]))
        mid = svc.enqueue_task(gated, "manual", {})
        assert svc.queue.state(mid) == AWAITING
        submit_request(tmp_path / "data", "approve", mid)
        submit_request(tmp_path / "data", "run", "other")
        assert svc.process_requests() == 2
        assert svc.queue.state(mid) == READY
        assert sorted(r["task"] for r in svc.queue.rows()) == ["gated", "other"]
        assert list((tmp_path / "data" / "agents" / "requests").iterdir()) == []
    finally:
        svc.close()


def test_drift_events_trigger_on_drift_tasks_once(tmp_path: Path) -> None:
    """New drift events (what the daemon's drift check records) queue the on_drift tasks once per batch;
    events already seen do not queue them again."""
    events: list[tuple[float, str, str, str]] = []
    svc = AgentService(tmp_path / "data", start_threads=False,
                       drift_source=lambda since: [e for e in events if e[0] > since])
    try:
        report = Task("drift-report", "Report drift", "devops", Trigger("on_drift"), command=("true",))
        svc.update(team([report]))
        assert svc.poll_drift() == []
        events.append((svc._drift_seen + 1, "infra", "etc/motd", "content differs"))
        events.append((svc._drift_seen + 2, "infra", "etc/app.conf", "mode differs"))
        assert len(svc.poll_drift()) == 1
        assert svc.poll_drift() == []
        rows = svc.queue.rows()
        assert [r["task"] for r in rows] == ["drift-report"] and rows[0]["trigger"] == "on_drift"
    finally:
        svc.close()


def test_the_agents_state_is_private_to_the_daemons_user(tmp_path: Path) -> None:
    """The agents' folder and request spool are 0700, the DuckDB file, status and requests 0600: task outputs
    and approval requests are not for other local users."""
    data = tmp_path / "data"
    data.mkdir()
    (data / "agents").mkdir(mode=0o755)                # an older, looser folder is tightened
    svc = AgentService(data, start_threads=False)
    try:
        svc.write_status()
        request = submit_request(data, "run", "x")
        assert (data / "agents").stat().st_mode & 0o777 == 0o700
        assert request.parent.stat().st_mode & 0o777 == 0o700
        for f in (request, data / "agents.duckdb", data / "agents" / "status.json"):
            assert f.stat().st_mode & 0o077 == 0, f
    finally:
        svc.close()
