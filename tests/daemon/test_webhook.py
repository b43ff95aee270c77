"""Webhook receivers: real deliveries to a real uvicorn server on loopback, and settings.

The delivery log alone is tested in test_deliveries.py; here only through the endpoint."""

from __future__ import annotations

import hashlib
import hmac
import http.client
import json
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.error import HTTPError
from urllib.parse import urlencode

import pytest
from starlette.applications import Starlette

from daemon.errors import SettingsError
from daemon.git.deliveries import DeliveryLog
from daemon.git.webhook import Receiver, WebhookEndpoint, receivers_from_settings
from daemon.http.server import HttpServer

SECRET = b"s3cret-for-tests"
NOW = 1_700_000_000.0
PUSH_MAIN = json.dumps({"ref": "refs/heads/main", "after": "0" * 40}).encode()


class Hooks:
    """A webhook endpoint served by uvicorn on 127.0.0.1, recording what it accepted and refused."""

    def __init__(self, receivers: dict[str, Receiver], seen: DeliveryLog | None = None) -> None:
        self.receivers = receivers
        self.accepted: list[tuple[str, dict[str, Any]]] = []
        self.rejected: list[tuple[str, str, str]] = []
        endpoint = WebhookEndpoint(lambda: self.receivers, lambda n, s: self.accepted.append((n, s)),
                                   lambda n, r, c: self.rejected.append((n, r, c)), seen=seen, clock=lambda: NOW)
        self.server = HttpServer("127.0.0.1:0", Starlette(routes=endpoint.routes()))
        self.server.start()
        deadline = time.monotonic() + 10
        while not self.server.server.started:
            assert time.monotonic() < deadline, "uvicorn did not start"
            time.sleep(0.01)

    def post(self, name: str, body: bytes, headers: dict[str, str]) -> tuple[int, dict[str, Any]]:
        """POST `body` to /hooks/<name>; (status, JSON body) whatever the status."""
        req = urllib.request.Request(f"http://127.0.0.1:{self.server.port}/hooks/{name}", data=body,
                                     headers=headers, method="POST")
        try:
            with urllib.request.urlopen(req, timeout=10) as resp:
                return resp.status, json.loads(resp.read())
        except HTTPError as err:
            with err:
                return err.code, json.loads(err.read())

    def connection(self) -> http.client.HTTPConnection:
        """A raw connection for requests urllib will not send (lying Content-Length, chunked)."""
        return http.client.HTTPConnection("127.0.0.1", self.server.port, timeout=10)


@pytest.fixture
def hooks() -> Iterator[Hooks]:
    """Receivers gh (github, branch main, max_body 4096), gl (gitlab) and gen (generic-hmac)."""
    served = Hooks({
        "gh": Receiver("gh", "github", SECRET, max_body=4096, branch="main"),
        "gl": Receiver("gl", "gitlab", SECRET),
        "gen": Receiver("gen", "generic-hmac", SECRET, branch="main"),
    })
    yield served
    served.server.stop()


def github(body: bytes, delivery: str = "d-1", event: str = "push", secret: bytes = SECRET) -> dict[str, str]:
    """Headers of a GitHub delivery signed with `secret`."""
    sig = hmac.new(secret, body, hashlib.sha256).hexdigest()
    return {"X-GitHub-Event": event, "X-GitHub-Delivery": delivery, "X-Hub-Signature-256": f"sha256={sig}",
            "Content-Type": "application/json"}


def generic(body: bytes, delivery: str = "g-1", stamp: float = NOW,
            signed_stamp: float | None = None) -> dict[str, str]:
    """Headers of a generic-hmac delivery at `stamp`, signed over `signed_stamp` (default: the same)."""
    signed = f"{int(stamp if signed_stamp is None else signed_stamp)}.".encode() + body
    sig = hmac.new(SECRET, signed, hashlib.sha256).hexdigest()
    return {"X-Stratum-Timestamp": str(int(stamp)), "X-Stratum-Delivery": delivery,
            "X-Stratum-Signature": f"sha256={sig}"}


# -- github -------------------------------------------------------------------------------------------------------

