"""Thread settings that keep search and query embedding quick on a small shared host.

Speed itself is measured by bench/knowledge_search.py; these check the settings that cause it: NumPy's
OpenBLAS is limited to one thread for the search's small matrix products (two threads, spinning for a core,
made the vector scan 5-10x slower under load), and the model's onnxruntime pool does not spin while idle.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from reconcilers.knowledge.minilm import MiniLM
from reconcilers.knowledge.model_files import prepare_model_dir

PROBE = ("import os, sys, json\nimport reconcilers.knowledge.search\nimport numpy\n"
         "print(json.dumps([os.environ.get('OPENBLAS_NUM_THREADS'), 'numpy' in sys.modules]))")


def _probe(env: dict[str, str]) -> list[object]:
    proc = subprocess.run([sys.executable, "-c", PROBE], env=env, capture_output=True, text=True, check=True,
                          timeout=120)
    result: list[object] = json.loads(proc.stdout.strip().splitlines()[-1])
    return result


def test_the_search_runs_numpy_with_one_blas_thread() -> None:
    """Importing the knowledge package sets OPENBLAS_NUM_THREADS=1 before NumPy loads (it reads it then)."""
    env = {k: v for k, v in os.environ.items() if k != "OPENBLAS_NUM_THREADS"}
    assert _probe(env) == ["1", True]


def test_a_blas_thread_count_the_user_chose_is_kept() -> None:
    assert _probe({**os.environ, "OPENBLAS_NUM_THREADS": "2"}) == ["2", True]


def test_the_models_thread_pool_does_not_spin(tmp_path: Path) -> None:
    """The shipped model's session is built with spinning off (the real model, loaded in this process)."""
    model = MiniLM(prepare_model_dir(tmp_path / "model"))
    options = model.session.get_session_options()
    assert options.get_session_config_entry("session.intra_op.allow_spinning") == "0"
