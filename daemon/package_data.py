"""Where the shipped data lives: the Nickel contract library and the repo template.

In a source checkout they are the top-level `nickel/` and `repo_template/` folders; in an installed wheel they
are the data packages `daemon._nickel` and `daemon._template` (see setup.py).
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

_SOURCE_ROOT = Path(__file__).resolve().parent.parent


def _locate(folder: str, package: str) -> Path:
    checkout = _SOURCE_ROOT / folder
    if (checkout / ".stratum-data").exists():
        return checkout
    # The data packages have no __init__.py (nickel/ must never shadow py-nickel), so they are namespace
    # packages: importlib.resources gives a MultiplexedPath for them, the spec gives the real folder.
    spec = importlib.util.find_spec(package)
    locations = list(spec.submodule_search_locations or []) if spec is not None else []
    if not locations:
        raise FileNotFoundError(f"Stratum's {folder}/ data is not installed; reinstall stratumops")
    return Path(locations[0])


def nickel_dir() -> Path:
    """The folder of Stratum's Nickel contracts (put on every evaluation's import path)."""
    return _locate("nickel", "daemon._nickel")


def template_dir() -> Path:
    """The folder `stratum init` copies into a new ops repo."""
    return _locate("repo_template", "daemon._template")