def test_valid_github_push_triggers_a_fetch(hooks: Hooks) -> None:
    """A correctly signed push to the watched branch is accepted and reported to on_accept."""
    status, body = hooks.post("gh", PUSH_MAIN, github(PUSH_MAIN))
    assert (status, body) == (202, {"accepted": True, "delivery": "d-1"})
    assert hooks.accepted == [("gh", {"type": "github", "event": "push", "delivery": "d-1",
                                      "ref": "refs/heads/main"})]
    assert hooks.rejected == []


def test_forged_signature_is_refused_and_audited_without_echoing_secrets(hooks: Hooks) -> None:
    """A made-up signature gets 401 and an on_reject with the client address; nothing secret comes back."""
    headers = {**github(PUSH_MAIN), "X-Hub-Signature-256": "sha256=" + "0" * 64}
    status, body = hooks.post("gh", PUSH_MAIN, headers)
    assert status == 401
    assert "0" * 64 not in json.dumps(body) and SECRET.decode() not in json.dumps(body)
    assert hooks.rejected == [("gh", "bad signature", "127.0.0.1")]
    assert hooks.accepted == []


def test_signature_made_with_another_secret_is_refused(hooks: Hooks) -> None:
    """A signature computed with a different secret gets 401."""
    status, _ = hooks.post("gh", PUSH_MAIN, github(PUSH_MAIN, secret=b"not-the-secret"))
    assert status == 401 and hooks.accepted == []


def test_missing_signature_is_refused(hooks: Hooks) -> None:
    """A delivery without X-Hub-Signature-256 gets 401."""
    headers = github(PUSH_MAIN)
    del headers["X-Hub-Signature-256"]
    assert hooks.post("gh", PUSH_MAIN, headers)[0] == 401
    assert hooks.rejected[0][1] == "missing header x-hub-signature-256"


def test_missing_delivery_id_is_a_bad_request(hooks: Hooks) -> None:
    """A delivery without X-GitHub-Delivery gets 400: it could not be protected against replay."""
    headers = github(PUSH_MAIN)
    del headers["X-GitHub-Delivery"]
    assert hooks.post("gh", PUSH_MAIN, headers)[0] == 400 and hooks.accepted == []


def test_replayed_delivery_is_refused(hooks: Hooks) -> None:
    """Sending the same signed delivery twice triggers one fetch; the second gets 409."""
    assert hooks.post("gh", PUSH_MAIN, github(PUSH_MAIN))[0] == 202
    status, body = hooks.post("gh", PUSH_MAIN, github(PUSH_MAIN))
    assert (status, body) == (409, {"error": "replayed delivery d-1"})
    assert len(hooks.accepted) == 1
    assert hooks.rejected == [("gh", "replayed delivery d-1", "127.0.0.1")]


def test_replay_under_a_fresh_delivery_id_is_refused(hooks: Hooks) -> None:
    """Delivery ids are not signed: a captured delivery re-sent with a new id is still a replay (409)."""
    assert hooks.post("gh", PUSH_MAIN, github(PUSH_MAIN, delivery="d-1"))[0] == 202
    assert hooks.post("gh", PUSH_MAIN, github(PUSH_MAIN, delivery="d-forged"))[0] == 409
    assert hooks.post("gen", PUSH_MAIN, generic(PUSH_MAIN, delivery="g-1"))[0] == 202
    assert hooks.post("gen", PUSH_MAIN, generic(PUSH_MAIN, delivery="g-forged"))[0] == 409
    assert len(hooks.accepted) == 2


def test_forged_delivery_does_not_poison_its_id(hooks: Hooks) -> None:
    """A forged request does not get its delivery id remembered, so the genuine one is still accepted."""
    assert hooks.post("gh", PUSH_MAIN, github(PUSH_MAIN, secret=b"attacker"))[0] == 401
    assert hooks.post("gh", PUSH_MAIN, github(PUSH_MAIN))[0] == 202


def test_ping_answers_200_without_a_fetch(hooks: Hooks) -> None:
    """A signed GitHub ping gets 200 and triggers nothing."""
    body = b'{"zen": "Keep it logically awesome."}'
    status, answer = hooks.post("gh", body, github(body, event="ping"))
    assert (status, answer["ping"], answer["accepted"]) == (200, True, False)
    assert hooks.accepted == []


