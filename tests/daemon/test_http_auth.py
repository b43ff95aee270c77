"""The HTTP listener authenticates: real requests to a real uvicorn on loopback, behind the daemon's auth gate.

Bearer tokens from a 0600 host file, Cedar deciding per mount, the principal handed to mounted apps, TLS with a
certificate made here, and the refusal to expose a listener in clear."""

from __future__ import annotations

import datetime as dt
import http.client
import json
import socket
import ssl
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from daemon.errors import SettingsError
from daemon.http.auth import DenialReporter, load_tokens, token_digest
from daemon.http.config import check_exposure, http_settings
from daemon.http.server import HttpServer, build_app, listener_settings
from daemon.service.metrics import Metrics

ADMIN, READER, SCRAPER = "admin-token-0123456789abcdef", "reader-token-0123456789abcdef", "scrape-token-0123456789"


def tokens_file(path: Path, mode: int = 0o600) -> Path:
    """A tokens file with an admin, a reader and a metrics scraper (hashes only)."""
    path.write_text("# name:roles:sha256\n"
                    f"alice:admin:{token_digest(ADMIN)}\n"
                    f"bob:reader:{token_digest(READER)}   # read-only\n"
                    f"prom:metrics:{token_digest(SCRAPER)}\n")
    path.chmod(mode)
    return path


async def whoami(request: Request) -> JSONResponse:
    """A mounted app that reports what the gate handed it."""
    state = request.scope.get("state", {})
    authorize = state.get("authorize")
    return JSONResponse({"principal": state.get("principal"), "roles": list(state.get("roles", ())),
                         "may_write": authorize("write") if authorize else None,
                         "may_read": authorize("read") if authorize else None})


class Listener:
    """build_app + HttpServer exactly as the daemon wires them, on 127.0.0.1."""

    def __init__(self, tmp: Path, table: dict[str, Any], listen: str = "127.0.0.1:0") -> None:
        self.denied: list[tuple[str, str]] = []
        http, auth, self.tokens = listener_settings(listen, table, "stratumd.toml",
                                       DenialReporter(lambda m, p: self.denied.append((m, p))))
        from starlette.applications import Starlette

        mounted = Starlette(routes=[Route("/", whoami, methods=["GET", "POST"])])
        app = build_app(Metrics(), lambda: {"ok": True}, [("/mcp", mounted)],
                        [Route("/hooks/{name}", lambda r: JSONResponse({"hook": r.path_params["name"]}),
                               methods=["POST"])], auth=auth)
        self.server = HttpServer(listen, app, http)
        self.server.start()
        deadline = time.monotonic() + 10
        while not self.server.server.started:
            assert time.monotonic() < deadline, "uvicorn did not start"
            time.sleep(0.01)

    def request(self, method: str, path: str, token: str | None = None, headers: dict[str, str] | None = None,
                context: ssl.SSLContext | None = None) -> tuple[int, dict[str, str], bytes]:
        """(status, headers, body) of one request."""
        conn: http.client.HTTPConnection
        if context is not None:
            conn = http.client.HTTPSConnection("127.0.0.1", self.server.port, timeout=10, context=context)
        else:
            conn = http.client.HTTPConnection("127.0.0.1", self.server.port, timeout=10)
        try:
            hdrs = dict(headers or {})
            if token is not None:
                hdrs["Authorization"] = f"Bearer {token}"
            conn.request(method, path, body=b"{}" if method == "POST" else None, headers=hdrs)
            resp = conn.getresponse()
            return resp.status, {k.lower(): v for k, v in resp.getheaders()}, resp.read()
        finally:
            conn.close()


@pytest.fixture
def listener(tmp_path: Path) -> Iterator[Listener]:
    """A listener with the three clients of `tokens_file` and the built-in policy."""
    served = Listener(tmp_path, {"tokens_file": str(tokens_file(tmp_path / "tokens"))})
    yield served
    served.server.stop()


# -- who gets in ---------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("path", ["/mcp/", "/metrics", "/no-such-path"])
def test_without_a_token_every_mount_answers_401(listener: Listener, path: str) -> None:
    """No token: 401 with a Bearer challenge, even for paths that do not exist (nothing is revealed)."""
    status, headers, body = listener.request("GET", path)
    assert status == 401
    assert headers["www-authenticate"].startswith("Bearer")
    assert "bearer token is required" in json.loads(body)["error"]


def test_a_wrong_token_is_refused_and_reported(listener: Listener) -> None:
    """An unknown token gets 401 invalid_token, and the refusal is reported for an event."""
    status, headers, _ = listener.request("GET", "/mcp/", token="not-a-known-token")
    assert status == 401
    assert 'error="invalid_token"' in headers["www-authenticate"]
    assert listener.denied and "HTTP 401 for anonymous on /mcp" in listener.denied[0][0]
    status, _, _ = listener.request("GET", "/mcp/", headers={"Authorization": f"Basic {ADMIN}"})
    assert status == 401


