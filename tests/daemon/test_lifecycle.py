"""The systemd notify protocol: Notifier against a real datagram socket, then stratumd under a fake service manager.

The receiver is what systemd is to the daemon: a unix datagram socket named by $NOTIFY_SOCKET, here bound in a
short temp dir (socket paths are limited to 107 bytes) or in the abstract namespace. No timing asserts: every
wait is bounded and passes as soon as the message arrives.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from daemon.service.lifecycle import Notifier, Shutdown
from tests.fixtures import WorkRepo, bare_repo, infra, resource
from tests.proc import DaemonProc, wait_for

Message = dict[str, str]


class NotifyReceiver:
    """A real sd_notify receiver: a unix datagram socket drained by a thread into parsed messages."""

    def __init__(self, address: str) -> None:
        self.address = address
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind("\0" + address[1:] if address.startswith("@") else address)
        self.sock.settimeout(0.05)
        self.messages: list[Message] = []
        self._cond = threading.Condition()
        self._closed = threading.Event()
        self._thread = threading.Thread(target=self._drain, daemon=True)
        self._thread.start()

    def _drain(self) -> None:
        while not self._closed.is_set():
            try:
                data = self.sock.recv(65536)
            except TimeoutError:
                continue
            except OSError:
                return
            message = dict(line.partition("=")[::2] for line in data.decode().splitlines())
            with self._cond:
                self.messages.append(message)
                self._cond.notify_all()

    def index(self, predicate: Callable[[Message], bool], after: int = 0, timeout: float = 30.0) -> int:
        """The position of the first message at or after `after` that matches; fails after `timeout` seconds."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                for i in range(after, len(self.messages)):
                    if predicate(self.messages[i]):
                        return i
                left = deadline - time.monotonic()
                if left <= 0:
                    seen = self.messages[after:]
                    pets = sum(m == {"WATCHDOG": "1"} for m in seen)
                    others = [m for m in seen if m != {"WATCHDOG": "1"}]
                    raise AssertionError(f"no matching notification within {timeout} s; got {others} "
                                         f"and {pets} x WATCHDOG=1")
                self._cond.wait(left)

    def next(self, after: int, timeout: float = 10.0) -> Message:
        """The message at position `after`, waiting for it."""
        return self.messages[self.index(lambda m: True, after, timeout)]

    def count(self) -> int:
        """How many messages have arrived so far."""
        with self._cond:
            return len(self.messages)

    def close(self) -> None:
        """Stop draining and close the socket (a daemon still sending then gets ECONNREFUSED)."""
        self._closed.set()
        self._thread.join(5)
        self.sock.close()


