"""An idle daemon keeps the interfaces nobody queried unloaded (issue 10: idle memory), and each works on its
first use: a real stratumd on loopback, its imported modules read through the control socket's `modules`
operation (names only; no memory or timing is asserted)."""

from __future__ import annotations

import http.client
import json
from pathlib import Path

import pytest

from tests.fixtures import WorkRepo, bare_repo, infra_file
from tests.proc import DaemonProc, http_token_config, wait_for
from tests.servers import free_port

pytestmark = pytest.mark.slow

# What a daemon whose revision has no vault engines, certificates, agent prompts or form patterns, and whose
# MCP, forms and vault listeners nobody called, must not have imported.
UNQUERIED = (
    "mcp", "pydantic", "reconcilers.knowledge.mcp_server",        # the MCP server and its SDK
    "reconcilers.forms.web",                                      # the forms web backend
    "reconcilers.vault.service.api.app",                          # the vault HTTP API
    "reconcilers.agents.http",                                    # the agents' HTTP mount
    "numpy", "onnxruntime", "tokenizers", "fastembed",            # embeddings
    "jinja2", "re2", "cryptography.x509", "reconcilers.vault.pki", "reconcilers.vault.database",
    "reconcilers.vault.transit", "nickel",                        # py-nickel: its evaluations run in workers
)


def _request(port: int, method: str, path: str, token: str | None, body: str | None = None,
             headers: dict[str, str] | None = None) -> tuple[int, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    try:
        extra = {"Authorization": f"Bearer {token}"} if token else {}
        conn.request(method, path, body=body, headers={**extra, **(headers or {})})
        resp = conn.getresponse()
        return resp.status, resp.read()
    finally:
        conn.close()


def test_an_idle_daemon_loads_no_interface_until_its_first_request(tmp_path: Path) -> None:
    """After a start and a run nobody queried, none of the interfaces' libraries is imported; then /mcp
    answers `initialize`, /forms/ its page and the vault's own listener /v1/sys/health, each on its first
    request, and only then are their modules loaded."""
    remote = bare_repo(tmp_path / "remote.git")
    work = WorkRepo(tmp_path / "work", remote=remote)
    first = work.commit({"infra/motd.ncl": infra_file(
        '    motd = { kind = \'file, path = "motd", content = "hi\\n" },')})
    work.push()
    vault_port = free_port()
    config, token = http_token_config(tmp_path, extra=f'[vault]\nlisten = "127.0.0.1:{vault_port}"\n')
    d = DaemonProc(str(remote), tmp_path / "data", tmp_path / "root", "--config", str(config))
    try:
        assert d.wait_run(first)["status"] == "succeeded"
        port = d.call("status")["status"]["daemon"]["http_port"]
        assert _request(port, "GET", "/healthz", None)[0] == 200
        idle = set(d.call("modules")["modules"])
        assert "daemon.service.daemon" in idle                   # the probe reads the daemon's own modules
        assert [m for m in UNQUERIED if m in idle] == []
        # /mcp: the MCP SDK is imported by this first request, which it answers.
        body = json.dumps({"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
            "protocolVersion": "2025-06-18", "capabilities": {}, "clientInfo": {"name": "t", "version": "1"}}})
        status, answer = _request(port, "POST", "/mcp/", token, body, {
            "Content-Type": "application/json", "Accept": "application/json, text/event-stream",
            "Host": f"127.0.0.1:{port}"})
        assert status == 200, answer
        assert json.loads(answer)["result"]["serverInfo"]["name"]
        # /forms/: the web backend answers its first request (the index of the revision's forms).
        status, page = _request(port, "GET", "/forms/", token)
        assert status == 200, page
        # The vault API on its own listener: an uninitialized vault says so (501), as Vault does.
        wait_for(lambda: _request(vault_port, "GET", "/v1/sys/health", None)[0] == 501, 60)
        used = set(d.call("modules")["modules"])
        assert {"mcp", "reconcilers.knowledge.mcp_server", "reconcilers.forms.web",
                "reconcilers.vault.service.api.app"} <= used
    finally:
        assert d.stop() == 0
