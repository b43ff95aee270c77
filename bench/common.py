"""Helpers every benchmark shares: git repos in temp dirs, generated infra files, a `stratumd` child process
with its JSON log read on a thread, /proc sampling, percentiles, tables and the results file.

Benchmarks measure and report; nothing here asserts a timing.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

BENCH_DIR = Path(__file__).resolve().parent
PROJECT_DIR = BENCH_DIR.parent
RESULTS_DIR = BENCH_DIR / "results"
BIN_DIR = Path(sys.executable).parent          # the venv's bin: stratumd, stratum, ansible-playbook
CLK_TCK = os.sysconf("SC_CLK_TCK")

# A user's install has its bytecode compiled; a PYTHONDONTWRITEBYTECODE inherited from a dev shell would make
# every `stratum`/`stratumd` the benchmarks start compile the whole project from source (~1 s here).
os.environ.pop("PYTHONDONTWRITEBYTECODE", None)

GIT_ENV = {
    "GIT_AUTHOR_NAME": "Bench", "GIT_AUTHOR_EMAIL": "bench@example.com",
    "GIT_COMMITTER_NAME": "Bench", "GIT_COMMITTER_EMAIL": "bench@example.com",
    "GIT_CONFIG_NOSYSTEM": "1", "GIT_TERMINAL_PROMPT": "0",
}


def tool(name: str) -> str:
    """The path of a console script of the venv running this benchmark (falls back to PATH)."""
    candidate = BIN_DIR / name
    if candidate.exists():
        return str(candidate)
    found = shutil.which(name)
    if found is None:
        raise SystemExit(f"bench: `{name}` not found in {BIN_DIR} or on PATH; run with the project's venv python")
    return found


# git -------------------------------------------------------------------------------------------------
def git(cwd: Path, *args: str) -> str:
    """Run git in `cwd` with a fixed identity and no user/system config; returns stdout."""
    env = {**os.environ, **GIT_ENV, "HOME": str(cwd)}
    proc = subprocess.run(["git", *args], cwd=cwd, env=env, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"git {' '.join(args)} in {cwd} failed: {proc.stderr.strip()}")
    return proc.stdout.strip()


@dataclass
class Repo:
    """A bare repository (what the daemon watches) and a work clone that commits and pushes to it."""

    bare: Path
    work: Path

    @classmethod
    def create(cls, base: Path) -> Repo:
        bare, work = base / "origin.git", base / "work"
        bare.mkdir(parents=True)
        git(bare, "init", "-q", "--bare", "-b", "main")
        # No automatic gc inside receive-pack: a repack in the middle of a timed push would measure git.
        git(bare, "config", "gc.auto", "0")
        work.mkdir(parents=True)
        git(work, "init", "-q", "-b", "main")
        git(work, "config", "gc.auto", "0")
        git(work, "remote", "add", "origin", str(bare))
        return cls(bare, work)

    def write(self, files: Mapping[str, str]) -> None:
        """Write files relative to the work clone."""
        for rel, text in files.items():
            target = self.work / rel
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(text)

    def commit(self, message: str) -> str:
        """Commit everything in the work clone; returns the commit id."""
        git(self.work, "add", "-A")
        git(self.work, "commit", "-q", "-m", message)
        return git(self.work, "rev-parse", "HEAD")

    def push(self) -> tuple[float, float]:
        """Push main; returns (wall time just before `git push` starts, wall time just after it returns)."""
        env = {**os.environ, **GIT_ENV, "HOME": str(self.work)}
        before = time.time()
        proc = subprocess.run(["git", "push", "-q", "origin", "main"], cwd=self.work, env=env,
                              capture_output=True, text=True, check=False)
        after = time.time()
        if proc.returncode != 0:
            raise RuntimeError(f"git push failed: {proc.stderr.strip()}")
        return before, after


# generated infra ----------------------------------------------------------------------------------------
def nickel_string(text: str) -> str:
    """A Nickel string literal (JSON escapes are valid Nickel; `%` is escaped against interpolation)."""
    return json.dumps(text).replace("%{", "\\%{")


@dataclass(frozen=True, slots=True)
class FileResource:
    """One generated `file` resource."""

    id: str
    path: str
    content: str
    mode: str = "0644"


def infra_ncl(resources: Sequence[FileResource]) -> str:
    """An `infra/*.ncl` file holding `resources`."""
    lines = ["{", "  resources = {"]
    for r in resources:
        lines.append(f"    {r.id} = {{ kind = 'file, path = {nickel_string(r.path)}, "
                     f"content = {nickel_string(r.content)}, mode = {nickel_string(r.mode)} }},")
    lines += ["  },", "}", ""]
    return "\n".join(lines)


@dataclass
class InfraLayout:
    """Generated resources grouped by infra file: `files[rel] = [resources]`."""

    files: dict[str, list[FileResource]] = field(default_factory=dict)

    @classmethod
    def generate(cls, n_files: int, per_file: int, *, tag: str = "v0") -> InfraLayout:
        """`n_files` files of `per_file` resources; resource (f, r) writes `bench/fFFF/rRRRR.conf`."""
        layout = cls()
        for f in range(n_files):
            rel = f"infra/bench/f{f:03d}.ncl"
            layout.files[rel] = [
                FileResource(f"f{f:03d}-r{r:04d}", f"bench/f{f:03d}/r{r:04d}.conf", content_for(f, r, tag))
                for r in range(per_file)]
        return layout

    @property
    def count(self) -> int:
        """Number of resources."""
        return sum(len(v) for v in self.files.values())

    def rendered(self) -> dict[str, str]:
        """Every infra file's text."""
        return {rel: infra_ncl(res) for rel, res in self.files.items()}

    def set_content(self, rel: str, index: int, content: str) -> FileResource:
        """Change one resource's content; returns it (re-render the file with `rendered_one`)."""
        old = self.files[rel][index]
        new = FileResource(old.id, old.path, content, old.mode)
        self.files[rel][index] = new
        return new

    def rendered_one(self, rel: str) -> str:
        """One infra file's text."""
        return infra_ncl(self.files[rel])


