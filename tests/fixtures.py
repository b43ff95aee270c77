"""Test helpers shared by every test module: real git repositories in temp dirs, commits, pushes, signing keys."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import stat
import subprocess
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pygit2

GIT_ENV = {
    "GIT_AUTHOR_NAME": "Test Author", "GIT_AUTHOR_EMAIL": "author@example.com",
    "GIT_COMMITTER_NAME": "Test Author", "GIT_COMMITTER_EMAIL": "author@example.com",
    "GIT_CONFIG_NOSYSTEM": "1",
}


def git(cwd: Path, *args: str, check: bool = True) -> str:
    """Run git in `cwd` with a fixed identity; returns stdout."""
    env = {**os.environ, **GIT_ENV, "HOME": str(cwd)}
    proc = subprocess.run(["git", *args], cwd=cwd, env=env, capture_output=True, text=True, check=False)
    if check and proc.returncode != 0:
        raise AssertionError(f"git {' '.join(args)} failed: {proc.stderr}")
    return proc.stdout.strip()


class WorkRepo:
    """A non-bare repository that tests write files into and commit, optionally pushing to a bare remote."""

    def __init__(self, path: Path, remote: Path | None = None) -> None:
        self.path = path
        path.mkdir(parents=True, exist_ok=True)
        git(path, "init", "-q", "-b", "main")
        if remote is not None:
            git(path, "remote", "add", "origin", str(remote))

    def write(self, files: Mapping[str, str | bytes | None]) -> None:
        """Write (str/bytes) or delete (None) files relative to the repo."""
        for rel, content in files.items():
            target = self.path / rel
            if content is None:
                if target.exists() or target.is_symlink():
                    target.unlink()
                continue
            target.parent.mkdir(parents=True, exist_ok=True)
            if isinstance(content, bytes):
                target.write_bytes(content)
            else:
                target.write_text(content)

    def commit(self, files: Mapping[str, str | bytes | None] | None = None, message: str = "change") -> str:
        """Write `files`, commit everything, return the new commit id."""
        if files:
            self.write(files)
        git(self.path, "add", "-A")
        git(self.path, "commit", "-q", "--allow-empty", "-m", message)
        return git(self.path, "rev-parse", "HEAD")

    def push(self, *extra: str) -> None:
        """Push main to the bare remote."""
        git(self.path, "push", "-q", *extra, "origin", "main")


def bare_repo(path: Path) -> Path:
    """Create an empty bare repository with `main` as its default branch."""
    path.mkdir(parents=True, exist_ok=True)
    git(path, "init", "-q", "--bare", "-b", "main")
    return path


# -- tools in a clean environment, signed commits ------------------------------------------------------------
# The outer session's agents must not sign or verify for a test: it would pass or fail for reasons of its own.
AGENT_VARS = ("SSH_AUTH_SOCK", "SSH_AGENT_PID", "GNUPGHOME", "GPG_AGENT_INFO")


def clean_env(cwd: Path, env: Mapping[str, str] | None = None) -> dict[str, str]:
    """The process environment without AGENT_VARS, with the fixed git identity, HOME=`cwd` and `env` on top."""
    full = {k: v for k, v in os.environ.items() if k not in AGENT_VARS}
    full.update({**GIT_ENV, "HOME": str(cwd), **(env or {})})
    return full


def run_tool(argv: list[str], cwd: Path, env: Mapping[str, str] | None = None, check: bool = True) -> str:
    """Run a tool in `cwd` with `clean_env(cwd, env)`; returns stdout, and fails the test on error if `check`."""
    proc = subprocess.run(argv, cwd=cwd, env=clean_env(cwd, env), capture_output=True, text=True, check=False)
    if check and proc.returncode != 0:
        raise AssertionError(f"{' '.join(argv)} failed: {proc.stderr}")
    return proc.stdout.strip()


def ssh_signing(key: Path) -> list[str]:
    """git's `-c` options to sign with the SSH key pair `key` (the private or the .pub path)."""
    return ["-c", "gpg.format=ssh", "-c", f"user.signingkey={key.with_suffix('.pub')}"]


def commit_with(repo: WorkRepo, files: Mapping[str, str | bytes | None], *, signing: Sequence[str] = (),
                message: str = "change", env: Mapping[str, str] | None = None) -> str:
    """Commit `files` (an empty commit too) through `run_tool` with `env` on top, signed (`-S`) when `signing`
    holds git's `-c` options for a key (see `ssh_signing`); returns the commit id."""
    repo.write(files)
    run_tool(["git", "add", "-A"], repo.path)
    run_tool(["git", *signing, "commit", "-q", "--allow-empty", *(["-S"] if signing else []), "-m", message],
             repo.path, env)
    return run_tool(["git", "rev-parse", "HEAD"], repo.path)


def with_signature(repo: pygit2.Repository, signed: str, tree_from: str) -> str:
    """A commit object carrying `signed`'s signature but `tree_from`'s tree (a signature copied elsewhere)."""
    commit, other = repo[signed], repo[tree_from]
    assert isinstance(commit, pygit2.Commit) and isinstance(other, pygit2.Commit)
    signature, payload = commit.gpg_signature
    content = payload.decode().replace(f"tree {commit.tree_id}", f"tree {other.tree_id}", 1)
    assert content != payload.decode()
    return str(repo.create_commit_with_signature(content, signature.decode()))


