"""Checks on a revision's tree as a whole, before anything in it is loaded: file names and the file count.

A file name that is not UTF-8 (or holds control characters) cannot be shown, logged or indexed faithfully: it
made DuckDB fail the run with a surrogate error. A tree of tens of thousands of files is either a mistake or an
attack on the daemon's time. Both reject the revision with the offending path shown escaped, or the counts.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from daemon.git.source import TreeScan
from reconcilers.base import Problem


def tree_problems(scan: TreeScan, host_cap: int) -> list[Problem]:
    """Problems of the names and count `scan` found, against the host's cap on files per revision."""
    problems = [Problem("file name is not valid UTF-8 or holds control characters (shown escaped)", path,
                        reconciler="source", hint="rename the file with `git mv` to a plain UTF-8 name")
                for path in scan.bad_names]
    if scan.over_cap:
        problems.append(Problem(
            f"the revision holds over {host_cap} files, the host's cap (max_files)", reconciler="source",
            hint="remove files from the repository, or raise `max_files` in stratumd.toml"))
    return problems


def repo_cap_problems(scan: TreeScan, repo_settings: Mapping[str, Any], host_cap: int) -> list[Problem]:
    """A problem when the tree holds more files than `max_files` in stratum.ncl asks for (never above the
    host's cap: the repo may only lower it)."""
    wanted = repo_settings.get("max_files")
    if not isinstance(wanted, int) or scan.over_cap:
        return []
    cap = min(wanted, host_cap)
    if scan.files <= cap:
        return []
    return [Problem(f"the revision holds {scan.files} files, over the cap of {cap} (max_files in stratum.ncl"
                    f"{', bounded by the host' if wanted > host_cap else ''})", "stratum.ncl", reconciler="source",
                    hint="remove files, or raise max_files in stratum.ncl (up to the host's max_files)")]
