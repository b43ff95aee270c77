"""Evaluate Nickel from a commit: our contract library on the import path, many files per call, cached by blob.

1. Every `.ncl` file of the commit is scanned for imports (daemon/nickel/scan.py); an import that is not a
   plain relative path to a file of the same commit, or a file of the contract library, refuses the file.
2. The needed files are materialized into a work tree under the cache directory (only changed blobs written).
3. All requested files are evaluated in ONE `nickel.run` of a generated root expression that applies the
   caller's contract to each file; only when that fails is each file evaluated alone, to pin errors on files.
4. Results are cached by (contract, library version, the blob ids of the file and everything it imports).
Evaluation runs in a worker process with a deadline and a memory limit (daemon/nickel/worker.py).
"""

from __future__ import annotations

import concurrent.futures as cf
import functools
import hashlib
import importlib.util
import json
import os
import queue
import re
import select
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

import yaml

from daemon.nickel.cache import DiskCache
from daemon.nickel.scan import MAX_NESTING, NestingError, ScanError, data_nesting_error, scan_imports
from daemon.nickel.scratch import Scratch
from daemon.package_data import nickel_dir
from reconcilers import bounded_yaml
from reconcilers.base import Problem
from reconcilers.ports import Snapshot
from reconcilers.records import FileEntry
from reconcilers.workers import stop_worker

MAX_NICKEL_BYTES = 1024 * 1024
WORKER_IDLE_S = 60.0                                  # a worker with nothing to do for this long exits
EXTRA_WORKER_IDLE_S = 5.0                             # the same for the workers that only split big batches
_SPLIT_AT = 8                                         # files in a batch before it is split across workers
_SPLIT_BYTES = 32 * 1024                              # ... and bytes: less costs less than a second worker's start
# Files and bytes per Nickel run: a run's cost stays far from its deadline, yet runs are few. Every run pays
# ~45 ms of its own (py-nickel loads the standard library and the contracts again): 20,000 tiny files in runs
# of 256 paid 3.5 s of CPU for that alone, in runs of 1,024 under 1 s (bench/results/nickelfast_s21.md).
_CHUNK = 1024
_CHUNK_BYTES = 1024 * 1024
# A batch of at least this many bytes is cut into two runs per worker when the caller takes values as they come
# (`on_value`) and a core is left for it (runs_per_worker): each run costs ~40 ms of its own, and the caller's
# work on the first runs' values (~40 us a resource for infra) then overlaps the second runs.
_AHEAD_BYTES = 256 * 1024
PREFETCH_MAX_FILES = 256                              # files one prefetch evaluates in its single run
PREFETCH_TIMEOUT_S = 3.0                              # ... and its deadline (the files' own stays `timeout`)
_BUDGET_DEADLINES = 30                                # one evaluation's budget, in per-run deadlines
_LOCATION = re.compile(r"[┌─]+\s+(.+?):(\d+):(\d+)\s*$")
_IMPORTABLE = (".ncl", ".json", ".yaml", ".yml", ".toml", ".txt", ".md", ".tmpl")


# on_value(path, cache key, value): a value as soon as its Nickel run is back (Evaluator.evaluate).
OnValue = Callable[[str, str, Any], None]


@dataclass(frozen=True, slots=True)
class EvalResult:
    """Decoded values per evaluated path, and the problems of the paths that failed."""

    values: dict[str, Any]
    problems: tuple[Problem, ...]
    keys: dict[str, str] = field(default_factory=dict)   # path -> cache key (same key, same value)


def _library_version(lib: Path) -> str:
    h = hashlib.sha256()
    for p in sorted(lib.glob("*.ncl")):
        h.update(p.name.encode())
        h.update(p.read_bytes())
    return h.hexdigest()[:16]


def _engine_version() -> str:
    """Identifies the installed Nickel engine (py-nickel) without importing it: its files' names, sizes and
    modification times. An upgrade changes it, so values kept on disk by an older engine are not reused."""
    spec = importlib.util.find_spec("nickel")
    if spec is None or not spec.submodule_search_locations:
        return "none"
    h = hashlib.sha256()
    for location in spec.submodule_search_locations:
        for entry in sorted(os.scandir(location), key=lambda e: e.name):
            if entry.is_file():
                st = entry.stat()
                h.update(f"{entry.name}:{st.st_size}:{st.st_mtime_ns};".encode())
    return h.hexdigest()[:16]


