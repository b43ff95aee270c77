"""The `local` provider: files, directories, symlinks, commands and systemd unit files under one root.

Every path is resolved under the root, refusing `..`, absolute paths and symlinks (committed or found on
disk) that lead out of it. Writes are atomic (temp file + rename, which replaces a link instead of following
it). This module is the only place infra touches the host.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import stat
import subprocess
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

from reconcilers.errors import ApplyError, PathEscapeError
from reconcilers.infra.model import ObservedResource

MAX_OUTPUT = 2000
TEMP_SUFFIX = ".stratum-tmp"          # `.<name>.<random>.stratum-tmp`: written, then renamed over `<name>`


def _temp_name(path: Path) -> Path:
    """A fresh temporary name beside `path`: unique per write, so removing a stray left by a killed apply can
    never race with a write of the same file in this run (rollback runs both at once)."""
    # os.urandom, not the `secrets` module: a benchmark run as `python bench/x.py` has bench/ first on sys.path,
    # where bench/secrets.py stands in for the standard library's module.
    return path.with_name(f".{path.name}.{os.urandom(4).hex()}{TEMP_SUFFIX}")


class LocalProvider:
    """Observe and change resources under `root` (created when missing)."""

    def __init__(self, root: Path) -> None:
        root.mkdir(parents=True, exist_ok=True)
        self.root = root.resolve()
        self._root = str(self.root)

    # paths ------------------------------------------------------------------------------------------
    def resolve(self, rel: str, *, follow_last: bool = False, cache: dict[str, str] | None = None) -> Path:
        """The absolute path of `rel` under the root (see `resolve_str`)."""
        return Path(self.resolve_str(rel, follow_last=follow_last, cache=cache))

    def resolve_str(self, rel: str, *, follow_last: bool = False, cache: dict[str, str] | None = None) -> str:
        """The absolute path of `rel` under the root; raises PathEscapeError when it would leave it.

        `cache` maps parent folders to their real paths for the length of one read-only pass (observe,
        validate), where thousands of resources share a few folders; writes always resolve afresh.
        """
        if not rel or rel.startswith("/") or "\x00" in rel or (".." in rel and ".." in rel.split("/")):
            raise PathEscapeError(f"path {rel!r} is not relative to the root", hint="use a relative path")
        parent_rel, _, name = rel.rstrip("/").rpartition("/")
        parent = self._real_folder(parent_rel, cache)
        if parent != self._root and not parent.startswith(self._root + "/"):
            raise PathEscapeError(f"path {rel!r} leads out of the root {self.root} through a symlink",
                                  hint="remove the symlink on the host or change the path")
        path = os.path.join(parent, name)
        if follow_last and os.path.islink(path):
            real = os.path.realpath(path)
            if real != self._root and not real.startswith(self._root + "/"):
                raise PathEscapeError(f"path {rel!r} is a symlink out of the root")
        return path

    def escapes(self, rels: Iterable[str]) -> dict[str, PathEscapeError]:
        """The error `resolve_str` gives for each of `rels` that would leave the root, in one read-only pass:
        each folder is resolved once and each path checked as text once (20,000 files in 100 folders cost a
        run's validation 20,000 `resolve_str` calls before)."""
        cache: dict[str, str] = {}
        by_folder: dict[str, list[str]] = {}
        suspect: list[str] = []
        for rel in set(rels):
            if not rel or rel[0] == "/" or "\x00" in rel or ".." in rel.split("/"):
                suspect.append(rel)
            else:
                by_folder.setdefault(rel.rstrip("/").rpartition("/")[0], []).append(rel)
        for folder, members in by_folder.items():
            real = self._real_folder(folder, cache)
            if real != self._root and not real.startswith(self._root + "/"):
                suspect.extend(members)
        out: dict[str, PathEscapeError] = {}
        for rel in suspect:                      # the exact error, from the one place that words it
            try:
                self.resolve_str(rel, cache=cache)
            except PathEscapeError as err:
                out[rel] = err
        return out

    def _real_folder(self, folder: str, cache: dict[str, str] | None) -> str:
        """`os.path.realpath` of a root-relative folder, one component at a time: an lstat per component, and
        the real path only of components that are symlinks. With a cache, the folders' common prefixes are
        resolved once (20,000 files in 100 folders: ~100 lstats, not realpath's ~600 per pass)."""
        if cache is not None and folder in cache:
            return cache[folder]
        current, done = self._root, ""
        parts = folder.split("/") if folder else []
        start = 0
        if cache is not None:                         # the longest prefix resolved before
            for i in range(len(parts) - 1, 0, -1):
                hit = cache.get("/".join(parts[:i]))
                if hit is not None:
                    current, done, start = hit, "/".join(parts[:i]), i
                    break
        for part in parts[start:]:
            done = f"{done}/{part}" if done else part
            if part == "..":                          # (resolve_str refuses `..`; kept exact all the same)
                current = os.path.dirname(current)
            elif part not in ("", "."):
                candidate = os.path.join(current, part)
                try:
                    is_link = stat.S_ISLNK(os.lstat(candidate).st_mode)
                except OSError:
                    is_link = False                   # missing: kept as written, as realpath does
                current = os.path.realpath(candidate) if is_link else candidate
            if cache is not None:
                cache[done] = current
        return current

    # observe ----------------------------------------------------------------------------------------
    def observe(self, resource_kind: str, rel: str, cache: dict[str, str] | None = None) -> ObservedResource:
        """What is at `rel` now."""
        if not rel:
            return ObservedResource(exists=False)
        try:
            path = self.resolve_str(rel, cache=cache)
        except PathEscapeError:
            return ObservedResource(exists=True, kind="other")
        if cache is not None and self._folder_absent(path.rpartition("/")[0], cache):
            return ObservedResource(exists=False)     # what lstat would say, without one call per file in it
        try:
            st = os.lstat(path)
        except FileNotFoundError:
            return ObservedResource(exists=False)
        mode = format(stat.S_IMODE(st.st_mode), "04o")
        if stat.S_ISLNK(st.st_mode):
            return ObservedResource(exists=True, kind="symlink", target=os.readlink(path))
        if stat.S_ISDIR(st.st_mode):
            return ObservedResource(exists=True, kind="directory", mode=mode)
        if stat.S_ISREG(st.st_mode):
            digest = _file_digest(path) if resource_kind != "command" else ""
            return ObservedResource(exists=True, kind="file", content_hash=digest, mode=mode)
        return ObservedResource(exists=True, kind="other", mode=mode)

    @staticmethod
    def _folder_absent(folder: str, cache: dict[str, str]) -> bool:
        """Whether a (resolved) folder does not exist, asked once per folder in a pass: a first apply observes
        5,000 files in 50 missing folders. Only a missing folder counts; anything else (present, unreadable, a
        file) leaves each path to its own lstat, as before. Kept in the pass's cache under keys no relative
        path can have (they start with NUL)."""
        key = "\x00absent:" + folder
        known = cache.get(key)
        if known is None:
            try:
                os.lstat(folder)
                known = ""
            except FileNotFoundError:
                known = "1"
            except OSError:
                known = ""
            cache[key] = known
        return known == "1"

    # apply ------------------------------------------------------------------------------------------
    def write_file(self, rel: str, content: str, mode: str) -> None:
        """Atomically write a file with the given octal mode."""
        path = self.resolve(rel)
        path.parent.mkdir(parents=True, exist_ok=True)
        if path.is_dir() and not path.is_symlink():
            raise ApplyError(f"{rel} is a directory on the host", hint="remove it or change the path")
        tmp = _temp_name(path)
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, int(mode, 8))
        try:
            try:
                os.write(fd, content.encode())
                os.fchmod(fd, int(mode, 8))
                os.fsync(fd)
            finally:
                os.close(fd)
            os.replace(tmp, path)
        except BaseException:
            tmp.unlink(missing_ok=True)    # a full disk or a stop mid-write leaves no debris of ours
            raise

    def make_directory(self, rel: str, mode: str) -> None:
        """Create a directory (and parents) and set its mode."""
        path = self.resolve(rel)
        if path.is_symlink() or (path.exists() and not path.is_dir()):
            path.unlink()
        path.mkdir(parents=True, exist_ok=True)
        os.chmod(path, int(mode, 8))

    def make_symlink(self, rel: str, target: str) -> None:
        """Point a link at `target` (root-relative), written as a relative link that stays inside the root."""
        path = self.resolve(rel)
        dest = self.resolve(target)
        path.parent.mkdir(parents=True, exist_ok=True)
        link = os.path.relpath(dest, path.parent)
        tmp = _temp_name(path)
        os.symlink(link, tmp)
        os.replace(tmp, path)

    def stray_temps(self, folders: Iterable[str]) -> list[str]:
        """Root-relative paths of our temporary files (`.<name>[.<random>].stratum-tmp`) in the given root-relative
        folders: debris of an apply killed between writing and renaming. Read-only."""
        found: list[str] = []
        cache: dict[str, str] = {}
        for folder in sorted(set(folders)):
            try:
                real = self.resolve_str(f"{folder}/x" if folder else "x", cache=cache).rpartition("/")[0]
                # Names first (listdir is one C call), then a look only at the few that match: a folder of
                # 200 managed files is read on every run.
                names = [n for n in os.listdir(real) if n.endswith(TEMP_SUFFIX) and n.startswith(".")
                         and not _is_dir(os.path.join(real, n))]
            except (OSError, PathEscapeError):
                continue               # a folder that is gone, unreadable or leads out: nothing of ours there
            found.extend(f"{folder}/{n}" if folder else n for n in names)
        return sorted(found)

    def remove_stray(self, rel: str) -> str:
        """Remove one of our temporary files (never anything else)."""
        name = rel.rpartition("/")[2]
        if not (name.startswith(".") and name.endswith(TEMP_SUFFIX)):
            raise ApplyError(f"{rel} is not a Stratum temporary file", hint="report this bug")
        path = self.resolve(rel)
        try:
            if path.is_dir() and not path.is_symlink():
                return "kept: a directory"
            path.unlink()
        except FileNotFoundError:
            return "already absent"
        return ""

    def remove(self, kind: str, rel: str) -> str:
        """Remove what a resource created; returns a note when something was kept."""
        path = self.resolve(rel)
        if not path.exists() and not path.is_symlink():
            return "already absent"
        if kind == "directory" and path.is_dir() and not path.is_symlink():
            if any(path.iterdir()):
                return "kept: directory not empty"
            path.rmdir()
            return ""
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
            return ""
        path.unlink()
        return ""

    def run_command(self, command: str, timeout: float, env: dict[str, str],
                    redact: Callable[[str], str] | None = None) -> tuple[int, str]:
        """Run a shell command with the root as working directory; returns (exit code, output tail). `redact`
        sees the whole output before it is cut to its tail: a secret straddling the cut would otherwise
        survive as a fragment no redaction recognises."""
        full_env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "STRATUM_ROOT": str(self.root),
                    "HOME": str(self.root), "LANG": "C.UTF-8", **env}
        try:
            proc = subprocess.run(["/bin/sh", "-c", command], cwd=self.root, env=full_env, capture_output=True,
                                  timeout=timeout, stdin=subprocess.DEVNULL, check=False)
        except subprocess.TimeoutExpired as err:
            raise ApplyError(f"command timed out after {timeout:g} s", hint="raise `timeout` or fix it") from err
        output = (proc.stdout + proc.stderr).decode(errors="replace")
        if redact is not None:
            output = redact(output)
        return proc.returncode, output[-MAX_OUTPUT:]

    # the provider Protocol (reconcilers/infra/provider.py) ------------------------------------------------
    def apply(self, rid: str, kind: str, spec: Mapping[str, Any]) -> str:
        """Create or update resource `rid` of `kind` from its spec."""
        if kind in ("file", "systemd_unit"):
            path = spec["path"] if kind == "file" else f"etc/systemd/system/{spec['name']}"
            self.write_file(path, spec["content"], spec["mode"])
        elif kind == "directory":
            self.make_directory(spec["path"], spec["mode"])
        elif kind == "symlink":
            self.make_symlink(spec["path"], spec["target"])
        elif kind == "command":
            return self._command(rid, spec)
        else:
            raise ApplyError(f"unknown resource kind {kind}", where=rid)
        return ""

    def destroy(self, kind: str, ref: str) -> str:
        """Remove what a resource created (see `remove`)."""
        return self.remove(kind, ref)

    def command(self, rid: str, spec: Mapping[str, Any], redact: Callable[[str], str] | None = None) -> str:
        """Run a `command` resource; `redact` is applied to its whole output before anything is cut or kept
        (the infra reconciler passes one that hides the secret values the command's env received)."""
        return self._command(rid, spec, redact)

    def _command(self, rid: str, spec: Mapping[str, Any], redact: Callable[[str], str] | None = None) -> str:
        if "unless" in spec:
            code, _ = self.run_command(spec["unless"], float(spec.get("timeout", 300)), spec.get("env", {}), redact)
            if code == 0:
                return "skipped: `unless` succeeded"
        code, output = self.run_command(spec["run"], float(spec.get("timeout", 300)), spec.get("env", {}), redact)
        if code != 0:
            raise ApplyError(f"command exited {code}: {output.strip()[-400:]}", where=f"infra:{rid}",
                             hint="fix the command; the run was rolled back")
        return f"exit 0{': ' + output.strip()[-200:] if output.strip() else ''}"


def _is_dir(path: str) -> bool:
    """True for a directory (not followed through a link); False for anything else, or nothing any more."""
    try:
        return stat.S_ISDIR(os.lstat(path).st_mode)
    except OSError:
        return False


def _file_digest(path: str) -> str:
    with open(path, "rb") as fh:
        return hashlib.file_digest(fh, "sha256").hexdigest()


def content_hash(content: str) -> str:
    """The sha256 hex digest of text content, as observe computes it."""
    return hashlib.sha256(content.encode()).hexdigest()

