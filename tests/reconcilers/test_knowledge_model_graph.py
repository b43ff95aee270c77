"""The shipped model's fused graph (model_graph.py): the same vectors as the plain graph, made once per model
directory, verified, made again when changed, and never a rewrite of a graph it does not know."""

from __future__ import annotations

import collections
import json
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from reconcilers.knowledge.embed import WorkerProvider
from reconcilers.knowledge.minilm import MiniLM
from reconcilers.knowledge.model_files import MODEL_SHA256, fused_model_file, prepare_model_dir, sha256_file
from reconcilers.knowledge.model_graph import fuse

TEXTS = ["cat", "storage volume ran out of space", "How to restart the database after a failover?",
         "Café DÉJÀ vu, naïve résumé", "word " * 400, ""]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return prepare_model_dir(tmp_path_factory.mktemp("model"))


def test_the_fused_graph_runs_fused_operators_and_gives_the_same_vectors(model_dir: Path) -> None:
    """Attention and GELU are single operators; every vector equals the plain graph's to float rounding
    (measured: at most 1.8e-7 apart, the order of float sums), one by one and in padded batches."""
    fused = fused_model_file(model_dir)
    assert fused is not None
    ops = collections.Counter(n.op_type for n in onnx.load(str(fused)).graph.node)
    plain_ops = collections.Counter(n.op_type for n in onnx.load(str(model_dir / "model.onnx")).graph.node)
    assert ops["Attention"] == 6 and ops["Gelu"] == 6 and "Erf" not in ops and "Softmax" not in ops
    assert sum(ops.values()) < sum(plain_ops.values()) / 2
    plain, fast = MiniLM(model_dir, 1), MiniLM(model_dir, 1, fused)
    batch_plain, batch_fast = plain.embed(TEXTS), fast.embed(TEXTS)
    assert float(np.abs(batch_plain - batch_fast).max()) < 1e-6
    for text in TEXTS:
        assert float(np.abs(plain.embed([text]) - fast.embed([text])).max()) < 1e-6


def test_the_fused_file_is_made_once_and_made_again_when_changed(model_dir: Path) -> None:
    """Its sha256 is recorded with the source's; a changed file is not loaded but made again."""
    fused = fused_model_file(model_dir)
    assert fused is not None
    manifest = json.loads((model_dir / "model.fused.json").read_text())
    assert manifest["source"] == MODEL_SHA256 and manifest["sha256"] == sha256_file(fused)
    made_at = fused.stat().st_mtime_ns
    assert fused_model_file(model_dir) == fused and fused.stat().st_mtime_ns == made_at     # not made again
    raw = bytearray(fused.read_bytes())
    raw[len(raw) // 2] ^= 0xFF                                  # one weight byte changed, same size
    fused.write_bytes(bytes(raw))
    again = fused_model_file(model_dir)
    assert again == fused and sha256_file(fused) == manifest["sha256"]


def test_a_graph_the_rewrite_does_not_know_is_left_alone() -> None:
    """Anything but the expected attention blocks: no rewrite (the plain graph runs)."""
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])
    graph = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "g", [x], [y])
    assert fuse(helper.make_model(graph).SerializeToString()) is None


def test_the_worker_runs_the_fused_graph(tmp_path: Path) -> None:
    """The embedding worker makes the fused file in its model directory and answers with it."""
    provider = WorkerProvider(tmp_path / "model")
    try:
        vec = provider.embed(["disk full on the database host"])
    finally:
        provider.close()
    assert vec.shape == (1, 384)
    manifest = json.loads((tmp_path / "model" / "model.fused.json").read_text())
    assert manifest["sha256"] == sha256_file(tmp_path / "model" / "model.fused.onnx")


def test_a_rewrite_that_fails_is_recorded_and_not_tried_at_every_start(tmp_path: Path,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """A rewrite that raises (a protobuf that does not match onnx's classes, say: simulated here by making
    `fuse` raise, since the shipped model and library do not fail) gives the plain model and is recorded: later
    starts do not pay another 0.3-0.6 s attempt. Before, the error reached the worker, which fell back to the
    plain model and tried again at its next start."""
    import reconcilers.knowledge.model_graph as model_graph

    target = prepare_model_dir(tmp_path / "model")
    calls: list[int] = []

    def failing(data: bytes) -> bytes | None:
        calls.append(len(data))
        raise ValueError("unexpected graph")

    monkeypatch.setattr(model_graph, "fuse", failing)
    assert fused_model_file(target) is None
    assert json.loads((target / "model.fused.json").read_text())["sha256"] is None
    assert fused_model_file(target) is None and len(calls) == 1
