"""The embedding worker: a child process that embeds texts with the shipped model, one JSON line per request.

The daemon never loads onnxruntime, tokenizers or the model: resident, they cost ~90 MB, and embedding a batch
of long texts peaks at hundreds of MB that an allocator does not give back. Here that memory lives only as
long as the process, which exits by itself after `idle` seconds without a request (and when stdin closes, so
it never outlives its parent). embed.py's WorkerProvider starts it on first use and again after a crash.

argv: MODEL_DIR IDLE_SECONDS [THREADS]. The shipped files are verified by sha256 (model_files.py) at every
start, before the model is loaded; the graph run is their fused form (model_graph.py), made once per model
directory and verified too, or the plain one when that cannot be made or loaded.
Request: {"texts": [str, ...]}; reply: {"n": int, "f32": base64 of n x 384 little-endian float32} or
{"error": what, "hint": what to do, "fatal": true when no request can succeed (the model cannot load)}.
"""

from __future__ import annotations

import base64
import json
import os
import select
import signal
import sys
from pathlib import Path
from typing import Any

from reconcilers.knowledge.errors import ModelError
from reconcilers.knowledge.model_files import fused_model_file, prepare_model_dir
from reconcilers.workers import trim_heap

_SMALL_REQUEST = 4096                         # bytes of a one-text request left untrimmed (a search query)


def _lines(fd: int, idle: float) -> Any:
    """Request lines from `fd`; stops at end of input or after `idle` seconds without one."""
    buf = b""
    while True:
        while b"\n" not in buf:
            ready, _, _ = select.select([fd], [], [], idle if idle > 0 else None)
            if not ready:
                return                          # idle: exit and give the memory back
            block = os.read(fd, 1 << 16)
            if not block:
                return                          # the parent closed stdin or died
            buf += block
        line, _, buf = buf.partition(b"\n")
        yield line


def _load(model_dir: Path, threads: int) -> tuple[Any, dict[str, Any] | None]:
    try:
        prepare_model_dir(model_dir)
        from reconcilers.knowledge.minilm import MiniLM

        try:
            fused = fused_model_file(model_dir)
            if fused is not None:
                return MiniLM(model_dir, threads, fused), None
        except Exception:  # noqa: BLE001 the fused graph is a speed-up: the plain model always works
            pass
        return MiniLM(model_dir, threads), None
    except ModelError as err:
        return None, {"error": err.what, "hint": err.hint, "fatal": True}
    except ImportError as err:
        return None, {"error": f"cannot import the embedding runtime: {err}",
                      "hint": "pip install onnxruntime tokenizers", "fatal": True}
    except Exception as err:  # noqa: BLE001 onnxruntime raises its own types; all mean "cannot load"
        return None, {"error": f"cannot load the embedding model from {model_dir}: {err}",
                      "hint": f"delete {model_dir} to rebuild it", "fatal": True}


def main() -> None:
    """Serve requests until stdin closes or nothing comes for the idle period."""
    # Ctrl-C in a terminal reaches the whole process group: the parent decides when this process ends.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    model_dir, idle = Path(sys.argv[1]), float(sys.argv[2])
    threads = int(sys.argv[3]) if len(sys.argv) > 3 else 0
    model, failure = _load(model_dir, threads)
    out = sys.stdout.buffer
    for line in _lines(sys.stdin.fileno(), idle):
        texts: list[str] = []
        if failure is not None:
            reply = failure
        else:
            try:
                texts = [str(t) for t in json.loads(line)["texts"]]
                matrix = model.embed(texts)
                reply = {"n": len(texts), "f32": base64.b64encode(matrix.astype("<f4").tobytes()).decode()}
            except (ValueError, KeyError, TypeError) as err:
                reply = {"error": f"bad request to the embedding worker: {err}", "hint": "report this"}
            except Exception as err:  # noqa: BLE001 one failed request must not end the worker
                reply = {"error": f"the embedding model failed: {err}", "hint": "see the daemon log"}
        out.write(json.dumps(reply).encode() + b"\n")
        out.flush()
        del reply
        # A search query's few kilobytes are not worth giving back: trimming costs ~0.3 ms of CPU per request,
        # a tenth of what a search's own work costs on this host. Batches (indexing) free megabytes: trimmed.
        if len(texts) != 1 or len(line) > _SMALL_REQUEST:
            trim_heap()     # freed batch buffers otherwise stay resident (+25-110 MB)


if __name__ == "__main__":
    main()