def parse_error(text: str, workdir: Path, default_path: str) -> Problem:
    """Turn a Nickel error report into `path:line:col: message`, located in the user's file when possible."""
    lines = [ln.rstrip() for ln in text.splitlines()]
    message_parts: list[str] = []
    notes: list[str] = []
    locations: list[tuple[str, int, int]] = []
    in_header = True
    for ln in lines:
        stripped = ln.strip()
        if stripped.startswith("error:") and not message_parts:
            message_parts.append(stripped[len("error:"):].strip())
            continue
        m = _LOCATION.search(ln)
        if m:
            in_header = False
            locations.append((m.group(1), int(m.group(2)), int(m.group(3))))
            continue
        if stripped.startswith("= "):
            notes.append(stripped[2:])
            continue
        if in_header and message_parts and stripped:
            message_parts.append(stripped)
    work = str(workdir) + os.sep
    path, line, col = default_path, 0, 0
    for file, ln_no, col_no in locations:
        if file.startswith(work):
            path, line, col = file[len(work):], ln_no, col_no
            break
    else:
        for file, ln_no, col_no in locations:
            if not file.startswith(("<", "python", str(nickel_dir()))):
                path, line, col = file, ln_no, col_no
                break
    message = (": ".join(message_parts) or "evaluation failed").replace(work, "")
    if notes and notes[0].startswith(("Expected", "Have you", "Found")):
        message += f" ({notes[0]})"
    return Problem(message=message, path=path, line=line, col=col, reconciler="nickel")


def _decoded(reply: dict[str, str]) -> dict[str, Any]:
    """A worker reply with its JSON value decoded. A value nested deeper than Python's decoder recurses (a
    `let rec` can build one that no bracket in the source shows) is an error reply, not a RecursionError."""
    if "ok" not in reply:
        return reply
    try:
        return {"ok": json.loads(reply["ok"])}
    except RecursionError:
        return {"error": "error: the value is nested too deeply to be used (over Python's recursion limit)"}


def runs_per_worker(workers: int) -> int:
    """Runs per worker for a big batch whose values the caller takes as they come: two when a core is left for
    the caller besides the workers, so its work on the first runs' values runs beside the second runs. With a
    core per worker and none to spare (two cores, two workers) the caller's work would only take turns with
    the workers, and an extra run's own ~40 ms would be lost: one run each, and the caller still starts on
    the values of the run that is back first."""
    return 2 if (os.cpu_count() or 1) > workers else 1


def _ignore(_values: dict[str, Any]) -> None:
    """No one to tell (no `on_value`)."""