@pytest.fixture
def sock_dir() -> Iterator[Path]:
    """A temp dir with a short path (pytest's tmp_path can exceed the 107-byte limit of a socket path)."""
    path = Path(tempfile.mkdtemp(prefix="sdn-", dir="/tmp"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def receiver(sock_dir: Path) -> Iterator[NotifyReceiver]:
    """A receiver bound to a socket file."""
    rx = NotifyReceiver(str(sock_dir / "notify"))
    yield rx
    rx.close()


def _notifier(rx: NotifyReceiver, **env: str) -> Notifier:
    return Notifier({"NOTIFY_SOCKET": rx.address, **env})


def _monotonic_usec() -> int:
    return time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000


# -- payloads -----------------------------------------------------------------------------------------------
def test_ready_sends_ready_and_status_in_one_datagram(receiver: NotifyReceiver) -> None:
    """READY=1 and STATUS travel together, as newline-separated assignments."""
    assert _notifier(receiver).ready("applied 0123456789ab")
    assert receiver.next(0) == {"READY": "1", "STATUS": "applied 0123456789ab"}


def test_each_notification_has_its_own_keys(receiver: NotifyReceiver) -> None:
    """status, stopping and extend_timeout send what sd_notify(3) names; the timeout is in microseconds."""
    n = _notifier(receiver)
    assert n.status("no revision applied yet") and n.stopping() and n.extend_timeout(90)
    assert receiver.next(0) == {"STATUS": "no revision applied yet"}
    assert receiver.next(1)["STOPPING"] == "1"
    assert receiver.next(2) == {"EXTEND_TIMEOUT_USEC": "90000000"}


def test_reloading_carries_the_monotonic_clock_in_microseconds(receiver: NotifyReceiver) -> None:
    """RELOADING=1 comes with MONOTONIC_USEC read from CLOCK_MONOTONIC at the time of sending."""
    before = _monotonic_usec()
    assert _notifier(receiver).reloading()
    after = _monotonic_usec()
    message = receiver.next(0)
    assert message["RELOADING"] == "1"
    assert before <= int(message["MONOTONIC_USEC"]) <= after


def test_ready_can_follow_a_reload(receiver: NotifyReceiver) -> None:
    """A reload ends with READY=1 again, with the current status."""
    n = _notifier(receiver)
    assert n.ready("applied aaaaaaaaaaaa") and n.reloading() and n.ready("applied bbbbbbbbbbbb")
    assert receiver.next(0)["READY"] == "1"
    assert receiver.next(1)["RELOADING"] == "1"
    assert receiver.next(2) == {"READY": "1", "STATUS": "applied bbbbbbbbbbbb"}


def test_a_newline_in_a_value_cannot_inject_an_assignment(receiver: NotifyReceiver) -> None:
    """STATUS text with a newline stays one STATUS line (it must not smuggle in READY=1)."""
    _notifier(receiver).status("bad\nREADY=1")
    assert receiver.next(0) == {"STATUS": "bad READY=1"}


def test_abstract_socket_address(sock_dir: Path) -> None:
    """An '@' address names a socket in the abstract namespace."""
    rx = NotifyReceiver(f"@stratum-test-{uuid.uuid4().hex}")
    try:
        assert _notifier(rx).ready("ok")
        assert rx.next(0) == {"READY": "1", "STATUS": "ok"}
    finally:
        rx.close()


# -- no service manager -------------------------------------------------------------------------------------
def test_without_notify_socket_nothing_is_sent() -> None:
    """No $NOTIFY_SOCKET (not under systemd): every call returns False and the watchdog is off."""
    n = Notifier({})
    assert not n.send(READY="1")
    assert not n.ready("x") and not n.reloading() and not n.watchdog() and not n.stopping()
    assert n.watchdog_interval == 0.0


def test_a_relative_socket_path_is_refused() -> None:
    """sd_notify accepts only absolute paths and '@' names; anything else is not sent."""
    assert not Notifier({"NOTIFY_SOCKET": "relative/notify"}).ready("x")


def test_a_socket_that_is_gone_returns_false_without_raising(sock_dir: Path) -> None:
    """A socket whose receiver closed (stale file) or whose file was removed: False, no exception."""
    rx = NotifyReceiver(str(sock_dir / "gone"))
    n = _notifier(rx)
    rx.close()
    assert not n.ready("x")                   # the file remains: ECONNREFUSED
    (sock_dir / "gone").unlink()
    assert not n.ready("x")                   # no file: ENOENT


def test_a_full_receiver_queue_does_not_hang_the_sender(sock_dir: Path) -> None:
    """A receiver that never reads: sends give up after the timeout instead of blocking the main loop."""
    path = sock_dir / "stuck"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as stuck:
        stuck.bind(str(path))
        n = Notifier({"NOTIFY_SOCKET": str(path), "WATCHDOG_USEC": "1000000"}, timeout=0.05)
        assert n.watchdog()
        # net.unix.max_dgram_qlen (10 to 512) datagrams fill the queue; the next send times out.
        assert not all(n.watchdog() for _ in range(5000))


# -- the watchdog -------------------------------------------------------------------------------------------
def test_watchdog_interval_is_half_of_watchdog_usec(receiver: NotifyReceiver) -> None:
    """WATCHDOG_USEC=400000 asks for a pet at least every 0.2 s; WATCHDOG=1 is then sent."""
    n = _notifier(receiver, WATCHDOG_USEC="400000")
    assert n.watchdog_enabled and n.watchdog_interval == pytest.approx(0.2)
    assert n.watchdog()
    assert receiver.next(0) == {"WATCHDOG": "1"}


def test_watchdog_pid_of_this_process_enables_it(receiver: NotifyReceiver) -> None:
    """WATCHDOG_PID naming this process: the watchdog is ours."""
    n = _notifier(receiver, WATCHDOG_USEC="400000", WATCHDOG_PID=str(os.getpid()))
    assert n.watchdog_enabled and n.watchdog()
    assert receiver.next(0) == {"WATCHDOG": "1"}


@pytest.mark.parametrize("env", [
    {"WATCHDOG_USEC": "400000", "WATCHDOG_PID": "1"},         # another process's watchdog (inherited)
    {"WATCHDOG_USEC": "400000", "WATCHDOG_PID": "not-a-pid"},
    {"WATCHDOG_USEC": "0"},
    {"WATCHDOG_USEC": "soon"},
    {},
])
def test_no_watchdog_when_it_is_not_ours(receiver: NotifyReceiver, env: dict[str, str]) -> None:
    """A WATCHDOG_PID of another process, or no valid WATCHDOG_USEC: no WATCHDOG=1, interval 0."""
    n = _notifier(receiver, **env)
    assert not n.watchdog_enabled and n.watchdog_interval == 0.0
    assert not n.watchdog()
    n.status("marker")                        # datagrams arrive in order: the marker comes first iff none was sent
    assert receiver.next(0) == {"STATUS": "marker"}


def test_keepalive_pets_the_watchdog_while_a_bounded_call_runs(receiver: NotifyReceiver) -> None:
    """Inside keepalive() a thread sends WATCHDOG=1 every interval; once ready, no timeout extension is asked."""
    n = _notifier(receiver, WATCHDOG_USEC="100000")
    n.ready("ok")
    with n.keepalive(30):
        receiver.index(lambda m: m == {"WATCHDOG": "1"}, 1)
        receiver.index(lambda m: m == {"WATCHDOG": "1"}, 2)
    assert all("EXTEND_TIMEOUT_USEC" not in m for m in receiver.messages)


def test_keepalive_stops_petting_at_its_bound(receiver: NotifyReceiver) -> None:
    """A call still running past the bound gets no more pets, so a hang still trips the watchdog."""
    n = _notifier(receiver, WATCHDOG_USEC="20000")
    n.ready("ok")
    with n.keepalive(0):
        time.sleep(0.1)                       # ten watchdog intervals, all past the bound
    n.status("marker")
    assert receiver.next(1) == {"STATUS": "marker"}


def test_keepalive_while_stopping_extends_the_stop_timeout(receiver: NotifyReceiver) -> None:
    """Once STOPPING=1 was sent, keepalive(90) asks systemd for 90 s more before TimeoutStopSec= fires."""
    n = _notifier(receiver)
    n.stopping()
    with n.keepalive(90):
        pass
    assert receiver.next(1) == {"EXTEND_TIMEOUT_USEC": "90000000"}


# -- signals ------------------------------------------------------------------------------------------------
def test_sighup_requests_one_reload_and_wakes_the_loop() -> None:
    """SIGHUP sets the reload request and rings the wake-up; take_reload() consumes it once."""
    woken: list[int] = []
    sd = Shutdown()
    old = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)}
    try:
        sd.install(lambda: woken.append(1))
        os.kill(os.getpid(), signal.SIGHUP)
        wait_for(lambda: woken, 5)
        assert sd.take_reload() and not sd.take_reload() and not sd.stopping
        os.kill(os.getpid(), signal.SIGTERM)
        wait_for(lambda: sd.stopping, 5)
    finally:
        for s, handler in old.items():
            signal.signal(s, handler)


