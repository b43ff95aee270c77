"""Where the shipped data lives: the Nickel contract library and the repo template.

In a source checkout they are the top-level `nickel/` and `repo_template/` folders; in an installed wheel they
are the data packages `daemon._nickel` and `daemon._template` (see setup.py).
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path

_SOURCE_ROOT = Path(__file__).resolve().parent.parent


def _locate(folder: str, package: str) -> Path:
    checkout = _SOURCE_ROOT / folder
    if (checkout / ".stratum-data").exists():
        return checkout
    try:
        found = Path(str(resources.files(package)))
    except ModuleNotFoundError as err:
        raise FileNotFoundError(f"Stratum's {folder}/ data is not installed; reinstall stratumops") from err
    return found


def nickel_dir() -> Path:
    """The folder of Stratum's Nickel contracts (put on every evaluation's import path)."""
    return _locate("nickel", "daemon._nickel")


def template_dir() -> Path:
    """The folder `stratum init` copies into a new ops repo."""
    return _locate("repo_template", "daemon._template")