def split_chunks(paths: list[str], weights: Mapping[str, int], workers: int, runs_per_worker: int = 1,
                 ) -> list[list[str]]:
    """`paths` in runs of at most _CHUNK files and about _CHUNK_BYTES, cut where the bytes to evaluate
    (`weights`: a file's closure) are about equal, and at least one run per worker when the batch is big enough
    to share: one 50-file batch of 5,000 resources was one run on one core while the other core waited.
    `runs_per_worker`: at least that many runs per worker for a batch that big (a caller using values as they
    come, whose work on the first runs' values then overlaps the later runs)."""
    if not paths:
        return []
    total = sum(weights[p] for p in paths)
    share = len(paths) >= _SPLIT_AT and total >= _SPLIT_BYTES
    count = max(-(-len(paths) // _CHUNK), min(-(-total // _CHUNK_BYTES), len(paths)),
                min(workers * (runs_per_worker if total >= _AHEAD_BYTES else 1), len(paths)) if share else 1)
    if count == 1:
        return [paths]
    chunks: list[list[str]] = [[]]
    done = 0
    for path in paths:
        # A new run starts when this one holds its share of the bytes, or _CHUNK files.
        if chunks[-1] and (len(chunks[-1]) >= _CHUNK or done >= total * len(chunks) / count):
            chunks.append([])
        chunks[-1].append(path)
        done += weights[path]
    return chunks


class _Files:
    """Files of a snapshot looked up on demand (a tree lookup in libgit2), so evaluating a few files of a
    5,000-file commit does not walk the whole tree."""

    def __init__(self, snap: Snapshot) -> None:
        self._snap = snap
        self._seen: dict[str, FileEntry | None] = {}

    def get(self, path: str) -> FileEntry | None:
        if path not in self._seen:
            entry = self._snap.entry(path) if path.endswith(_IMPORTABLE) else None
            self._seen[path] = entry
        return self._seen[path]

    def prime(self, entries: Sequence[FileEntry]) -> None:
        """Files the caller already listed (one tree walk) need no lookup each."""
        for entry in entries:
            self._seen.setdefault(entry.path, entry)

    def __contains__(self, path: object) -> bool:
        return isinstance(path, str) and self.get(path) is not None


@functools.cache
def _worker_path() -> tuple[tuple[str, ...], str]:
    """Interpreter flags and PYTHONPATH for a worker. It needs only the standard library, this package and
    py-nickel, so it starts without `site` (-S: no site-packages scan, no .pth files, ~30 ms less per start)
    with py-nickel's folder on its path; with `site` when py-nickel cannot be found that way."""
    project = str(Path(__file__).resolve().parents[2])
    spec = importlib.util.find_spec("nickel")
    if spec is None or not spec.submodule_search_locations:
        return (), project
    folder = str(Path(next(iter(spec.submodule_search_locations))).parent)
    return ("-S",), os.pathsep.join((project, folder))


class _Worker:
    """One evaluation child process; killed and replaced on a deadline overrun."""

    def __init__(self, memory_mb: int, primary: bool = True) -> None:
        self.memory_mb = memory_mb
        self.primary = primary                # extra workers only serve big batches: they leave sooner
        self.proc: subprocess.Popen[str] | None = None

    def start(self) -> subprocess.Popen[str]:
        """The running worker process, started when there is none."""
        if self.proc is not None and self.proc.poll() is not None:
            self.kill()  # died on its own (out of memory): reap it and close its pipes
        if self.proc is None:
            flags, path = _worker_path()
            self.proc = subprocess.Popen(
                [sys.executable, *flags, "-m", "daemon.nickel.worker", str(self.memory_mb),
                 str(WORKER_IDLE_S if self.primary else EXTRA_WORKER_IDLE_S)],
                stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, bufsize=1,
                cwd="/", env={**os.environ, "PYTHONPATH": path})
        return self.proc

    def run(self, src: str, paths: list[str], timeout: float) -> dict[str, str]:
        # A worker that exited because it was idle (exit code 0) just as a request came is not an error:
        # the request goes to a fresh worker, once.
        for attempt in (1, 2):
            proc = self.start()
            assert proc.stdin is not None and proc.stdout is not None
            try:
                proc.stdin.write(json.dumps({"src": src, "paths": paths}) + "\n")
                proc.stdin.flush()
            except BrokenPipeError:
                if attempt == 1 and proc.wait() == 0:
                    self.kill()
                    continue
                self.kill()
                return {"error": "error: the Nickel worker died"}
            ready, _, _ = select.select([proc.stdout], [], [], timeout)
            if not ready:
                self.kill()
                return {"error": f"error: evaluation did not finish within {timeout:g} s (an endless recursion?)"}
            line = proc.stdout.readline()
            if line:
                break
            code = proc.wait()
            if attempt == 1 and code == 0:
                self.kill()
                continue
            self.kill()
            if code in (-signal.SIGSEGV, -signal.SIGBUS):
                # Nickel's parser and evaluator recurse on the native stack: a long chain (`1+1+...`,
                # thousands of `let`s) overflows it and the process dies without a message.
                return {"error": f"error: evaluation crashed the Nickel worker ({signal.Signals(-code).name}: a "
                                 "stack overflow from an expression nested or chained too deeply?)"}
            return {"error": "error: evaluation crashed the Nickel worker (out of memory, or a stack overflow "
                             "from an expression nested or chained too deeply?)"}
        reply: dict[str, str] = json.loads(line)
        return reply

    def kill(self) -> None:
        if self.proc is not None:
            stop_worker(self.proc)
            self.proc = None


class Evaluator:
    """Evaluates Nickel files of snapshots. Thread-safe: evaluations are serialized (one worker)."""

    def __init__(self, cache_dir: Path, timeout: float = 10.0, memory_mb: int = 1024, workers: int = 0,
                 budget: float | None = None, *, prestart: bool = False, in_memory: bool = True,
                 keep_values: bool = True) -> None:
        """`keep_values`: keep evaluated values on disk for later processes (daemon/nickel/cache.py); False for a
        throwaway cache directory (`stratum validate`), where writing them is pure cost: an SQLite file made,
        switched to WAL and filled with every value, then deleted."""
        self.cache_dir = cache_dir
        # The most one evaluate() call waits on runs that overran their deadline before giving up on the rest.
        self.budget = budget if budget is not None else max(timeout * _BUDGET_DEADLINES, 60.0)
        # The files Nickel imports: in memory when it can (nickel/scratch.py).
        self._scratch = Scratch.create(cache_dir / "work") if in_memory else Scratch.on_disk(cache_dir / "work")
        self.workdir = self._scratch.path
        self.timeout = timeout
        self._lib = nickel_dir()
        # Values on disk depend on the contract library and on the engine that computed them.
        self._lib_version = f"{_library_version(self._lib)}:{_engine_version()}"
        self._disk = DiskCache(cache_dir / "values") if keep_values else None
        self._lib_names = {p.name for p in self._lib.glob("*.ncl")}
        count = max(1, workers or min(2, os.cpu_count() or 1))
        self._workers = [_Worker(memory_mb, primary=i == 0) for i in range(count)]
        self._lock = threading.Lock()
        self._write_lock = threading.Lock()               # the work tree, written by the chunks' threads
        self._materialized: dict[str, str] = {}       # path -> blob id currently in workdir
        self._cache: dict[str, Any] = {}               # cache key -> decoded value
        self._imports: dict[str, list[Any]] = {}       # blob id -> scanned imports (or a ScanError)
        self._solo_keys: dict[tuple[str | None, str, str], str] = {}   # files importing nothing -> cache key
        self.stats = {"evaluations": 0, "cache_hits": 0}
        self.disk_hits = 0                              # values found on disk, evaluated by an earlier process
        self.keys_derived = 0                           # closures walked and hashed (not known from before)
        if prestart:
            self.prestart()

    def prestart(self, workers: int = 1) -> None:
        """Start the first `workers` workers now, without waiting for them: their interpreter start-up (~0.1 s,
        ~70 ms of CPU each) then overlaps with the caller's own set-up (imports, the index, the reconcilers)
        instead of delaying the first evaluation. A worker nobody uses exits after WORKER_IDLE_S (the extra
        ones, which only share big batches, after EXTRA_WORKER_IDLE_S)."""
        with self._lock:
            for worker in self._workers[:max(1, workers)]:
                worker.start()

    @property
    def values_on_disk(self) -> bool:
        """Whether an earlier process kept evaluated values here (most files of the next revision are then
        found on disk, not evaluated)."""
        return self._disk is not None and self._disk.existed

    @property
    def worker_count(self) -> int:
        """How many worker processes evaluations may use at most (one per core, up to two by default)."""
        return len(self._workers)

    def release(self) -> bool:
        """Stop the worker processes and close the on-disk cache's connection now, unless an evaluation runs
        (False then): an idle daemon gives their memory back (~19 MB a worker) instead of keeping the workers
        WORKER_IDLE_S after its run. The next evaluation starts a fresh worker (~0.1 s) and reopens the cache.
        Workers that already left on their own are reaped here too (no zombie waits for the next run)."""
        if not self._lock.acquire(blocking=False):
            return False
        try:
            for worker in self._workers:
                worker.kill()
            if self._disk is not None:
                self._disk.close()
            return True
        finally:
            self._lock.release()

    @property
    def workers_running(self) -> int:
        """Worker processes started and not yet reaped (one that left on its own counts until reaped)."""
        return sum(1 for worker in self._workers if worker.proc is not None)

    def close(self) -> None:
        """Stop the worker process."""
        for worker in self._workers:
            worker.kill()
        if self._disk is not None:
            self._disk.close()
        self._scratch.remove()

    # 1. imports ------------------------------------------------------------------------------------
    def _scan(self, snap: Snapshot, entry: FileEntry) -> list[Any]:
        cached = self._imports.get(entry.blob_id)
        if cached is not None:
            return cached
        try:
            refs: list[Any] = list(scan_imports(snap.text(entry, MAX_NICKEL_BYTES)))
        except ScanError as err:
            refs = [err]
        except Exception as err:  # noqa: BLE001 a file that cannot be read (binary, size, UTF-8) becomes a problem
            refs = [ScanError(str(getattr(err, "what", err)), 0)]
        self._imports[entry.blob_id] = refs
        return refs

    def _check_data(self, snap: Snapshot, entry: FileEntry) -> Problem | None:
        """Bounds on a data file Nickel imports (JSON, TOML, YAML): nesting a parser survives, no YAML aliases
        (a billion laughs), cached by blob id like the scan of Nickel files."""
        if not entry.path.endswith((".json", ".toml", ".yaml", ".yml")):
            return None
        key = f"data:{entry.blob_id}"
        if key not in self._imports:
            problem: Problem | None = None
            try:
                text = snap.text(entry, MAX_NICKEL_BYTES)
                if entry.path.endswith((".yaml", ".yml")):
                    bounded_yaml.check(text, max_depth=MAX_NESTING)
                else:
                    err = data_nesting_error(text, MAX_NESTING, '"' if entry.path.endswith(".json") else "\"'")
                    if err is not None:
                        problem = Problem(str(err), entry.path, err.line, reconciler="nickel",
                                          hint="flatten the structure: nesting is capped")
            except yaml.YAMLError as err:
                mark = getattr(err, "problem_mark", None)
                problem = Problem(str(getattr(err, "problem", None) or err), entry.path,
                                  mark.line + 1 if mark is not None else 0, reconciler="nickel",
                                  hint="YAML that Nickel imports has no aliases and modest size and depth")
            except Exception as err:  # noqa: BLE001 unreadable (binary, size, UTF-8): a located problem
                where = str(getattr(err, "where", ""))
                line = where.rpartition(":")[2]
                problem = Problem(str(getattr(err, "what", err)), entry.path, int(line) if line.isdigit() else 0,
                                  reconciler="nickel")
            self._imports[key] = [problem]
        found: Problem | None = self._imports[key][0]
        return found

    def _closure(self, snap: Snapshot, path: str, files: _Files,
                 ) -> tuple[list[FileEntry], Problem | None]:
        """The file and everything it imports (transitively), or the first problem found."""
        seen: dict[str, FileEntry] = {}
        stack = [path]
        while stack:
            current = stack.pop()
            if current in seen:
                continue
            entry = files.get(current) or snap.entry(current)
            if entry is None:
                return [], Problem(f"imported file {current} is not in the commit", path=path, reconciler="nickel")
            if entry.is_symlink:
                return [], Problem("symlinks cannot be imported", path=current, reconciler="nickel")
            seen[current] = entry
            if not current.endswith(".ncl"):
                if entry.size > MAX_NICKEL_BYTES:
                    return [], Problem(f"imported file is over {MAX_NICKEL_BYTES} bytes", path=current)
                data_problem = self._check_data(snap, entry)
                if data_problem is not None:
                    return [], data_problem
                continue
            for ref in self._scan(snap, entry):
                if isinstance(ref, NestingError):
                    return [], Problem(str(ref), path=current, line=ref.line, reconciler="nickel",
                                       hint="flatten the structure (split it into named parts): Nickel's parser "
                                            "cannot go deeper")
                if isinstance(ref, ScanError):
                    return [], Problem(str(ref), path=current, line=ref.line, reconciler="nickel",
                                       hint="import only files of this repository by relative path")
                target = self._resolve_import(current, ref.target, files)
                if target is None:
                    return [], Problem(f"import {ref.target!r} leaves the repository or names no file of "
                                       "this commit", path=current, line=ref.line, reconciler="nickel",
                                       hint="import repository files by relative path, or the library "
                                            f"({', '.join(sorted(self._lib_names))})")
                if target != "<lib>":
                    stack.append(target)
        return list(seen.values()), None

    def _resolve_import(self, importer: str, target: str, files: _Files) -> str | None:
        if target.startswith("/") or not target.endswith(_IMPORTABLE):
            return None
        base = PurePosixPath(importer).parent
        parts: list[str] = []
        for part in (base / target).parts:
            if part in ("", "."):
                continue
            if part == "..":
                if not parts:
                    return None
                parts.pop()
            else:
                parts.append(part)
        candidate = "/".join(parts)
        if candidate in files:
            return candidate
        # Nickel falls back to the import path: the repo root, then the library.
        if "/" not in target and ".." not in target:
            if target in files:
                return target
            if target in self._lib_names:
                return "<lib>"
        return None

    # 2. materialize -------------------------------------------------------------------------------
    def _sweep(self, files: _Files) -> None:
        """Files of other commits must not linger: Nickel resolves a relative import on disk first."""
        for stale in [p for p in self._materialized if p not in files]:
            (self.workdir / stale).unlink(missing_ok=True)
            del self._materialized[stale]

    def _materialize(self, snap: Snapshot, entries: Sequence[FileEntry]) -> None:
        """Write the files (changed blobs only) into the work tree. Chunks are written just before they are
        evaluated, so writing one chunk overlaps with the other worker evaluating another; the lock keeps two
        threads from writing one shared import at once."""
        # Evaluations are serialized (the evaluator's lock) and a file is written before any chunk importing it
        # is sent, so no worker reads a file while it is rewritten: a plain write (no temporary file and
        # rename) and one mkdir per folder keep 20,000 files cheap.
        with self._write_lock:
            made: set[str] = set()
            for entry in entries:
                if self._materialized.get(entry.path) == entry.blob_id:
                    continue
                folder = os.path.join(self.workdir, os.path.dirname(entry.path))
                if folder not in made:
                    os.makedirs(folder, exist_ok=True)
                    made.add(folder)
                with open(os.path.join(self.workdir, entry.path), "wb") as fh:
                    fh.write(snap.read_entry(entry, MAX_NICKEL_BYTES))
                self._materialized[entry.path] = entry.blob_id

    # 3. evaluate ----------------------------------------------------------------------------------
    def evaluate(self, snap: Snapshot, paths: Sequence[str], contract: str | None = None,
                 entries: Sequence[FileEntry] = (), on_value: OnValue | None = None) -> EvalResult:
        """Evaluate `paths` of the snapshot, applying `contract` (a Nickel expression) to each value.
        `entries` are files the caller already listed from the snapshot (saves a lookup per file).
        `on_value(path, key, value)` is told each value a Nickel run produced as soon as its run is back (never
        the values found in a cache), in the calling thread while the workers go on with the next runs, so the
        caller's own work on them overlaps Nickel's; the result holds the same values. It must not raise."""
        with self._lock:
            return self._evaluate(snap, paths, contract, entries, on_value)

    def run_source(self, src: str, import_paths: Sequence[str]) -> dict[str, str]:
        """Evaluate an expression the caller generated (no repository file: a contract over data Python built,
        such as the knowledge front matter) in the first worker, under the same deadline and memory limit:
        {"ok": JSON text} or {"error": message without colours}. py-nickel then never runs in the caller's
        process, where it would hold the GIL for the whole evaluation (PLATFORM.md)."""
        with self._lock:
            self.stats["evaluations"] += 1
            return self._workers[0].run(src, [*map(str, import_paths), str(self._lib)], self.timeout)

    def prefetch(self, snap: Snapshot, groups: Sequence[tuple[Sequence[str], str | None]]) -> int:
        """Evaluate several (paths, contract) groups of `snap` in ONE Nickel run and keep the values in the
        cache, so the `evaluate` calls that follow (one per group, from the reconcilers' loads) find them: every
        run pays for the standard library and its contract library again (~15-45 ms), and a template-sized
        repository asked for eight runs. Only an optimisation: nothing is reported here; when the batch fails
        (a file with an error), nothing is kept and each group's own `evaluate` pins its problems as before.
        Batches over PREFETCH_MAX_FILES are left to `evaluate`, which splits them into runs across workers.
        Returns the number of values kept."""
        with self._lock:
            return self._prefetch(snap, groups)

    def _prefetch(self, snap: Snapshot, groups: Sequence[tuple[Sequence[str], str | None]]) -> int:
        files = _Files(snap)
        todo: list[tuple[str | None, dict[str, str], dict[str, list[FileEntry]]]] = []
        for paths, contract in groups:
            values: dict[str, Any] = {}
            problems: list[Problem] = []
            _, pending, closures = self._keyed(snap, files, paths, contract, values, problems)
            self._from_disk(pending, values)
            if pending and not problems:          # a group with refused imports: its evaluate reports them
                todo.append((contract, pending, closures))
        if len(todo) < 2 or sum(len(pending) for _, pending, _ in todo) > PREFETCH_MAX_FILES:
            return 0                                # one group alone gains nothing from being asked early
        needed = {e.path: e for _, pending, closures in todo for path in pending for e in closures[path]}
        if not self._scratch.fits(len(needed), sum(e.size for e in needed.values())):
            return 0
        self._sweep(files)
        try:
            self._materialize(snap, list(needed.values()))
            src = "{\n" + ",\n".join(f"  g{i} = {self._record(list(pending), contract)}"
                                       for i, (contract, pending, _) in enumerate(todo)) + "\n}"
            # A shorter deadline than a file's: a batch that overruns it (a file that never ends) only
            # costs this much more before the groups' own evaluations find the culprit.
            reply = _decoded(self._run([], None, 0, src, min(self.timeout, PREFETCH_TIMEOUT_S)))
        finally:
            if self._scratch.in_memory:
                self._scratch.wipe()
                self._materialized.clear()
        if "ok" not in reply:
            return 0
        kept = 0
        for i, (_, pending, _) in enumerate(todo):
            group = reply["ok"][f"g{i}"]
            for path, key in pending.items():
                self._cache[key] = group[path]
                kept += 1
            if self._disk is not None:
                self._disk.put_many((key, group[path]) for path, key in pending.items())
        return kept

    def _evaluate(self, snap: Snapshot, paths: Sequence[str], contract: str | None,
                  entries: Sequence[FileEntry] = (), on_value: OnValue | None = None) -> EvalResult:
        files = _Files(snap)
        files.prime(entries)
        values: dict[str, Any] = {}
        problems: list[Problem] = []
        keys, pending, closures = self._keyed(snap, files, paths, contract, values, problems)
        self._from_disk(pending, values)
        if pending:
            try:
                return self._evaluate_pending(snap, files, pending, closures, contract, values, problems, keys,
                                              on_value)
            finally:
                if self._scratch.in_memory:           # memory is held only while an evaluation runs
                    self._scratch.wipe()
                    self._materialized.clear()
        if len(self._cache) > 50_000:
            self._cache.clear()
        return EvalResult(values=values, problems=tuple(problems), keys=keys)

    def _keyed(self, snap: Snapshot, files: _Files, paths: Sequence[str], contract: str | None,
               values: dict[str, Any], problems: list[Problem],
               ) -> tuple[dict[str, str], dict[str, str], dict[str, list[FileEntry]]]:
        """The cache key of each path ({path: key}), the paths no memory cache knows ({path: key}) with their
        closures; known values go to `values`, files whose imports are refused to `problems`."""
        pending: dict[str, str] = {}                      # path -> cache key
        keys: dict[str, str] = {}
        closures: dict[str, list[FileEntry]] = {}
        for path in paths:
            entry = files.get(path)
            solo = (contract, path, entry.blob_id) if entry is not None and path.endswith(".ncl") \
                and not entry.is_symlink and self._imports.get(entry.blob_id) == [] else None
            key = self._solo_keys.get(solo) if solo is not None else None
            if key is not None and entry is not None:
                # A file known to import nothing (its blob was scanned): its closure is itself, and its key
                # was made before. A revision changing one file of 20,000 re-derives one key, not all.
                closure = [entry]
            else:
                closure, problem = self._closure(snap, path, files)
                if problem is not None:
                    problems.append(problem)
                    continue
                key = hashlib.sha256(json.dumps(
                    [contract, self._lib_version, path, sorted((e.path, e.blob_id) for e in closure)]).encode()
                ).hexdigest()
                self.keys_derived += 1
                if len(closure) == 1 and entry is not None and self._imports.get(entry.blob_id) == []:
                    if len(self._solo_keys) > 200_000:
                        self._solo_keys.clear()
                    self._solo_keys[(contract, path, entry.blob_id)] = key
            keys[path] = key
            if key in self._cache:
                values[path] = self._cache[key]
                self.stats["cache_hits"] += 1
                continue
            pending[path] = key
            closures[path] = closure
        return keys, pending, closures

    def _from_disk(self, pending: dict[str, str], values: dict[str, Any]) -> None:
        """Move the `pending` values an earlier process evaluated (a CLI run, a daemon) into `values`: one
        batched lookup."""
        if pending and self._disk is not None:
            on_disk = self._disk.get_many(list(pending.values()))
            for path, key in list(pending.items()):
                if key in on_disk:
                    self._cache[key] = values[path] = on_disk[key]
                    self.disk_hits += 1
                    del pending[path]

    def _evaluate_pending(self, snap: Snapshot, files: _Files, pending: dict[str, str],
                          closures: dict[str, list[FileEntry]], contract: str | None, values: dict[str, Any],
                          problems: list[Problem], keys: dict[str, str], on_value: OnValue | None = None,
                          ) -> EvalResult:
        """Write and evaluate the files no cache knew, in chunks over the workers; `values`, `problems` and
        `keys` hold what was known before."""
        needed = {e.path: e for path in pending for e in closures[path]}
        if not self._scratch.fits(len(needed), sum(e.size for e in needed.values())):
            # Too much for memory: this and later evaluations write to the disk work tree instead.
            self._scratch.remove()
            self._scratch = Scratch.on_disk(self.cache_dir / "work")
            self.workdir = self._scratch.path
            self._materialized.clear()
        self._sweep(files)

        def prepare(chunk: list[str]) -> None:
            self._materialize(snap, [e for path in chunk for e in closures[path]])

        # Files are evaluated in chunks of a bounded size (one chunk's evaluation stays far inside the
        # deadline however many files a commit holds: a single 10,000-file batch overran it, and the
        # per-file fallback that followed took minutes), spread over the workers (one per core).
        weights = {path: sum(e.size for e in closures[path]) for path in pending}
        chunks = split_chunks(list(pending), weights, len(self._workers),
                              runs_per_worker(len(self._workers)) if on_value is not None else 1)
        count = min(len(self._workers), len(chunks))
        deadline = time.monotonic() + self.budget

        def tell_now(chunk_values: dict[str, Any]) -> None:
            if on_value is not None:
                for path, value in chunk_values.items():
                    on_value(path, pending[path], value)

        if count == 1:
            results = [self._evaluate_chunks(0, chunks, contract, deadline, prepare, tell_now)]
        else:
            # The chunks' threads hand each chunk's values to this thread, which tells the caller while they
            # go on with their next chunk (a thread telling them itself kept its worker idle meanwhile).
            back: queue.SimpleQueue[dict[str, Any] | None] = queue.SimpleQueue()

            def on_worker(w: int) -> tuple[dict[str, Any], list[Problem]]:
                try:
                    return self._evaluate_chunks(w, chunks[w::count], contract, deadline, prepare,
                                                 back.put if on_value is not None else _ignore)
                finally:
                    back.put(None)              # this worker's chunks are done (or failed)

            with cf.ThreadPoolExecutor(max_workers=count) as pool:
                futures = [pool.submit(on_worker, w) for w in range(count)]
                running = count
                while running:
                    got = back.get()
                    if got is None:
                        running -= 1
                    else:
                        tell_now(got)
                results = [f.result() for f in futures]
        for chunk_values, chunk_problems in results:
            for path, value in chunk_values.items():
                self._cache[pending[path]] = values[path] = value
            problems.extend(chunk_problems)
            if self._disk is not None:
                self._disk.put_many((pending[path], value) for path, value in chunk_values.items())
        if len(self._cache) > 50_000:
            self._cache.clear()
        return EvalResult(values=values, problems=tuple(problems), keys=keys)

    def _pin_library(self, contract: str) -> str:
        """Point the contract's library imports at the library itself, so a repo file of the same name
        (say a root-level `infra.ncl`) can never stand in for Stratum's contract."""
        def swap(m: re.Match[str]) -> str:
            name = m.group(1)
            return f"import {json.dumps(str(self._lib / name))}" if name in self._lib_names else m.group(0)
        return re.sub(r'import\s+"([^"]+)"', swap, contract)

    def _evaluate_chunks(self, worker: int, chunks: list[list[str]], contract: str | None, deadline: float,
                         prepare: Callable[[list[str]], None], tell: Callable[[dict[str, Any]], None],
                         ) -> tuple[dict[str, Any], list[Problem]]:
        """Chunks one after another on one worker, within the revision's evaluation budget: once `deadline`
        passed (files that each ran to the deadline), the files left are problems, not more waiting. Each
        chunk's values are told (`tell`) as soon as it is back."""
        values: dict[str, Any] = {}
        problems: list[Problem] = []
        for chunk in chunks:
            if time.monotonic() > deadline:
                problems.extend(Problem(
                    "not evaluated: the revision's Nickel evaluation budget ran out (other files ran to the "
                    "deadline)", path, reconciler="nickel", hint="fix the files reported as too slow")
                    for path in chunk)
                continue
            prepare(chunk)
            chunk_values, chunk_problems = self._evaluate_chunk(worker, chunk, contract, deadline)
            tell(chunk_values)
            values.update(chunk_values)
            problems.extend(chunk_problems)
        return values, problems

    def _evaluate_chunk(self, worker: int, paths: list[str], contract: str | None, deadline: float,
                        reply: dict[str, Any] | None = None) -> tuple[dict[str, Any], list[Problem]]:
        """One batch on one worker. When it fails, the errors are pinned on files by halving the batch (a
        few runs for a few bad files, where one run per file cost minutes at thousands of files); after a
        deadline overrun, file by file (halving would wait for the deadline at every level)."""
        batch = reply if reply is not None else _decoded(self._run(paths, contract, worker))
        if "ok" in batch:
            return {p: batch["ok"][p] for p in paths}, []
        if len(paths) == 1:
            return {}, [parse_error(batch["error"], self.workdir, paths[0])]
        if time.monotonic() > deadline:
            return {}, [Problem("not evaluated: the revision's Nickel evaluation budget ran out", path,
                                reconciler="nickel", hint="fix the files reported as too slow") for path in paths]
        halves = [[p] for p in paths] if "did not finish" in str(batch.get("error", "")) \
            else [paths[:len(paths) // 2], paths[len(paths) // 2:]]
        values: dict[str, Any] = {}
        problems: list[Problem] = []
        for part in halves:
            if time.monotonic() > deadline:
                problems.extend(Problem("not evaluated: the revision's Nickel evaluation budget ran out", path,
                                        reconciler="nickel", hint="fix the files reported as too slow")
                                for path in part)
                continue
            part_values, part_problems = self._evaluate_chunk(worker, part, contract, deadline)
            values.update(part_values)
            problems.extend(part_problems)
        return values, problems

    def _record(self, paths: Sequence[str], contract: str | None) -> str:
        """The root expression evaluating `paths`: a record of each file's value under `contract`."""
        suffix = f" | {self._pin_library(contract)}" if contract else ""
        fields = ",\n".join(f"  {json.dumps(p)} = (import {json.dumps(p)}){suffix}" for p in paths)
        return "{\n" + fields + "\n}"

    def _run(self, paths: list[str], contract: str | None, worker: int = 0, src: str = "",
             timeout: float | None = None) -> dict[str, str]:
        src = src or self._record(paths, contract)
        self.stats["evaluations"] += 1
        started = time.monotonic()
        reply = self._workers[worker].run(src, [str(self.workdir), str(self._lib)], timeout or self.timeout)
        self.last_eval_ms = (time.monotonic() - started) * 1000
        return reply
