"""The task queue on NATS JetStream (`agents.queue = 'nats` in stratum.ncl; the server URL is a host setting),
for workers on many machines (`stratumd --worker --role devops`), behaving as the DuckDB queue does.

    stream STRATUM_TASKS     subjects stratum.tasks.<role>, work-queue retention (an acked run is gone)
    consumers                one durable pull consumer per role, `stratum-<role>`: ack_wait is the visibility
                             timeout (an unacked run is redelivered), max_deliver caps deliveries
    ack / nak / term         done / again after a delay (backoff x 2^(attempt-1)) / dead
    dead letter              a run out of attempts is published to stratum.dead.<role> (stream STRATUM_DEAD)
    KV STRATUM_RESULTS       run id -> {state, result, error}: what pipelines wait for
    KV STRATUM_IDEMPOTENCY   hash of an idempotency key -> result: a redelivered run does not act twice
    KV STRATUM_APPROVALS     runs waiting for approval, published to the stream once approved
    KV STRATUM_TEAM          the declarations in force, for workers with no checkout of the repository
    stream STRATUM_EXECUTIONS  subjects stratum.executions.<role>, work-queue retention: the execution records
                             remote workers publish (Nats-Msg-Id = execution id), read by the daemon through the
                             durable consumer `stratum-executions` and recorded once (idempotent by id)
Publishing with the header Nats-Msg-Id = the idempotency key makes JetStream drop a second copy queued within
its duplicate window. nats-py is asyncio: one event loop runs on a thread of its own, and the Queue methods
(called from worker threads) wait on it with a deadline.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import re
import threading
import time
import uuid
from collections.abc import Coroutine, Mapping, Sequence
from typing import Any, TypeVar

import nats
import structlog
from nats.js.api import ConsumerConfig, RetentionPolicy, StreamConfig
from nats.js.errors import BadRequestError, KeyNotFoundError, NoKeysError, NotFoundError

from reconcilers.agents.queue import CANCELLED, DEAD, DONE, Message, retry_delay
from reconcilers.errors import StratumError

log = structlog.get_logger("stratum.agents.nats")
STREAM, DEAD_STREAM = "STRATUM_TASKS", "STRATUM_DEAD"
EXEC_STREAM, EXEC_DURABLE = "STRATUM_EXECUTIONS", "stratum-executions"
MAX_RECORD = 65_536          # bytes of one published execution record (remote.record_body stays below ~40 KB)
EXEC_MAX_AGE = 30 * 86_400.0  # seconds an execution record waits for a daemon that never comes back
MAX_DELIVER = 25             # the consumer's cap; each run's own attempts are enforced below it
CALL_TIMEOUT = 30.0
T = TypeVar("T")


class NatsQueueError(StratumError):
    """The NATS server cannot be reached or refused an operation."""


_SUBJECT_UNSAFE = re.compile(r"[^A-Za-z0-9_-]")


def encode_record(record: Mapping[str, Any]) -> bytes:
    """A published execution record's bytes. UTF-8, not \\u escapes: a record cut to its fields' limits
    (remote.record_body) fits MAX_RECORD even when all of it is non-ASCII; a lone surrogate becomes '?'."""
    data = json.dumps(record, ensure_ascii=False).encode("utf-8", "replace")
    if len(data) > MAX_RECORD:
        raise NatsQueueError(f"execution record {str(record.get('id'))[:64]!r} is {len(data)} bytes "
                             f"(limit {MAX_RECORD})", hint="cut its fields (remote.record_body)")
    return data


def _key(text: str) -> str:
    """A KV key for any text (KV keys allow few characters)."""
    return hashlib.sha256(text.encode()).hexdigest()


class NatsQueue:
    """The Queue protocol on JetStream."""

    def __init__(self, url: str, *, visibility: float = 300.0, connect_timeout: float = 10.0) -> None:
        self.url = url
        self.visibility = visibility
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="agents-nats", daemon=True)
        self._thread.start()
        self._subs: dict[str, Any] = {}
        self._inflight: dict[str, Any] = {}        # run id -> the JetStream message being worked on
        self._lock = threading.Lock()
        try:
            self._call(self._connect(connect_timeout), connect_timeout + 5)
        except Exception as err:
            self.close()
            raise NatsQueueError(f"cannot use NATS JetStream at {url}: {type(err).__name__}: {err}",
                                 hint="is nats-server running with -js? (agents queue = 'nats)") from err

    def _call(self, coro: Coroutine[Any, Any, T], timeout: float = CALL_TIMEOUT) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout)

    async def _connect(self, timeout: float) -> None:
        async def quiet(err: Exception) -> None:
            # nats-py's default prints a traceback for every connection error: one log line instead.
            log.warning("agents.nats_error", error=f"{type(err).__name__}: {err}")

        self.nc = await nats.connect(self.url, connect_timeout=timeout, max_reconnect_attempts=3,
                                     reconnect_time_wait=0.5, error_cb=quiet)
        self.js = self.nc.jetstream()
        for name, subjects, retention in ((STREAM, ["stratum.tasks.>"], RetentionPolicy.WORK_QUEUE),
                                          (DEAD_STREAM, ["stratum.dead.>"], RetentionPolicy.LIMITS),
                                          (EXEC_STREAM, ["stratum.executions.>"], RetentionPolicy.WORK_QUEUE)):
            config = StreamConfig(name=name, subjects=subjects, retention=retention, duplicate_window=600.0,
                                  max_age=EXEC_MAX_AGE if name == EXEC_STREAM else None)
            try:
                await self.js.add_stream(config)
            except BadRequestError:
                await self.js.update_stream(config)
        self.kv = {}
        for bucket in ("STRATUM_RESULTS", "STRATUM_IDEMPOTENCY", "STRATUM_APPROVALS", "STRATUM_TEAM"):
            try:
                self.kv[bucket] = await self.js.key_value(bucket)
            except (NotFoundError, BadRequestError):
                self.kv[bucket] = await self.js.create_key_value(bucket=bucket)

    # -- the Queue protocol ----------------------------------------------------------------------------------
    def enqueue(self, role: str, spec: dict[str, Any], *, trigger: str = "manual", idem_key: str = "",
                retries: int = 0, backoff: float = 5.0, approval: bool = False) -> str:
        """Publish a run to stratum.tasks.<role> (or hold it for approval)."""
        mid = uuid.uuid4().hex
        body = {"id": mid, "role": role, "task": str(spec.get("id", "")), "spec": spec, "trigger": trigger,
                "idem_key": idem_key, "max_attempts": retries + 1, "backoff": backoff, "enqueued_at": time.time()}
        if approval:
            self._call(self.kv["STRATUM_APPROVALS"].put(mid, json.dumps(body).encode()))
            self._put_result(mid, "awaiting_approval")
            return mid
        return self._publish(body)

    def _publish(self, body: dict[str, Any]) -> str:
        headers = {"Nats-Msg-Id": _key(body["idem_key"])} if body["idem_key"] else None
        ack = self._call(self.js.publish(f"stratum.tasks.{body['role']}", json.dumps(body).encode(),
                                         headers=headers))
        if ack.duplicate:
            # The same key was queued within the duplicate window: that run is this run.
            try:
                first = self._call(self.kv["STRATUM_IDEMPOTENCY"].get(f"q.{_key(body['idem_key'])}"))
                return (first.value or b"").decode() or str(body["id"])
            except KeyNotFoundError:
                return str(body["id"])
        if body["idem_key"]:
            self._call(self.kv["STRATUM_IDEMPOTENCY"].put(f"q.{_key(body['idem_key'])}", body["id"].encode()))
        self._put_result(body["id"], "ready")
        return str(body["id"])

    def _exists(self, bucket: str, key: str) -> bool:
        try:
            self._call(self.kv[bucket].get(key))
            return True
        except KeyNotFoundError:
            return False

    def _sub(self, role: str) -> Any:
        with self._lock:
            if role not in self._subs:
                config = ConsumerConfig(durable_name=f"stratum-{role}", ack_wait=self.visibility,
                                        max_deliver=MAX_DELIVER, filter_subject=f"stratum.tasks.{role}")
                self._subs[role] = self._call(self.js.pull_subscribe(f"stratum.tasks.{role}",
                                                                     durable=f"stratum-{role}", config=config))
            return self._subs[role]

    def lease(self, roles: Sequence[str], owner: str, visibility: float) -> Message | None:
        """The next run of `roles` (ack_wait of the role's consumer is the visibility timeout)."""
        for role in roles:
            sub = self._sub(role)
            try:
                msgs = self._call(sub.fetch(1, timeout=0.2))
            except nats.errors.TimeoutError:
                continue
            for m in msgs:
                body = json.loads(m.data)
                if self._cancelled(body["id"]):
                    self._call(m.term())
                    continue
                with self._lock:
                    self._inflight[body["id"]] = m
                self._put_result(body["id"], "leased")
                return Message(id=body["id"], role=body["role"], task=body["task"], spec=body["spec"],
                               trigger=body["trigger"],
                               attempt=int(m.metadata.num_delivered) - self._released(body["id"]),
                               max_attempts=int(body["max_attempts"]), idem_key=body["idem_key"],
                               enqueued_at=float(body["enqueued_at"]))
        return None

    def _cancelled(self, mid: str) -> bool:
        found = self.outcome(mid)
        return found is not None and found[0] == CANCELLED

    def _take(self, msg: Message) -> Any:
        with self._lock:
            return self._inflight.pop(msg.id, None)

    def ack(self, msg: Message, result: str = "") -> None:
        """Remember the key's result first (a crash before the ack redelivers, and the key says done), then ack."""
        if msg.idem_key:
            self._call(self.kv["STRATUM_IDEMPOTENCY"].put(_key(msg.idem_key), result[:4000].encode()))
        if not self._cancelled(msg.id):
            self._put_result(msg.id, DONE, result)
        m = self._take(msg)
        if m is not None:
            self._call(m.ack())

    def nak(self, msg: Message, error: str, delay: float | None = None) -> bool:
        """Again after a delay, or dead when its attempts are spent."""
        m = self._take(msg)
        if msg.attempt >= msg.max_attempts or msg.attempt >= MAX_DELIVER:
            self._dead(msg, m, error)
            return False
        backoff = float(msg.spec.get("backoff", 5.0))
        if m is not None:
            self._call(m.nak(delay=retry_delay(backoff, msg.attempt) if delay is None else delay))
        self._put_result(msg.id, "ready", error=error)
        return True

    def term(self, msg: Message, error: str) -> None:
        """Dead now."""
        self._dead(msg, self._take(msg), error)

    def _dead(self, msg: Message, m: Any, error: str) -> None:
        body = {"id": msg.id, "role": msg.role, "task": msg.task, "spec": msg.spec, "error": error[:4000],
                "attempts": msg.attempt}
        self._call(self.js.publish(f"stratum.dead.{msg.role}", json.dumps(body).encode()))
        if m is not None:
            self._call(m.term())
        self._put_result(msg.id, DEAD, error=error)

    def done_result(self, idem_key: str) -> str | None:
        """The result remembered for `idem_key`, or None."""
        if not idem_key:
            return None
        try:
            return (self._call(self.kv["STRATUM_IDEMPOTENCY"].get(_key(idem_key))).value or b"").decode()
        except KeyNotFoundError:
            return None

    def release(self, msg: Message, delay: float) -> None:
        """Put a run back without spending an attempt (no agent was free): counted apart from deliveries."""
        m = self._take(msg)
        key = f"released.{msg.id}"
        self._call(self.kv["STRATUM_RESULTS"].put(key, str(self._released(msg.id) + 1).encode()))
        if m is not None:
            self._call(m.nak(delay=delay))
        self._put_result(msg.id, "ready")

    def _released(self, mid: str) -> int:
        try:
            return int((self._call(self.kv["STRATUM_RESULTS"].get(f"released.{mid}")).value or b"0").decode())
        except KeyNotFoundError:
            return 0

    def outcome(self, mid: str) -> tuple[str, str, str] | None:
        """(state, result, error) of a run, from the results bucket."""
        try:
            entry = self._call(self.kv["STRATUM_RESULTS"].get(mid))
        except KeyNotFoundError:
            return None
        data = json.loads(entry.value or b"{}")
        return str(data["state"]), str(data.get("result", "")), str(data.get("error", ""))

    def state(self, mid: str) -> str | None:
        """The run's state, or None."""
        found = self.outcome(mid)
        return found[0] if found else None

    def _put_result(self, mid: str, state: str, result: str = "", error: str = "") -> None:
        self._call(self.kv["STRATUM_RESULTS"].put(mid, json.dumps(
            {"state": state, "result": result[:4000], "error": error[:4000]}).encode()))

    # -- execution records of remote workers -------------------------------------------------------------------
    def publish_execution(self, record: Mapping[str, Any]) -> None:
        """Publish one execution record (worker side). The header Nats-Msg-Id = the execution id makes a copy
        published again within the duplicate window a no-op; the daemon's insert is idempotent beyond it."""
        data = encode_record(record)
        role = _SUBJECT_UNSAFE.sub("_", str(record.get("role") or "none"))
        self._call(self.js.publish(f"stratum.executions.{role}", data,
                                   headers={"Nats-Msg-Id": f"exec-{record['id']}"}))

    def fetch_executions(self, limit: int = 50, timeout: float = 1.0) -> list[tuple[bytes, Any]]:
        """Up to `limit` published records (daemon side) as (data, handle); settle each with
        `settle_execution` (an unsettled one is delivered again after the consumer's ack wait)."""
        with self._lock:
            if EXEC_DURABLE not in self._subs:
                config = ConsumerConfig(durable_name=EXEC_DURABLE, ack_wait=30.0, max_deliver=MAX_DELIVER,
                                        filter_subject="stratum.executions.>")
                self._subs[EXEC_DURABLE] = self._call(self.js.pull_subscribe(
                    "stratum.executions.>", durable=EXEC_DURABLE, config=config))
            sub = self._subs[EXEC_DURABLE]
        try:
            msgs = self._call(sub.fetch(limit, timeout=timeout), timeout + CALL_TIMEOUT)
        except nats.errors.TimeoutError:
            return []
        return [(bytes(m.data), m) for m in msgs]

    def settle_execution(self, handle: Any, keep: bool) -> None:
        """Ack a record (recorded, or a copy of one recorded), or term it (`keep` false: it cannot be read)."""
        self._call(handle.ack() if keep else handle.term())

    # -- approvals, cancel, the team ---------------------------------------------------------------------------
    def approve(self, mid: str) -> bool:
        """Publish a run held for approval."""
        try:
            entry = self._call(self.kv["STRATUM_APPROVALS"].get(mid))
        except KeyNotFoundError:
            return False
        self._call(self.kv["STRATUM_APPROVALS"].delete(mid))
        self._publish(json.loads(entry.value or b"{}"))
        return True

    def pending(self) -> list[dict[str, Any]]:
        """Runs held for approval, oldest first (from the approvals bucket)."""
        async def read() -> list[dict[str, Any]]:
            kv = self.kv["STRATUM_APPROVALS"]
            try:
                keys = await kv.keys()
            except NoKeysError:
                return []
            out = []
            for key in keys:
                try:
                    body = json.loads((await kv.get(key)).value or b"{}")
                except KeyNotFoundError:
                    continue                    # approved or rejected meanwhile
                out.append({k: body.get(k) for k in ("id", "role", "task", "trigger", "enqueued_at")})
            return sorted(out, key=lambda r: float(r.get("enqueued_at") or 0))
        return self._call(read())

    def reject(self, mid: str, reason: str = "rejected") -> bool:
        """Drop a run held for approval."""
        if not self._exists("STRATUM_APPROVALS", mid):
            return False
        self._call(self.kv["STRATUM_APPROVALS"].delete(mid))
        self._put_result(mid, CANCELLED, error=reason)
        return True

    def cancel(self, mid: str, reason: str = "cancelled") -> bool:
        """Mark a run cancelled: a worker that leases it drops it; one running it does not record it done."""
        found = self.outcome(mid)
        if found is None or found[0] in (DONE, DEAD, CANCELLED):
            return False
        self._put_result(mid, CANCELLED, error=reason)
        return True

    def put_team(self, text: str) -> None:
        """Share the declarations in force with remote workers."""
        self._call(self.kv["STRATUM_TEAM"].put("current", text.encode()))

    def get_team(self) -> str | None:
        """The declarations the daemon shared last, or None."""
        try:
            return (self._call(self.kv["STRATUM_TEAM"].get("current")).value or b"").decode()
        except KeyNotFoundError:
            return None

    def close(self) -> None:
        """Close the connection, end the loop's tasks, stop and close the loop."""
        nc = getattr(self, "nc", None)
        if nc is not None:
            try:
                self._call(nc.close(), 10)
            except Exception:  # noqa: BLE001 closing: a broken connection is already closed enough
                pass
        try:
            self._call(self._cancel_tasks(), 10)
        except Exception:  # noqa: BLE001 closing: nothing left to cancel
            pass
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        if not self._loop.is_running():
            self._loop.close()

    async def _cancel_tasks(self) -> None:
        me = asyncio.current_task()
        tasks = [t for t in asyncio.all_tasks() if t is not me]
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
