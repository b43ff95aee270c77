"""Where the shipped data lives: the Nickel contract library and the repo template.

In a source checkout they are the top-level `nickel/` and `repo_template/` folders; in an installed wheel they
are the data packages `daemon._nickel` and `daemon._template` (see setup.py). The lookup is the contract's
(reconcilers/locations.py), which reconcilers use too.
"""

from __future__ import annotations

from pathlib import Path

from reconcilers.locations import nickel_dir as nickel_dir
from reconcilers.locations import shipped_dir


def template_dir() -> Path:
    """The folder `stratum init` copies into a new ops repo."""
    return shipped_dir("repo_template")