@dataclass(frozen=True)
class SshKeys:
    """Two ed25519 key pairs: alice (the one tests trust) and mallory (never trusted)."""

    alice: Path
    mallory: Path

    def allowed(self, path: Path, options: str = 'namespaces="git"', principal: str = "alice@example.com") -> Path:
        """Write an allowed-signers file trusting alice's key under `principal` with `options`; returns it."""
        key = " ".join(self.alice.with_suffix(".pub").read_text().split()[:2])
        path.write_text(f"{principal} {options} {key}\n")
        return path


def make_ssh_keys(base: Path) -> SshKeys:
    """alice's and mallory's key pairs in `base`, made with the host's ssh-keygen.

    A missing ssh-keygen fails the test rather than skipping it: .ci/run installs it, and a skip would hide the
    signature checks.
    """
    assert shutil.which("ssh-keygen"), "ssh-keygen is missing: apt-get install openssh-client (.ci/run does)"
    for name in ("alice", "mallory"):
        run_tool(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", f"{name}@example.com", "-f",
                  str(base / name)], base)
    return SshKeys(base / "alice", base / "mallory")


def infra_file(resources: str) -> str:
    """A Nickel infra file around the given resource fields."""
    return "{\n  resources = {\n" + resources + "\n  },\n}\n"


# -- Nickel resources ---------------------------------------------------------------------------------------
class Raw(str):
    """A Nickel expression written as is by `resource` (an enum tag such as 'detect, a record, ...)."""


def _ncl(value: object) -> str:
    if isinstance(value, Raw):
        return str(value)
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return str(value)
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_ncl(v) for v in value) + "]"
    if isinstance(value, Mapping):
        return "{ " + ", ".join(f"{k} = {_ncl(v)}" for k, v in value.items()) + " }"
    raise TypeError(f"no Nickel form for {value!r}")


def resource(rid: str, kind: str, **fields: object) -> str:
    """One resource field on its own line, for `infra_file`: `    rid = { kind = 'kind, ... },`."""
    body = ", ".join([f"kind = '{kind}", *(f"{k} = {_ncl(v)}" for k, v in fields.items())])
    return f"    {rid} = {{ {body} }},"


def infra(*resources: str) -> str:
    """A Nickel infra file of the given `resource(...)` lines; resource i (from 0) sits on line 3 + i."""
    return infra_file("\n".join(resources))


# -- the host root ------------------------------------------------------------------------------------------
def tree_of(root: Path) -> dict[str, tuple[str, str, str]]:
    """Everything under `root`, byte for byte: relative path -> (type, octal mode, content or link target)."""
    out: dict[str, tuple[str, str, str]] = {}
    if not root.exists():
        return out
    for base, dirs, files in os.walk(root):
        for name in sorted(dirs + files):
            path = Path(base) / name
            rel = str(path.relative_to(root))
            st = path.lstat()
            mode = format(stat.S_IMODE(st.st_mode), "04o")
            if stat.S_ISLNK(st.st_mode):
                out[rel] = ("link", "", os.readlink(path))
            elif stat.S_ISDIR(st.st_mode):
                out[rel] = ("dir", mode, "")
            else:
                out[rel] = ("file", mode, hashlib.sha256(path.read_bytes()).hexdigest())
    return out


# -- a pipeline over real things ----------------------------------------------------------------------------
class Stack:
    """A real GitSource, DuckDB index, Nickel evaluator, infra reconciler and Pipeline for one repo location.

    The host root is `<tmp>/root`, the data dir `<tmp>/data`; close() stops its own Nickel worker and closes
    the index.
    """

    def __init__(self, tmp: Path, location: str | Path, *, parallelism: int = 4, branch: str = "main",
                 evaluator: Any = None) -> None:
        from daemon.git.source import GitSource
        from daemon.index.store import Index
        from daemon.nickel.evaluator import Evaluator
        from daemon.run.pipeline import Pipeline
        from reconcilers.base import ReconcilerEnv
        from reconcilers.infra.reconciler import InfraReconciler

        self.tmp = tmp
        self.root = tmp / "root"
        self.data = tmp / "data"
        self.source = GitSource(str(location), branch, self.data)
        self.index = Index(self.data / "index.duckdb")
        # A shared evaluator (one worker for a whole test module) is what a daemon does across revisions.
        self._own_evaluator = evaluator is None
        self.evaluator = evaluator or Evaluator(self.data / "nickel-cache")
        env = ReconcilerEnv(data_dir=self.data, settings={"infra": {"root": str(self.root)}},
                            evaluator=self.evaluator)
        self.infra = InfraReconciler(env)
        self.pipeline = Pipeline(source=self.source, index=self.index, reconcilers={"infra": self.infra},
                                 evaluator=self.evaluator, parallelism=parallelism)

    def run(self, rev: str = "main", trigger: str = "test"):  # type: ignore[no-untyped-def]
        """Run one revision through the pipeline (returns its RunResult)."""
        return self.pipeline.run(rev, trigger=trigger)

    def state(self, key: str) -> str | None:
        """A value of the index's state table."""
        return self.index.get_state(key)

    def inventory_ids(self) -> set[str]:
        """The infra resource ids the index says Stratum owns."""
        return {i.resource_id for i in self.index.inventory("infra")}

    def close(self) -> None:
        """Stop the Nickel worker (unless shared) and close the index."""
        if self._own_evaluator:
            self.evaluator.close()
        self.index.close()


def wait_until(predicate: Callable[[], object], timeout: float = 10.0, interval: float = 0.01) -> object:
    """Poll `predicate` until it returns something truthy (returned); fail after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise AssertionError(f"condition not met within {timeout} s")
        time.sleep(interval)
