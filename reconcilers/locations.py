"""Locations both sides name: repository URLs, repo-relative paths, and Stratum's shipped data (part of the
contract).

The kernel's git source and the reconcilers check and show locations the same way, and both read the shipped
Nickel contracts, so these live in the contract rather than in daemon/git/source.py and daemon/package_data.py
(which re-export them).
"""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

MAX_FILES = 50_000                    # files per revision (host default; a repo may ask for fewer)

_URL = re.compile(r"^[a-z][a-z0-9+.-]*://|^[\w.-]+@[\w.-]+:", re.IGNORECASE)


def is_url(location: str) -> bool:
    """True for a remote URL (scheme://... or scp-like user@host:path), False for a local path."""
    return bool(_URL.match(location))


def sanitize_url(location: str) -> str:
    """The location with any user:password@ stripped, for logs."""
    return re.sub(r"(://)[^/@]+@", r"\1", location)


def safe_relpath(path: str) -> str:
    """Normalise a repo- or root-relative POSIX path; refuse absolute paths and any `..` component."""
    if not path or path.startswith("/") or "\\" in path or "\x00" in path:
        raise ValueError(f"path {path!r} must be relative")
    parts = path.split("/")
    if ".." in parts:
        raise ValueError(f"path {path!r} must not contain '..'")
    if "" not in parts and "." not in parts:
        return path                                   # already clean (most paths: no string rebuilt)
    clean = "/".join(p for p in parts if p not in ("", "."))
    if not clean:
        raise ValueError(f"path {path!r} is empty")
    return clean


_SOURCE_ROOT = Path(__file__).resolve().parent.parent


def shipped_dir(folder: str) -> Path:
    """A folder of data shipped with Stratum (`nickel`, `repo_template`): the top-level folder of a source
    checkout, else the wheel's data package `daemon._<name>` (setup.py maps them there)."""
    checkout = _SOURCE_ROOT / folder
    if (checkout / ".stratum-data").exists():
        return checkout
    # The data packages have no __init__.py (nickel/ must never shadow py-nickel), so they are namespace
    # packages: importlib.resources gives a MultiplexedPath for them, the spec gives the real folder.
    package = {"nickel": "daemon._nickel", "repo_template": "daemon._template"}[folder]
    spec = importlib.util.find_spec(package)
    locations = list(spec.submodule_search_locations or []) if spec is not None else []
    if not locations:
        raise FileNotFoundError(f"Stratum's {folder}/ data is not installed; reinstall stratumops")
    return Path(locations[0])


def nickel_dir() -> Path:
    """The folder of Stratum's Nickel contracts (put on every evaluation's import path)."""
    return shipped_dir("nickel")