def test_push_to_another_branch_is_ignored(hooks: Hooks) -> None:
    """With branch = main, a signed push to refs/heads/dev gets 202 accepted false and no fetch."""
    body = json.dumps({"ref": "refs/heads/dev"}).encode()
    status, answer = hooks.post("gh", body, github(body))
    assert status == 202 and answer["accepted"] is False
    assert answer["ignored"] == "ref refs/heads/dev is not refs/heads/main"
    assert hooks.accepted == [] and hooks.rejected == []


def test_other_github_events_are_ignored(hooks: Hooks) -> None:
    """A signed event that is not a push (an issue comment) gets 202 accepted false."""
    body = b'{"action": "created"}'
    status, answer = hooks.post("gh", body, github(body, event="issue_comment"))
    assert (status, answer["ignored"]) == (202, "event issue_comment") and hooks.accepted == []


def test_signed_push_that_is_not_json_is_a_bad_request(hooks: Hooks) -> None:
    """A correctly signed GitHub push whose body is not a JSON object gets 400 and no fetch."""
    body = b"not json"
    status, answer = hooks.post("gh", body, github(body))
    assert (status, answer) == (400, {"error": "payload is not JSON"}) and hooks.accepted == []


def test_github_form_encoded_payload_is_understood(hooks: Hooks) -> None:
    """GitHub's application/x-www-form-urlencoded content type (JSON in a `payload` field) works too."""
    body = urlencode({"payload": PUSH_MAIN.decode()}).encode()
    headers = {**github(body), "Content-Type": "application/x-www-form-urlencoded"}
    assert hooks.post("gh", body, headers)[0] == 202
    assert hooks.accepted[0][1]["ref"] == "refs/heads/main"


# -- sizes --------------------------------------------------------------------------------------------------------

def test_content_length_over_max_body_is_refused_before_reading(hooks: Hooks) -> None:
    """A Content-Length over max_body gets 413 although no byte of the body was sent (so none was awaited)."""
    conn = hooks.connection()
    conn.putrequest("POST", "/hooks/gh")
    for key, value in github(b"").items():
        conn.putheader(key, value)
    conn.putheader("Content-Length", str(10**9))
    conn.endheaders()
    resp = conn.getresponse()
    assert resp.status == 413 and json.loads(resp.read()) == {"error": "body over 4096 bytes"}
    conn.close()
    assert hooks.rejected == [("gh", "body over 4096 bytes", "127.0.0.1")]


def test_chunked_body_over_max_body_is_refused_while_streaming(hooks: Hooks) -> None:
    """A chunked body is refused once it passes max_body, without waiting for the rest (never sent here)."""
    conn = hooks.connection()
    conn.putrequest("POST", "/hooks/gh")
    for key, value in github(b"").items():
        conn.putheader(key, value)
    conn.putheader("Transfer-Encoding", "chunked")
    conn.endheaders()
    for _ in range(5):                                   # 5 KiB, over the 4 KiB limit; no terminating chunk
        conn.send(b"400\r\n" + b"x" * 1024 + b"\r\n")
    resp = conn.getresponse()
    assert resp.status == 413
    resp.read()
    conn.close()
    assert hooks.accepted == []


def test_chunked_body_within_max_body_is_accepted(hooks: Hooks) -> None:
    """A signed push sent chunked, within max_body, is read whole and accepted."""
    conn = hooks.connection()
    conn.request("POST", "/hooks/gh", body=iter([PUSH_MAIN[:10], PUSH_MAIN[10:]]), headers=github(PUSH_MAIN),
                 encode_chunked=True)
    resp = conn.getresponse()
    assert resp.status == 202
    resp.read()
    conn.close()


# -- gitlab -------------------------------------------------------------------------------------------------------

def gitlab(token: bytes = SECRET, **extra: str) -> dict[str, str]:
    """Headers of a GitLab push delivery carrying `token`."""
    return {"X-Gitlab-Event": "Push Hook", "X-Gitlab-Token": token.decode(), "X-Gitlab-Event-UUID": "gl-1",
            "Content-Type": "application/json", **extra}