def test_the_first_sigterm_runs_on_stop_once() -> None:
    """on_stop (Notifier.stopping in the daemon) runs at the first SIGTERM, not again at a second one."""
    stops: list[int] = []
    wakes: list[int] = []
    sd = Shutdown()
    old = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)}
    try:
        sd.install(lambda: wakes.append(1), on_stop=lambda: stops.append(1))
        os.kill(os.getpid(), signal.SIGTERM)
        wait_for(lambda: len(wakes) == 1, 5)
        os.kill(os.getpid(), signal.SIGTERM)
        wait_for(lambda: len(wakes) == 2, 5)
        assert stops == [1] and sd.stopping
    finally:
        for s, handler in old.items():
            signal.signal(s, handler)


# -- stratumd under a fake service manager ------------------------------------------------------------------
SETTINGS = "parallelism = 2\n"


def _site(tag: str) -> dict[str, str]:
    return {"infra/site.ncl": infra(resource("page", "file", path="site/index.txt", content=f"{tag}\n"))}


class Service:
    """A bare repo, a work clone, a settings file and a receiver: what a unit with Type=notify gives stratumd."""

    def __init__(self, tmp: Path, rx: NotifyReceiver) -> None:
        self.tmp = tmp
        self.rx = rx
        self.remote = bare_repo(tmp / "remote.git")
        self.work = WorkRepo(tmp / "work", remote=self.remote)
        self.config = tmp / "stratumd.toml"
        self.config.write_text(SETTINGS)
        self.first = self.work.commit(_site("v1"))
        self.work.push()

    def start(self) -> DaemonProc:
        """Start stratumd with NOTIFY_SOCKET and a 0.4 s watchdog."""
        return DaemonProc(str(self.remote), self.tmp / "data", self.tmp / "root", "--config", str(self.config),
                          env={"NOTIFY_SOCKET": self.rx.address, "WATCHDOG_USEC": "400000"})

    def push(self, tag: str) -> str:
        """Commit and push a new version of the site; returns the commit id."""
        rev = self.work.commit(_site(tag))
        self.work.push()
        return rev

    def wait_applied(self, rev: str, after: int = 0) -> int:
        """The position of the STATUS that reports `rev` applied."""
        return self.rx.index(lambda m: m.get("STATUS") == f"applied {rev[:12]}", after)

    def sighup(self, d: DaemonProc) -> tuple[Message, Message]:
        """SIGHUP the daemon; returns its RELOADING=1 notification and the READY=1 that follows it."""
        mark = self.rx.count()
        d.proc.send_signal(signal.SIGHUP)
        reloading = self.rx.index(lambda m: m.get("RELOADING") == "1", mark)
        ready = self.rx.index(lambda m: m.get("READY") == "1", reloading + 1)
        return self.rx.messages[reloading], self.rx.messages[ready]


