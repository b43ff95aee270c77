"""The shipped model out of process: the worker's vectors, its lifecycle, and what the daemon process imports."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from reconcilers.knowledge.embed import SHIPPED_MODEL_ID, ModelError, WorkerProvider, load_provider
from reconcilers.knowledge.model_files import prepare_model_dir

ROOT = Path(__file__).resolve().parents[2]
TEXTS = ["cat", "kitten", "quarterly revenue", "How to restart the database after a failover?",
         "Café DÉJÀ vu, naïve résumé", "word " * 400, ""]


@pytest.fixture()
def worker(tmp_path: Path) -> Iterator[WorkerProvider]:
    p = WorkerProvider(tmp_path / "model", idle=30.0)
    yield p
    p.close()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def _wait_gone(pid: int, seconds: float = 10.0) -> bool:
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        if not _alive(pid):
            return True
        time.sleep(0.05)
    return False


# -- vectors --------------------------------------------------------------------------------------------------
def test_the_worker_returns_fastembeds_vectors_for_the_shipped_model(tmp_path: Path, worker: WorkerProvider) -> None:
    """Same vectors as fastembed (the reference recipe), whatever the batching, so stored vectors stay valid."""
    fastembed = pytest.importorskip("fastembed")
    from fastembed.common.model_description import ModelSource, PoolingType

    model_dir = prepare_model_dir(tmp_path / "reference")
    name = "stratum-test/minilm-reference"
    if name not in {m["model"] for m in fastembed.TextEmbedding.list_supported_models()}:
        fastembed.TextEmbedding.add_custom_model(model=name, pooling=PoolingType.MEAN, normalization=True,
                                                 sources=ModelSource(hf="stratum/unused"), dim=384,
                                                 model_file="model.onnx")
    expected = np.stack(list(fastembed.TextEmbedding(name, specific_model_path=str(model_dir)).embed(TEXTS)))
    got = worker.embed(TEXTS)
    assert got.shape == (len(TEXTS), 384) and got.dtype == np.float32
    assert float(np.abs(got - expected).max()) < 1e-5
    one_by_one = np.concatenate([worker.embed([t]) for t in TEXTS])
    assert float(np.abs(one_by_one - got).max()) < 1e-5


def test_a_query_sent_ahead_is_answered_when_read_and_holds_the_worker_until_then(worker: WorkerProvider) -> None:
    """`send` returns at once; reading its result gives embed's vector; meanwhile another thread's request
    waits for the worker; a result is read once; a worker that died meanwhile is replaced and answers."""
    import threading

    expected = worker.embed(["storage volume ran out of space"])[0]
    receive = worker.send("storage volume ran out of space")
    other: list[np.ndarray] = []
    waiter = threading.Thread(target=lambda: other.append(worker.embed(["cat"])))
    waiter.start()
    waiter.join(timeout=1.0)
    assert waiter.is_alive() and not other                  # the worker is the sender's until it reads
    assert float(np.abs(receive() - expected).max()) < 1e-6
    waiter.join(timeout=60.0)
    assert not waiter.is_alive() and other[0].shape == (1, 384)
    with pytest.raises(RuntimeError, match="read already"):
        receive()
    receive = worker.send("storage volume ran out of space")
    pid = worker.pid
    assert pid is not None
    os.kill(pid, signal.SIGKILL)
    assert _wait_gone(pid)
    assert float(np.abs(receive() - expected).max()) < 1e-6
    assert worker.pid not in (None, pid)


def test_the_worker_is_verified_by_sha256_before_loading(tmp_path: Path) -> None:
    """A model file replaced in the worker's directory is refused, and the provider stops trying."""
    model_dir = prepare_model_dir(tmp_path / "model")
    (model_dir / "model.onnx").write_bytes(b"\x00" * (model_dir / "model.onnx").stat().st_size)
    p = WorkerProvider(model_dir)
    try:
        # prepare_model_dir copies again only when sizes differ: the same size with other bytes must fail.
        with pytest.raises(ModelError, match="does not match the verified file"):
            p.embed(["x"])
        with pytest.raises(ModelError):
            p.embed(["x"])
        assert p.starts == 1 and p.pid is None
    finally:
        p.close()


