"""The agents' HTTP interface on the daemon's listener (behind its bearer tokens and Cedar policy):
POST /agents/webhook/<id> queues the task or pipeline `<id>` whose trigger is `webhook` (the JSON body, when
one, becomes its inputs; at most 64 KiB); GET /agents/metrics is the Prometheus text of agent executions."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

if TYPE_CHECKING:
    from reconcilers.agents.service import AgentService

MAX_BODY = 64 * 1024


def app(service: Callable[[], AgentService | None]) -> Any:
    """The Starlette app; `service()` is the running service (None before the first revision)."""

    async def webhook(request: Request) -> Response:
        svc = service()
        if svc is None:
            return JSONResponse({"error": "no agent service runs yet (no revision applied)"}, status_code=503)
        target = request.path_params["target"]
        body = await request.body()
        if len(body) > MAX_BODY:
            return JSONResponse({"error": f"body over {MAX_BODY} bytes"}, status_code=413)
        try:
            inputs = json.loads(body) if body else {}
        except ValueError:
            return JSONResponse({"error": "the body is not JSON"}, status_code=400)
        task, pl = svc.team.tasks.get(target), svc.team.pipelines.get(target)
        item = task or pl
        if item is None or item.trigger.kind != "webhook":
            return JSONResponse({"error": f"no task or pipeline {target!r} with a webhook trigger"}, status_code=404)
        payload = {"webhook": inputs if isinstance(inputs, dict) else {"body": inputs}}
        run = svc.enqueue_task(task, "webhook", payload) if task is not None else \
            svc.start_pipeline(item, "webhook", payload)  # type: ignore[arg-type]
        return JSONResponse({"queued": run}, status_code=202)

    async def metrics(request: Request) -> Response:
        svc = service()
        text = svc.runner.metrics.render() if svc is not None else b""
        return Response(text, media_type="text/plain; version=0.0.4")

    return Starlette(routes=[Route("/webhook/{target}", webhook, methods=["POST"]),
                             Route("/metrics", metrics, methods=["GET"])])
