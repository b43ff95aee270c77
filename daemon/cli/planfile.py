"""Saved plans (`stratum plan -o FILE`, `stratum apply FILE`), as Terraform's `-out`: the file names the
revision and a fingerprint of the plan; applying it is refused when the branch or the observed state moved.

The file is JSON (mode 0600: the diffs in it show host file contents; files that may carry a secret appear
only as fingerprints). Format:

    {"stratum_plan": 1, "repo": ..., "branch": ..., "revision": ..., "fingerprint": ..., "plan": {...}}
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any

from daemon.errors import StratumError

VERSION = 1
HINT = "make a new one with `stratum plan -o FILE`, review it, then `stratum apply FILE`"


def write(path: Path, plan: dict[str, Any], repo: str, branch: str) -> None:
    """Write `plan` to `path` (atomically, 0600)."""
    data = {"stratum_plan": VERSION, "repo": repo, "branch": branch, "revision": plan["revision"],
            "fingerprint": plan["fingerprint"], "plan": plan}
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as fh:
            json.dump(data, fh, indent=1, default=str)
        os.replace(tmp, path)
    except OSError as err:
        tmp.unlink(missing_ok=True)
        raise StratumError(f"cannot write the plan file: {err.strerror}", where=str(path),
                           hint="choose a writable path") from err


def _looks_like_revision(text: str) -> bool:
    """A commit id (7-40 hex digits), a branch-like name or a relative revision (`main~1`, `HEAD^`)."""
    return bool(re.fullmatch(r"[0-9a-f]{7,40}|[A-Za-z0-9._/-]+([~^][0-9]*)*", text)) and "." not in text

def read(path: Path) -> dict[str, Any]:
    """A saved plan, checked for shape; StratumError saying what is wrong otherwise."""
    try:
        raw = path.read_bytes()
    except OSError as err:
        # `stratum apply 4bc40ba7a031` (Terraform habit, or the form `rollback` takes) names a revision, not a file
        hint = (f"to apply the revision {path}, use `stratum apply --rev {path}`"
                if isinstance(err, FileNotFoundError) and _looks_like_revision(str(path)) else HINT)
        raise StratumError(f"cannot read the plan file: {err.strerror}", where=str(path), hint=hint) from err
    try:
        data = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as err:
        raise StratumError("not a Stratum plan file (not JSON)", where=str(path), hint=HINT) from err
    if not isinstance(data, dict) or data.get("stratum_plan") != VERSION or not all(
            isinstance(data.get(k), str) for k in ("revision", "fingerprint", "branch")):
        raise StratumError(f"not a Stratum plan file (version {VERSION} expected)", where=str(path), hint=HINT)
    return data


def check(saved: dict[str, Any], now: dict[str, Any], where: str) -> None:
    """Refuse when the branch's head or the plan (actions, observed state) differ from the saved one."""
    if now["revision"] != saved["revision"]:
        raise StratumError(f"the branch {saved['branch']} moved since the plan was made: it was at "
                           f"{saved['revision'][:12]}, it is at {now['revision'][:12]}; nothing was applied",
                           where=where, hint=HINT)
    if now.get("problems"):
        raise StratumError("the planned revision is now rejected; nothing was applied", where=where,
                           hint="run `stratum plan` to see why")
    if now["fingerprint"] != saved["fingerprint"]:
        raise StratumError("the observed state changed since the plan was made (the host, or what was "
                           "applied since); nothing was applied", where=where, hint=HINT)