def content_for(f: int, r: int, tag: str) -> str:
    """A small config-file body for resource (f, r)."""
    return f"# managed by stratum ({tag})\nname = \"f{f:03d}-r{r:04d}\"\nport = {8000 + r}\nworkers = {1 + f % 8}\n"


def plain_files(n: int, *, size: int = 400) -> dict[str, str]:
    """`n` non-infra files (docs and scripts) spread over 50 directories, about `size` bytes each."""
    body = ("Lorem ipsum dolor sit amet, consectetur adipiscing elit. " * (size // 56 + 1))[:size]
    return {f"docs/d{i % 50:02d}/note-{i:05d}.md": f"# Note {i}\n\n{body}\n" for i in range(n)}


# the daemon ------------------------------------------------------------------------------------------
class DaemonProcess:
    """A real `stratumd` in the foreground; its JSON log lines are collected (with our receive time) on a
    thread. Use as a context manager so it is always stopped."""

    def __init__(self, repo: Path, data_dir: Path, root: Path, *extra: str) -> None:
        self.argv = [tool("stratumd"), "--repo", str(repo), "--data-dir", str(data_dir), "--root", str(root),
                     "--log-format", "json", *extra]
        self.data_dir = data_dir
        self.events: list[dict[str, Any]] = []
        self.stray: list[str] = []
        self._cond = threading.Condition()
        self.proc: subprocess.Popen[str] | None = None
        self._stderr_path = data_dir.parent / f"{data_dir.name}.stderr"

    def __enter__(self) -> DaemonProcess:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def start(self) -> None:
        """Start the daemon and the log reader."""
        self.data_dir.mkdir(parents=True, exist_ok=True)
        stderr = self._stderr_path.open("w")
        self.proc = subprocess.Popen(self.argv, stdout=subprocess.PIPE, stderr=stderr, text=True, bufsize=1,
                                     cwd=self.data_dir.parent, start_new_session=True)
        stderr.close()
        threading.Thread(target=self._read, name="stratumd-log", daemon=True).start()

    def _read(self) -> None:
        assert self.proc is not None and self.proc.stdout is not None
        for line in self.proc.stdout:
            received = time.time()
            try:
                event = json.loads(line)
            except json.JSONDecodeError:
                self.stray.append(line.rstrip())
                continue
            event["_received"] = received
            with self._cond:
                self.events.append(event)
                self._cond.notify_all()

    def wait_for(self, predicate: Callable[[dict[str, Any]], bool], timeout: float, start: int = 0,
                 ) -> dict[str, Any]:
        """The first log event from position `start` matching `predicate`; raises TimeoutError."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                for event in self.events[start:]:
                    if predicate(event):
                        return event
                remaining = deadline - time.monotonic()
                if remaining <= 0 or (self.proc is not None and self.proc.poll() is not None):
                    raise TimeoutError(f"no matching daemon event within {timeout:g} s; "
                                       f"stderr: {self.stderr_tail()}")
                self._cond.wait(min(remaining, 0.5))

    def wait_run(self, revision: str, timeout: float, start: int = 0) -> dict[str, Any]:
        """The `run` event of `revision` (full or abbreviated id)."""
        return self.wait_for(lambda e: e.get("event") == "run" and revision.startswith(str(e.get("revision"))),
                             timeout, start)

    def stderr_tail(self, n: int = 2000) -> str:
        """The end of the daemon's stderr."""
        try:
            return self._stderr_path.read_text()[-n:]
        except OSError:
            return ""

    def stop(self, timeout: float = 15.0) -> None:
        """SIGTERM, then SIGKILL of the whole process group if it does not stop in time."""
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(5)


def read_index(data_dir: Path, sql: str, params: Sequence[Any] = ()) -> list[dict[str, Any]]:
    """Query a stopped daemon's DuckDB index read-only (the daemon is its only writer while it runs)."""
    import duckdb

    con = duckdb.connect(str(data_dir / "index.duckdb"), read_only=True)
    try:
        cur = con.execute(sql, list(params))
        names = [d[0] for d in cur.description]
        return [dict(zip(names, row, strict=True)) for row in cur.fetchall()]
    finally:
        con.close()


def cli_json(*args: str, timeout: float = 120) -> Any:
    """Run `stratum ARGS` and decode its JSON stdout."""
    proc = subprocess.run([tool("stratum"), *args], capture_output=True, text=True, timeout=timeout, check=False)
    if proc.returncode not in (0, 1):
        raise RuntimeError(f"stratum {' '.join(args)} exited {proc.returncode}: {proc.stderr[-2000:]}")
    return json.loads(proc.stdout)


# /proc -----------------------------------------------------------------------------------------------
def daemon_modules(data_dir: Path) -> list[str]:
    """The module names a running daemon has imported (its control socket's `modules` operation)."""
    import socket as socket_

    with socket_.socket(socket_.AF_UNIX, socket_.SOCK_STREAM) as sock:
        sock.settimeout(30)
        sock.connect(str(data_dir / "stratumd.sock"))
        sock.sendall(b'{"op": "modules"}\n')
        data = b""
        while not data.endswith(b"\n"):
            chunk = sock.recv(65536)
            if not chunk:
                break
            data += chunk
    reply = json.loads(data)
    return list(reply.get("modules", []))


def process_tree(pid: int) -> list[int]:
    """`pid` and all its live descendants (from /proc/PID/task/TID/children)."""
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        try:
            for task in os.listdir(f"/proc/{p}/task"):
                with open(f"/proc/{p}/task/{task}/children") as fh:
                    todo.extend(int(c) for c in fh.read().split())
        except OSError:
            continue
    return out


def status_fields(pid: int) -> dict[str, str]:
    """/proc/PID/status as a dict ({} when the process is gone)."""
    try:
        with open(f"/proc/{pid}/status") as fh:
            return {k: v.strip() for k, _, v in (ln.partition(":") for ln in fh)}
    except OSError:
        return {}


def rss_kb(pid: int) -> int:
    """VmRSS in KiB (0 when gone)."""
    value = status_fields(pid).get("VmRSS", "0 kB")
    return int(value.split()[0])


def cpu_ticks(pid: int) -> tuple[int, int]:
    """(utime+stime, cutime+cstime) in clock ticks; the second counts children already reaped."""
    try:
        with open(f"/proc/{pid}/stat") as fh:
            text = fh.read()
    except OSError:
        return 0, 0
    fields = text.rpartition(")")[2].split()   # the command name may hold spaces; fields from 3 on
    utime, stime, cutime, cstime = (int(fields[i]) for i in (11, 12, 13, 14))
    return utime + stime, cutime + cstime


def context_switches(pid: int) -> int:
    """Voluntary + involuntary context switches over all threads of `pid` (wakeups: a busy poll shows)."""
    total = 0
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return 0
    for tid in tasks:
        st = _task_status(pid, tid)
        total += int(st.get("voluntary_ctxt_switches", 0)) + int(st.get("nonvoluntary_ctxt_switches", 0))
    return total


def _task_status(pid: int, tid: str) -> dict[str, str]:
    try:
        with open(f"/proc/{pid}/task/{tid}/status") as fh:
            return {k: v.strip() for k, _, v in (ln.partition(":") for ln in fh)}
    except OSError:
        return {}


def cmdline(pid: int) -> str:
    """The command line of `pid` (short)."""
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as fh:
            return fh.read().replace(b"\0", b" ").decode(errors="replace").strip()[:120]
    except OSError:
        return ""


# statistics and output --------------------------------------------------------------------------------
def percentile(values: Sequence[float], p: float) -> float:
    """The p-th percentile (0-100) with linear interpolation between closest ranks (numpy's default)."""
    if not values:
        return float("nan")
    xs = sorted(values)
    k = (len(xs) - 1) * p / 100
    lo, hi = int(k), min(int(k) + 1, len(xs) - 1)
    return xs[lo] + (xs[hi] - xs[lo]) * (k - lo)


def summary(values: Sequence[float]) -> dict[str, float]:
    """min, p50, p90, p99, max, mean and count of a sample."""
    if not values:
        return {"n": 0}
    return {"n": len(values), "min": min(values), "p50": percentile(values, 50), "p90": percentile(values, 90),
            "p99": percentile(values, 99), "max": max(values), "mean": sum(values) / len(values)}


def print_table(title: str, headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
    """A plain aligned text table on stdout."""
    cells = [[_cell(c) for c in row] for row in rows]
    widths = [max(len(h), *(len(r[i]) for r in cells)) if cells else len(h) for i, h in enumerate(headers)]
    print(f"\n{title}")
    print("  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True)))
    print("  ".join("-" * w for w in widths))
    for row in cells:
        print("  ".join(c.rjust(w) if _numeric(c) else c.ljust(w) for c, w in zip(row, widths, strict=True)))
    sys.stdout.flush()


def _cell(value: Any) -> str:
    if isinstance(value, float):
        if value != value:   # NaN
            return "-"
        return f"{value:,.1f}" if abs(value) >= 10 else f"{value:,.2f}"
    return str(value)


def _numeric(text: str) -> bool:
    return text.replace(",", "").replace(".", "").replace("-", "").replace("x", "").isdigit()


def verdict(value: float, target: float, *, lower_is_better: bool = True) -> str:
    """`met` / `MISSED` against a target (for the tables; never an assertion)."""
    ok = value < target if lower_is_better else value >= target
    return "met" if ok else "MISSED"


def environment() -> dict[str, Any]:
    """Facts about the machine and the code measured."""
    try:
        head = git(PROJECT_DIR, "rev-parse", "HEAD")
        # The working tree measured: HEAD plus a hash of the uncommitted diff of tracked files.
        diff = git(PROJECT_DIR, "diff", "HEAD")
        dirty = hashlib.sha256(diff.encode()).hexdigest()[:12] if diff else False
    except RuntimeError:
        head, dirty = "unknown", False
    return {"when": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"), "python": platform.python_version(),
            "kernel": platform.release(), "cpus": os.cpu_count(), "loadavg_at_end": os.getloadavg(),
            "commit": head, "uncommitted_diff_sha256": dirty, "argv": sys.argv}


def write_result(name: str, data: Mapping[str, Any]) -> Path:
    """Write `bench/results/<name>.json` (with environment facts) and return its path."""
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    path = RESULTS_DIR / f"{name}.json"
    path.write_text(json.dumps({"benchmark": name, "environment": environment(), **data}, indent=2,
                               default=str) + "\n")
    print(f"\nwrote {path.relative_to(PROJECT_DIR)}")
    return path


@contextmanager
def workspace(prefix: str, keep: bool = False) -> Iterator[Path]:
    """A temp directory removed afterwards unless `keep`."""
    path = Path(tempfile.mkdtemp(prefix=f"stratum-bench-{prefix}-"))
    try:
        yield path
    finally:
        if keep:
            print(f"kept {path}")
        else:
            shutil.rmtree(path, ignore_errors=True)


def ms(seconds: float) -> float:
    """Seconds to milliseconds."""
    return seconds * 1000.0