def _logged(d: DaemonProc, event: str) -> list[dict[str, object]]:
    return [e for e in d.log_events() if e.get("event") == event]


@pytest.fixture
def service(tmp_path: Path, receiver: NotifyReceiver) -> Service:
    """The repo, settings and receiver of one daemon."""
    return Service(tmp_path, receiver)


@pytest.mark.slow
def test_ready_status_and_watchdog(service: Service) -> None:
    """READY=1 with a STATUS after start, STATUS `applied <rev>` after each run, and WATCHDOG=1 again and again."""
    d = service.start()
    try:
        ready = service.rx.index(lambda m: m.get("READY") == "1")
        assert service.rx.messages[ready]["STATUS"]
        service.wait_applied(service.first)
        second = service.push("v2")
        service.wait_applied(second)
        assert d.wait_run(second)["status"] == "succeeded"
        pets = 0
        for _ in range(3):
            pets = service.rx.index(lambda m: m.get("WATCHDOG") == "1", pets) + 1
    finally:
        assert d.stop() == 0


@pytest.mark.slow
def test_sighup_with_valid_settings_reloads(service: Service) -> None:
    """SIGHUP: RELOADING=1 with MONOTONIC_USEC, then READY=1; the log names the settings that changed."""
    d = service.start()
    try:
        service.wait_applied(service.first)
        service.config.write_text("parallelism = 3\n")
        reloading, ready = service.sighup(d)
        assert 0 < int(reloading["MONOTONIC_USEC"]) <= _monotonic_usec()
        assert ready["STATUS"] == f"applied {service.first[:12]}"
        lines = wait_for(lambda: _logged(d, "settings_reloaded"), 10)
        assert "parallelism" in json.dumps(lines[-1])
        assert d.proc.poll() is None
    finally:
        assert d.stop() == 0


@pytest.mark.slow
def test_sighup_with_broken_settings_keeps_the_old_ones(service: Service) -> None:
    """Broken TOML: RELOADING=1 then READY=1, reload_failed names the file, and the daemon keeps applying."""
    d = service.start()
    try:
        service.wait_applied(service.first)
        service.config.write_text("parallelism = = 3\n[unclosed\n")
        reloading, ready = service.sighup(d)
        assert reloading["RELOADING"] == "1" and ready["READY"] == "1"
        lines = wait_for(lambda: _logged(d, "reload_failed"), 10)
        assert str(service.config) in json.dumps(lines[-1])
        assert "reload_failed" in {e["kind"] for e in d.call("events")["events"]}
        assert d.proc.poll() is None
        mark = service.rx.count()
        third = service.push("v3")
        assert d.wait_run(third)["status"] == "succeeded"
        service.wait_applied(third, mark)
        assert (service.tmp / "root/site/index.txt").read_text() == "v3\n"
    finally:
        assert d.stop() == 0


@pytest.mark.slow
def test_sigterm_mid_apply_finishes_the_action_and_exits_0(service: Service) -> None:
    """SIGTERM while a command runs: STOPPING=1, the command completes, and the exit code is 0."""
    d = service.start()
    try:
        service.wait_applied(service.first)
        service.work.commit({"infra/slow.ncl": infra(
            resource("slow", "command", run="touch started; sleep 1; touch finished"))})
        service.work.push()
        wait_for(lambda: (service.tmp / "root/started").exists(), 30)
        d.proc.send_signal(signal.SIGTERM)
        service.rx.index(lambda m: m.get("STOPPING") == "1")
    finally:
        code = d.stop()
    assert code == 0
    assert (service.tmp / "root/finished").exists()
