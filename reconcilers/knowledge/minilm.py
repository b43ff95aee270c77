"""The shipped embedding model (all-MiniLM-L6-v2, int8 ONNX) run with onnxruntime and tokenizers directly.

This is what fastembed does for this model (truncate to 256 tokens, pad to the longest in the batch, mean-pool
the last hidden state over the attention mask, L2-normalise); a test checks the vectors against fastembed's.
We call onnxruntime ourselves, measured here (onnxruntime 1.32, fastembed 0.9.1, 2 cores):
- fastembed's import pulls its image, sparse and late-interaction models too: the worker started in ~1.5 s at
  ~265 MB instead of ~0.7 s at ~215 MB, and a worker starts again after every idle period.
- Batches are bounded in padded tokens, not texts: peak memory grows with batch size times sequence length
  squared (attention). 64 texts of 256 tokens: fastembed in batches of 64 (the old in-process path) peaked at
  1.58 GB; here, in batches of 1,024 tokens (4 such texts), at 280 MB and as fast. Short texts still go 64
  at a time.
- onnxruntime's CPU arena keeps its peak for the process's life: it is off.
- Graph optimisations stay on (as in fastembed): without constant folding the int8 weights are dequantized
  at every call, ~100 ms per call more (a search query: 140 ms instead of 40), for 120 MB less resident.
- The graph run is the fused one (model_graph.py): ~12% less CPU per query. What is left is the matrix
  products in float32 (~75% of a query's time): about 3.5 ms plus 0.3 ms per token on one thread here. Kept
  float32 on purpose: onnxruntime's weight-only 8-bit products (MatMulNBits) took 4x as long on this CPU, and
  quantizing the activations too (its accuracy level 4) moved one product's outputs by ~0.5% (other vectors
  than the stored ones).

This module imports onnxruntime, tokenizers and numpy: only the embedding worker (embed_worker.py) imports it,
never the daemon process.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import numpy.typing as npt
import onnxruntime as ort  # type: ignore[import-untyped]  # ships no type information
from tokenizers import Tokenizer

DIM = 384
MAX_TOKENS = 256                              # the model's window (tokenizer_config.json model_max_length)
BATCH_TOKENS = 1024                           # padded tokens per batch: bounds the attention's peak memory
BATCH_TEXTS = 64


class MiniLM:
    """The model loaded from a directory laid out by `model_files.prepare_model_dir` (verified already);
    `model_file` is the graph to run instead of its model.onnx (the fused one, model_files.fused_model_file)."""

    def __init__(self, model_dir: Path, threads: int = 0, model_file: Path | None = None) -> None:
        self.tokenizer = Tokenizer.from_file(str(model_dir / "tokenizer.json"))
        self.tokenizer.enable_truncation(max_length=MAX_TOKENS)
        pad_id = self.tokenizer.token_to_id("[PAD]")
        self.tokenizer.enable_padding(pad_id=0 if pad_id is None else pad_id, pad_token="[PAD]")
        options = ort.SessionOptions()
        options.enable_cpu_mem_arena = False
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        # One request at a time, one graph: no inter-op pool; the intra-op pool defaults to the host's cores.
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        options.inter_op_num_threads = 1
        if threads > 0:
            options.intra_op_num_threads = threads
        # Idle pool threads spin for a while waiting for work by default: on a small host shared with the daemon
        # and Nickel, that spinning took the cores the other thread needed (a one-line query took 28 ms at the
        # median and 112 ms at p95 with two spinning threads under load, 16/33 ms with one thread).
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        self.session = ort.InferenceSession(str(model_file or model_dir / "model.onnx"), sess_options=options,
                                            providers=["CPUExecutionProvider"])
        self._inputs = {i.name for i in self.session.get_inputs()}

    def embed(self, texts: Sequence[str]) -> npt.NDArray[np.float32]:
        """One L2-normalised row per text, in the order given."""
        out = np.zeros((len(texts), DIM), dtype=np.float32)
        if not texts:
            return out
        if len(texts) == 1:
            return self._run([texts[0]])      # a search query: no batching, tokenized once (padding: none)
        # Texts of similar length share a batch (less padding); each batch stays under BATCH_TOKENS padded.
        lengths = [sum(e.attention_mask) for e in self.tokenizer.encode_batch(list(texts))]
        order = sorted(range(len(texts)), key=lambda i: lengths[i])
        batch: list[int] = []
        for i in order:
            if batch and ((len(batch) + 1) * lengths[i] > BATCH_TOKENS or len(batch) >= BATCH_TEXTS):
                out[batch] = self._run([texts[j] for j in batch])
                batch = []
            batch.append(i)
        if batch:
            out[batch] = self._run([texts[j] for j in batch])
        return out

    def _run(self, texts: list[str]) -> npt.NDArray[np.float32]:
        encoded = self.tokenizer.encode_batch(texts)
        ids = np.array([e.ids for e in encoded], dtype=np.int64)
        mask = np.array([e.attention_mask for e in encoded], dtype=np.int64)
        feeds = {"input_ids": ids, "attention_mask": mask, "token_type_ids": np.zeros_like(ids)}
        hidden = np.asarray(self.session.run(None, {k: v for k, v in feeds.items() if k in self._inputs})[0],
                            dtype=np.float32)
        weights = mask[..., None].astype(np.float32)
        pooled = (hidden * weights).sum(axis=1) / np.maximum(weights.sum(axis=1), 1e-9)
        norms = np.linalg.norm(pooled, axis=1, keepdims=True)
        return np.asarray(pooled / np.where(norms == 0, 1.0, norms), dtype=np.float32)
