"""The agents' interface on the daemon's listener (its ASGI app, driven in-process): a webhook queues the task
whose trigger is `webhook` with the JSON body as inputs; other targets are 404; a body over the cap is 413;
metrics count executions per role and provider."""

from __future__ import annotations

from pathlib import Path
from types import MappingProxyType

from starlette.testclient import TestClient

from reconcilers.agents.http import MAX_BODY, app
from reconcilers.agents.model import Agent, AgentsDesired, Provider, Task, Trigger
from reconcilers.agents.service import AgentService


def test_webhooks_and_metrics(tmp_path: Path) -> None:
    """POST /webhook/<id> queues a webhook task (202); manual tasks and unknown ids are 404; metrics follow."""
    svc = AgentService(tmp_path / "data", start_threads=False, roles=("devops",))
    try:
        hook = Task("deploy-hook", "Deploy", "devops", Trigger("webhook"), command=("true",))
        manual = Task("by-hand", "By hand", "devops", command=("true",))
        svc.update(AgentsDesired(providers=MappingProxyType({"local": Provider("local", "command")}),
                                 agents=MappingProxyType({"ops": Agent("ops", "devops", ("local",))}),
                                 tasks=MappingProxyType({hook.id: hook, manual.id: manual})))
        client = TestClient(app(lambda: svc))
        r = client.post("/webhook/deploy-hook", json={"ref": "v1.2"})
        assert r.status_code == 202
        row = svc.queue.rows()[0]
        assert (row["task"], row["trigger"]) == ("deploy-hook", "webhook")
        assert client.post("/webhook/by-hand").status_code == 404
        assert client.post("/webhook/nope").status_code == 404
        assert client.post("/webhook/deploy-hook", content=b"x" * (MAX_BODY + 1)).status_code == 413
        assert client.post("/webhook/deploy-hook", content=b"{not json").status_code == 400
        svc.worker.drain()
        text = client.get("/metrics").text
        assert 'stratum_agent_executions_total{outcome="succeeded",provider="local",role="devops"} 1.0' in text
        assert TestClient(app(lambda: None)).post("/webhook/deploy-hook").status_code == 503
    finally:
        svc.close()