def test_a_host_header_is_never_authentication(listener: Listener) -> None:
    """`Host: 127.0.0.1:PORT` (what a DNS-rebinding guard trusts) opens nothing without a token."""
    for host in (f"127.0.0.1:{listener.server.port}", "localhost", f"localhost:{listener.server.port}"):
        status, _, _ = listener.request("POST", "/mcp/", headers={"Host": host})
        assert status == 401, host


def test_cedar_denial_is_403_and_names_why(listener: Listener) -> None:
    """The metrics scraper's token is valid but the built-in policy keeps it off /mcp: 403, principal reported."""
    status, _, body = listener.request("GET", "/mcp/", token=SCRAPER)
    assert status == 403
    assert "no policy of built-in policy permits prom to request /mcp" in json.loads(body)["error"]
    assert listener.denied[-1][1] == "prom"


def test_allowed_requests_reach_the_mount_with_the_principal(listener: Listener) -> None:
    """An admin reaches /mcp; the app reads the principal and asks Cedar finer actions through the scope."""
    status, _, body = listener.request("POST", "/mcp/", token=ADMIN)
    assert status == 200
    assert json.loads(body) == {"principal": "alice", "roles": ["admin"], "may_write": True, "may_read": True}
    status, _, body = listener.request("GET", "/mcp/", token=READER)
    assert status == 200
    assert json.loads(body) == {"principal": "bob", "roles": ["reader"], "may_write": False, "may_read": True}


def test_metrics_need_a_token_unless_the_host_opens_them(tmp_path: Path, listener: Listener) -> None:
    """The scraper's token reads /metrics; `metrics_public = true` opens /metrics (and only it) to anyone."""
    status, _, body = listener.request("GET", "/metrics", token=SCRAPER)
    assert status == 200 and b"stratum_runs" in body
    opened = Listener(tmp_path, {"metrics_public": True})
    try:
        assert opened.request("GET", "/metrics")[0] == 200
        status, _, body = opened.request("GET", "/mcp/")
        assert status == 401 and "[http] tokens_file" in json.loads(body)["error"]   # says what to set
    finally:
        opened.server.stop()


def test_healthz_and_hooks_need_no_token(listener: Listener) -> None:
    """/healthz and /hooks/<name> (which authenticate by signature) are served without a token."""
    assert listener.request("GET", "/healthz")[0] == 200
    status, _, body = listener.request("POST", "/hooks/gh")
    assert status == 200 and json.loads(body) == {"hook": "gh"}


def test_a_host_policy_file_replaces_the_built_in_roles(tmp_path: Path) -> None:
    """With [http] policy_file, that Cedar decides: a forbid keeps even an admin off a mount."""
    policy = tmp_path / "http.cedar"
    policy.write_text('permit(principal, action, resource);\n'
                      'forbid(principal == Stratum::Http::Client::"alice", action, '
                      'resource == Stratum::Http::Mount::"/mcp") when { context.method == "POST" };\n')
    served = Listener(tmp_path, {"tokens_file": str(tokens_file(tmp_path / "tokens")), "policy_file": str(policy)})
    try:
        status, _, body = served.request("POST", "/mcp/", token=ADMIN)
        assert status == 403 and "forbid" in json.loads(body)["error"]
        assert served.request("GET", "/mcp/", token=ADMIN)[0] == 200
        assert served.request("POST", "/mcp/", token=SCRAPER)[0] == 200
    finally:
        served.server.stop()


# -- TLS -----------------------------------------------------------------------------------------------------------
def self_signed(tmp: Path) -> tuple[Path, Path]:
    """A certificate for 127.0.0.1 and its key (0600), made here."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "stratum-test")])
    now = dt.datetime.now(dt.UTC)
    import ipaddress

    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + dt.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                           critical=False)
            .sign(key, hashes.SHA256()))
    cert_path, key_path = tmp / "tls.crt", tmp / "tls.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    key_path.chmod(0o600)
    return cert_path, key_path


def test_tls_when_a_certificate_is_configured(tmp_path: Path) -> None:
    """With tls_cert/tls_key the listener speaks HTTPS (verified against the certificate) and still wants tokens;
    a clear-text request gets no answer from a mount."""
    cert, key = self_signed(tmp_path)
    served = Listener(tmp_path, {"tokens_file": str(tokens_file(tmp_path / "tokens")), "tls_cert": str(cert),
                                 "tls_key": str(key)})
    try:
        context = ssl.create_default_context(cafile=str(cert))
        assert served.request("GET", "/mcp/", context=context)[0] == 401
        status, _, body = served.request("GET", "/mcp/", token=ADMIN, context=context)
        assert status == 200 and json.loads(body)["principal"] == "alice"
        with pytest.raises((http.client.HTTPException, ConnectionError)):
            served.request("GET", "/mcp/", token=ADMIN)
    finally:
        served.server.stop()


def test_a_stalled_tls_handshake_is_cut_off(tmp_path: Path) -> None:
    """A client that opens a TCP connection to the TLS listener and never starts the handshake is closed at
    the head deadline, not after asyncio's 60 s."""
    cert, key = self_signed(tmp_path)
    served = Listener(tmp_path, {"tls_cert": str(cert), "tls_key": str(key), "header_timeout": 1})
    try:
        with socket.create_connection(("127.0.0.1", served.server.port), timeout=10) as sock:
            assert sock.recv(100) == b""
    finally:
        served.server.stop()


