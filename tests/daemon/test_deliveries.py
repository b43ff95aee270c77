"""The webhook replay log: ids remembered per receiver, bounded by TTL and capacity, kept across restarts in a
0600 append-only file that compaction bounds, and recorded once however many threads race."""

from __future__ import annotations

import threading
from pathlib import Path

from daemon.git.deliveries import DeliveryLog

NOW = 1_700_000_000.0


def test_delivery_log_survives_a_restart(tmp_path: Path) -> None:
    """Ids recorded by one DeliveryLog are replays for a new one on the same file, which is mode 0600."""
    path = tmp_path / "deliveries"
    assert DeliveryLog(path).record("gh", "d-1")
    again = DeliveryLog(path)
    assert not again.record("gh", "d-1")
    assert again.record("gl", "d-1")                     # ids are per receiver
    assert path.stat().st_mode & 0o777 == 0o600


def test_delivery_log_forgets_after_ttl_and_capacity(tmp_path: Path) -> None:
    """Ids older than the TTL or beyond the capacity are forgotten, in memory and after a restart."""
    now = [NOW]
    path = tmp_path / "deliveries"
    log = DeliveryLog(path, capacity=2, ttl=60, clock=lambda: now[0])
    assert log.record("gh", "a") and log.record("gh", "b") and log.record("gh", "c")
    assert log.record("gh", "a")                         # evicted by capacity
    now[0] += 61
    assert DeliveryLog(path, ttl=60, clock=lambda: now[0]).record("gh", "c")
    assert log.record("gh", "b") and len(log) == 1


def test_delivery_log_file_is_compacted_and_tolerates_a_torn_line(tmp_path: Path) -> None:
    """The append-only file stays bounded by compaction, and a half-written last line is skipped on load."""
    path = tmp_path / "deliveries"
    log = DeliveryLog(path, capacity=10)
    for i in range(500):
        assert log.record("gh", f"id-{i}")
    assert len(path.read_text().splitlines()) < 200
    assert path.stat().st_mode & 0o777 == 0o600
    with path.open("a") as fh:
        fh.write('[1700000000.0, "gh", "id-')
    reloaded = DeliveryLog(path, capacity=10)
    assert not reloaded.record("gh", "id-499") and reloaded.record("gh", "id-0")


def test_delivery_log_records_an_id_once_across_threads() -> None:
    """Of many threads recording the same id at once, exactly one is told it is new."""
    log = DeliveryLog()
    results: list[bool] = []
    barrier = threading.Barrier(8)

    def record() -> None:
        barrier.wait()
        results.append(log.record("gh", "same"))

    threads = [threading.Thread(target=record) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(results) == [False] * 7 + [True]
