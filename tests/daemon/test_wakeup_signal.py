"""The daemon's loop wakes for a signal the kernel delivered to another thread.

A process-directed SIGTERM may be taken by any thread that does not block it. CPython then only marks the
signal pending; its handler (which rings the loop's Wakeup) runs when the main thread next executes Python
code. The loop used to wait on the Wakeup without a bound, so such a SIGTERM was never handled: `stratumd`
hung until killed (seen as `stop() == -9` in tests/daemon/test_startup.py under load).

Here the signal is sent to a helper thread with pthread_kill, the case the kernel produces by chance. The
helper rings the bell itself after a long safety delay, so the test ends either way. What it checks is which
ring arrived: the handler's (fixed) or the safety ring (the old unbounded wait).
"""

from __future__ import annotations

import signal
import threading
import time
from types import FrameType

from daemon.git.watch import Wakeup

SAFETY_S = 30.0     # far beyond the loop's signal slice (1 s): only an unbounded wait reaches it


def test_a_signal_taken_by_another_thread_still_wakes_the_loop() -> None:
    wake = Wakeup()
    done = threading.Event()

    def handler(signum: int, frame: FrameType | None) -> None:
        wake.ring("signal")           # what the daemon's SIGTERM handler does (lifecycle.Shutdown._stop)

    def helper() -> None:
        time.sleep(0.2)               # let the main thread block in wait() first (ordering only, not asserted)
        signal.pthread_kill(threading.get_ident(), signal.SIGUSR1)
        if not done.wait(SAFETY_S):
            wake.ring("safety")

    old = signal.signal(signal.SIGUSR1, handler)
    thread = threading.Thread(target=helper, daemon=True)
    try:
        thread.start()
        reasons = wake.wait(None)     # the main thread, as in Daemon.serve with no deadline at all
    finally:
        done.set()
        thread.join()
        signal.signal(signal.SIGUSR1, old)
    assert reasons == ["signal"]