def test_a_replaced_tokens_file_revokes_without_a_restart(tmp_path: Path, listener: Listener) -> None:
    """What a SIGHUP does: the file re-read and put in force, so a removed client's token stops working."""
    path = tmp_path / "tokens"
    path.write_text(f"bob:reader:{token_digest(READER)}\n")
    listener.tokens.replace(listener.tokens.read())
    assert listener.request("GET", "/mcp/", token=ADMIN)[0] == 401
    assert listener.request("GET", "/mcp/", token=READER)[0] == 200


def test_tls_key_open_to_others_is_refused(tmp_path: Path) -> None:
    """A private key readable by group or others stops the start with the chmod to run."""
    cert, key = self_signed(tmp_path)
    key.chmod(0o644)
    with pytest.raises(SettingsError) as err:
        listener_settings("127.0.0.1:0", {"tls_cert": str(cert), "tls_key": str(key)}, "stratumd.toml")
    assert "chmod 600" in err.value.render()


# -- settings ------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("listen", ["0.0.0.0:9465", "[::]:9465", "192.0.2.10:80"])
def test_exposed_address_without_tls_and_tokens_is_refused(tmp_path: Path, listen: str) -> None:
    """A non-loopback address needs both TLS and a tokens file; loopback needs neither."""
    cert, key = self_signed(tmp_path)
    tokens = str(tokens_file(tmp_path / "tokens"))
    for table in ({}, {"tokens_file": tokens}, {"tls_cert": str(cert), "tls_key": str(key)}):
        with pytest.raises(SettingsError) as err:
            check_exposure(listen, http_settings(table), "stratumd.toml")
        assert "refusing to listen on" in err.value.render() and "127.0.0.1" in err.value.render()
    check_exposure(listen, http_settings({"tokens_file": tokens, "tls_cert": str(cert), "tls_key": str(key)}))
    check_exposure("127.0.0.1:9465", http_settings({}))
    check_exposure("localhost:9465", http_settings({}))


def test_tokens_file_open_to_others_is_refused(tmp_path: Path) -> None:
    """A tokens file anyone else may read or write is refused at start."""
    path = tokens_file(tmp_path / "tokens", mode=0o644)
    with pytest.raises(SettingsError) as err:
        load_tokens(path)
    assert "chmod 600" in err.value.render()


@pytest.mark.parametrize(("line", "words"), [
    ("alice:admin:plain-token-in-clear", "sha256 hex digest"),
    ("alice:admin", "name:role"),
    ("al ice:admin:" + "0" * 64, "client name"),
    ("alice::" + "0" * 64, "roles"),
])
def test_bad_tokens_lines_are_located(tmp_path: Path, line: str, words: str) -> None:
    """Each bad line is reported as file:line with what is wrong; a token in clear is never accepted."""
    path = tmp_path / "tokens"
    path.write_text("# clients\n" + line + "\n")
    path.chmod(0o600)
    with pytest.raises(SettingsError) as err:
        load_tokens(path)
    assert f"{path}:2" in err.value.render() and words in err.value.render()


def test_unknown_http_keys_are_refused() -> None:
    """A misspelt key is an error naming the known ones, not silently ignored."""
    with pytest.raises(SettingsError) as err:
        http_settings({"token_file": "/x"}, "stratumd.toml")
    assert "token_file" in err.value.render() and "tokens_file" in err.value.render()


def test_denials_are_reported_at_most_once_per_interval_with_a_count() -> None:
    """A flood of refusals makes one report per (status, mount) per interval, the next one counting the rest."""
    now = [100.0]
    seen: list[tuple[str, str]] = []
    report = DenialReporter(lambda m, p: seen.append((m, p)), interval=10.0, clock=lambda: now[0])
    for _ in range(50):
        report(401, "", "/mcp", "a bearer token is required")
    assert len(seen) == 1
    now[0] += 11
    report(401, "", "/mcp", "a bearer token is required")
    assert len(seen) == 2 and "49 more refused" in seen[1][0]
