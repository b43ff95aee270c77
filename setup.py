"""Packaging glue: nickel/ and repo_template/ are top-level folders (the product layout) that ship inside the
wheel as the data packages `daemon._nickel` and `daemon._template`, so an installed, non-editable Stratum can
run `stratum init` and `stratum validate`. pyproject.toml cannot mix package discovery with such a mapping."""

from __future__ import annotations

import os

from setuptools import find_packages, setup


def _data_files(root: str) -> list[str]:
    out = []
    for base, dirs, files in os.walk(root):
        dirs[:] = [d for d in dirs if d not in ("__pycache__", ".git")]
        for name in files:
            out.append(os.path.relpath(os.path.join(base, name), root))
    return out


setup(
    packages=[*find_packages(include=["daemon", "daemon.*", "reconcilers", "reconcilers.*"]),
              "daemon._nickel", "daemon._template"],
    package_dir={"daemon._nickel": "nickel", "daemon._template": "repo_template"},
    package_data={
        "daemon._nickel": _data_files("nickel"),
        "daemon._template": _data_files("repo_template"),
        "reconcilers": ["**/*.ncl", "**/*.cedar", "**/*.json", "**/*.toml", "**/*.md"],
    },
)