def test_gitlab_right_token_triggers_a_fetch(hooks: Hooks) -> None:
    """A GitLab push with the right token is accepted."""
    assert hooks.post("gl", PUSH_MAIN, gitlab())[0] == 202
    assert hooks.accepted == [("gl", {"type": "gitlab", "event": "Push Hook", "delivery": "gl-1",
                                      "ref": "refs/heads/main"})]


def test_gitlab_wrong_token_is_refused(hooks: Hooks) -> None:
    """A GitLab push with a wrong token gets 401 and an on_reject."""
    assert hooks.post("gl", PUSH_MAIN, gitlab(b"wrong"))[0] == 401
    assert hooks.rejected == [("gl", "bad token", "127.0.0.1")] and hooks.accepted == []


def test_gitlab_idempotency_key_serves_as_delivery_id(hooks: Hooks) -> None:
    """Without X-Gitlab-Event-UUID the Idempotency-Key is the delivery id, and a repeat of it gets 409."""
    headers = gitlab()
    del headers["X-Gitlab-Event-UUID"]
    headers["Idempotency-Key"] = "key-7"
    assert hooks.post("gl", PUSH_MAIN, headers)[0] == 202
    assert hooks.post("gl", PUSH_MAIN, headers)[0] == 409
    del headers["Idempotency-Key"]
    assert hooks.post("gl", PUSH_MAIN, headers)[0] == 400


# -- generic-hmac -------------------------------------------------------------------------------------------------

def test_generic_hmac_valid_delivery_triggers_a_fetch(hooks: Hooks) -> None:
    """A generic-hmac delivery signed over its timestamp and body is accepted."""
    assert hooks.post("gen", PUSH_MAIN, generic(PUSH_MAIN))[0] == 202
    assert hooks.accepted[0] == ("gen", {"type": "generic-hmac", "event": "push", "delivery": "g-1",
                                         "ref": "refs/heads/main"})


def test_generic_hmac_opaque_body_triggers_a_fetch(hooks: Hooks) -> None:
    """A signed generic-hmac body that is not JSON still triggers a fetch (no ref, so no branch filter)."""
    assert hooks.post("gen", b"fetch please", generic(b"fetch please"))[0] == 202
    assert hooks.accepted[0][1]["ref"] is None


def test_generic_hmac_stale_timestamp_is_refused(hooks: Hooks) -> None:
    """A correctly signed delivery older than the tolerance gets 401."""
    assert hooks.post("gen", PUSH_MAIN, generic(PUSH_MAIN, stamp=NOW - 301))[0] == 401
    assert hooks.rejected[0][1] == "stale timestamp" and hooks.accepted == []


def test_generic_hmac_future_timestamp_is_refused(hooks: Hooks) -> None:
    """A correctly signed delivery dated beyond the tolerance gets 401."""
    assert hooks.post("gen", PUSH_MAIN, generic(PUSH_MAIN, stamp=NOW + 301))[0] == 401
    assert hooks.rejected[0][1] == "timestamp in the future"


def test_generic_hmac_signature_over_another_timestamp_is_refused(hooks: Hooks) -> None:
    """A signature made over a different timestamp than the one sent gets 401."""
    assert hooks.post("gen", PUSH_MAIN, generic(PUSH_MAIN, signed_stamp=NOW - 1))[0] == 401
    assert hooks.rejected[0][1] == "bad signature"


def test_generic_hmac_timestamp_must_be_unix_seconds(hooks: Hooks) -> None:
    """A timestamp that is not whole unix seconds gets 400."""
    headers = {**generic(PUSH_MAIN), "X-Stratum-Timestamp": "yesterday"}
    assert hooks.post("gen", PUSH_MAIN, headers)[0] == 400


# -- routing and reload -------------------------------------------------------------------------------------------

def test_unknown_receiver_is_not_found(hooks: Hooks) -> None:
    """A delivery to a receiver that is not configured gets 404 and calls neither callback."""
    assert hooks.post("nope", PUSH_MAIN, github(PUSH_MAIN))[0] == 404
    assert hooks.accepted == [] and hooks.rejected == []


def test_reloaded_receivers_take_effect_without_a_new_app(hooks: Hooks) -> None:
    """The receivers provider is asked per request, so a receiver added by a reload is served at once."""
    hooks.receivers = {**hooks.receivers, "new": Receiver("new", "github", b"other")}
    assert hooks.post("new", PUSH_MAIN, github(PUSH_MAIN, secret=b"other"))[0] == 202