# -- lifecycle ------------------------------------------------------------------------------------------------
def test_the_worker_starts_on_first_use_only(tmp_path: Path) -> None:
    """Loading the provider starts nothing; the first embed starts one worker, later ones reuse it."""
    prov, why = load_provider({}, tmp_path, worker_idle=30.0)
    assert isinstance(prov, WorkerProvider) and why == "" and prov.model_id == SHIPPED_MODEL_ID
    try:
        assert prov.starts == 0 and prov.pid is None
        prov.embed(["first"])
        pid = prov.pid
        prov.embed(["second"])
        assert prov.starts == 1 and prov.pid == pid
    finally:
        prov.close()
    assert pid is not None and _wait_gone(pid)


def test_a_crashed_worker_is_replaced_on_the_next_request(worker: WorkerProvider) -> None:
    """A worker killed from outside (OOM killer) costs nothing but a restart."""
    before = worker.embed(["restart the service"])
    pid = worker.pid
    assert pid is not None
    os.kill(pid, signal.SIGKILL)
    assert _wait_gone(pid)
    after = worker.embed(["restart the service"])
    assert worker.starts == 2 and worker.pid not in (None, pid)
    assert np.allclose(before, after, atol=1e-6)


def test_an_idle_worker_exits_by_itself_and_comes_back_when_needed(tmp_path: Path) -> None:
    """After `idle` seconds without a request the worker ends (its memory goes back) and is reaped."""
    p = WorkerProvider(tmp_path / "model", idle=0.5)
    try:
        p.embed(["one"])
        pid = p.pid
        assert pid is not None and _wait_gone(pid)
        assert p.pid is None                                   # reaped: no zombie left behind
        p.embed(["two"])
        assert p.starts == 2
    finally:
        p.close()


def test_closing_the_reconciler_stops_its_worker(tmp_path: Path) -> None:
    """The daemon's shutdown (Runtime.close -> reconciler.close) leaves no worker behind."""
    from reconcilers.base import ReconcilerEnv
    from reconcilers.knowledge.reconciler import KnowledgeReconciler

    rec = KnowledgeReconciler(ReconcilerEnv(tmp_path, settings={"knowledge": {"worker_idle_s": 12}}))
    prov = rec.provider()
    assert isinstance(prov, WorkerProvider) and prov.idle == 12.0
    prov.embed(["x"])
    pid = prov.pid
    rec.close()
    assert pid is not None and _wait_gone(pid)


# -- the daemon process ---------------------------------------------------------------------------------------
def test_building_the_reconciler_imports_no_model_runtime(tmp_path: Path) -> None:
    """Importing and constructing KnowledgeReconciler (what the daemon does at start) loads no numpy or onnx;
    embedding loads onnxruntime in the worker only."""
    code = (
        "import sys, json\n"
        "from pathlib import Path\n"
        "from reconcilers.base import ReconcilerEnv\n"
        "from reconcilers.knowledge.reconciler import KnowledgeReconciler\n"
        f"rec = KnowledgeReconciler(ReconcilerEnv(Path({str(tmp_path)!r})))\n"
        "heavy = ('numpy', 'onnxruntime', 'tokenizers', 'fastembed')\n"
        "built = [m for m in heavy if m in sys.modules]\n"
        "rec.provider().embed(['hello'])\n"
        "after = [m for m in heavy if m in sys.modules]\n"
        "rec.close()\n"
        "print(json.dumps([built, after]))\n")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True,
                         env={**os.environ, "HF_HUB_OFFLINE": "1"})
    built, after = json.loads(out.stdout.strip().splitlines()[-1])
    assert built == []
    assert after == ["numpy"]                      # the vectors arrive as numpy arrays; the model stays out
