"""The Nickel worker hands back the heap of its last evaluation once quiet (daemon/nickel/worker.py)."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _anon_kb(pid: int) -> int:
    fields = dict(line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines())
    return int(fields["RssAnon"].split()[0])


def test_an_idle_worker_returns_the_memory_of_its_last_evaluation() -> None:
    """After a big evaluation and TRIM_AFTER_S of quiet, the worker's private memory falls by megabytes
    (before the change it stayed at the evaluation's peak until the worker exited)."""
    proc = subprocess.Popen([sys.executable, "-m", "daemon.nickel.worker", "1024", "60"], cwd=ROOT,
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert proc.stdin is not None and proc.stdout is not None
    try:
        src = "{ " + ", ".join(f'r{i} = {{ path = "/srv/f{i}", content = "v {i}", mode = "0644" }}'
                               for i in range(1000)) + " }"
        proc.stdin.write(json.dumps({"src": src, "paths": []}) + "\n")
        proc.stdin.flush()
        assert "ok" in json.loads(proc.stdout.readline())
        peak = _anon_kb(proc.pid)
        now = peak
        for _ in range(100):                                    # bounded: 10 s at most
            time.sleep(0.1)
            now = _anon_kb(proc.pid)
            if now < peak - 2048:
                break
        assert now < peak - 2048, f"RssAnon {peak} kB after the evaluation, still {now} kB once idle"
        # The worker still serves after trimming.
        proc.stdin.write(json.dumps({"src": "{ a = 1 }", "paths": []}) + "\n")
        proc.stdin.flush()
        assert json.loads(json.loads(proc.stdout.readline())["ok"]) == {"a": 1}
    finally:
        proc.kill()
        proc.wait()
        proc.stdin.close()
        proc.stdout.close()



def test_a_starting_worker_imports_neither_subprocess_nor_ctypes() -> None:
    """A worker's start is on the way of a cold plan (two start at once): the heap trim's module, which brings
    subprocess and ctypes (~20 ms of CPU a start), is imported after the first reply, not at start. The worker
    is started as the evaluator starts it (-S, its PYTHONPATH)."""
    from daemon.nickel.evaluator import _worker_path

    flags, path = _worker_path()
    probe = "import sys, daemon.nickel.worker; print(sorted({'subprocess', 'ctypes'} & set(sys.modules)))"
    out = subprocess.run([sys.executable, *flags, "-c", probe], capture_output=True, text=True, check=True,
                         cwd="/", env={"PYTHONPATH": path}, timeout=60)
    assert out.stdout.strip() == "[]"