# -- delivery log through the endpoint ----------------------------------------------------------------------------

def test_delivery_log_is_used_by_the_endpoint(tmp_path: Path) -> None:
    """A delivery accepted before a restart is refused as a replay by a server using the same log file."""
    receivers = {"gh": Receiver("gh", "github", SECRET)}
    first = Hooks(receivers, seen=DeliveryLog(tmp_path / "deliveries"))
    try:
        assert first.post("gh", PUSH_MAIN, github(PUSH_MAIN))[0] == 202
    finally:
        first.server.stop()
    second = Hooks(receivers, seen=DeliveryLog(tmp_path / "deliveries"))
    try:
        assert second.post("gh", PUSH_MAIN, github(PUSH_MAIN))[0] == 409
    finally:
        second.server.stop()


# -- settings -----------------------------------------------------------------------------------------------------

def secret_file(tmp_path: Path, content: bytes = SECRET + b"\n", mode: int = 0o600) -> Path:
    """A secret file with `content` and `mode`."""
    path = tmp_path / "gh.secret"
    path.write_bytes(content)
    path.chmod(mode)
    return path


def test_settings_build_receivers_and_hide_the_secret(tmp_path: Path) -> None:
    """A valid table gives a Receiver whose secret has no trailing newline and is absent from its repr."""
    path = secret_file(tmp_path)
    got = receivers_from_settings({"gh": {"type": "github", "secret_file": str(path), "max_body": 2048,
                                          "branch": "main"}}, where="stratumd.toml")
    assert got == {"gh": Receiver("gh", "github", SECRET, max_body=2048, branch="main")}
    assert SECRET.decode() not in repr(got["gh"])


def test_inline_secret_is_refused(tmp_path: Path) -> None:
    """An inline `secret` key is an error pointing at the settings file and telling the user to use secret_file."""
    with pytest.raises(SettingsError) as err:
        receivers_from_settings({"gh": {"type": "github", "secret": "hunter2"}}, where="/etc/stratumd.toml")
    assert err.value.where == "/etc/stratumd.toml" and "secret_file" in err.value.hint
    assert "hunter2" not in str(err.value)


def test_missing_secret_file_is_refused(tmp_path: Path) -> None:
    """A secret_file that does not exist is an error naming that file."""
    missing = tmp_path / "absent.secret"
    with pytest.raises(SettingsError) as err:
        receivers_from_settings({"gh": {"type": "github", "secret_file": str(missing)}})
    assert err.value.where == str(missing) and err.value.hint


def test_group_or_world_readable_secret_file_is_refused(tmp_path: Path) -> None:
    """A secret file readable by group or others is an error whose hint is chmod 600."""
    path = secret_file(tmp_path, mode=0o644)
    with pytest.raises(SettingsError) as err:
        receivers_from_settings({"gh": {"type": "github", "secret_file": str(path)}})
    assert err.value.where == str(path) and err.value.hint == f"chmod 600 {path}"


def test_empty_secret_is_refused(tmp_path: Path) -> None:
    """A secret file holding only a newline is an error."""
    path = secret_file(tmp_path, content=b"\n")
    with pytest.raises(SettingsError, match="empty"):
        receivers_from_settings({"gh": {"type": "github", "secret_file": str(path)}})


@pytest.mark.parametrize(("table", "words"), [
    ({"type": "bitbucket"}, "unknown type"),
    ({"type": "github", "colour": "blue"}, "unknown key(s): colour"),
    ({"type": "github", "tolerance": 10}, "tolerance applies only to generic-hmac"),
    ({"type": "github", "max_body": -1}, "max_body"),
])
def test_bad_tables_are_refused(tmp_path: Path, table: dict[str, Any], words: str) -> None:
    """Unknown types and keys and bad values are errors naming the settings file, with a hint."""
    with pytest.raises(SettingsError) as err:
        receivers_from_settings({"gh": {**table, "secret_file": str(secret_file(tmp_path))}},
                                where="stratumd.toml")
    assert words in err.value.what and err.value.where == "stratumd.toml" and err.value.hint
