"""Test helpers shared by every test module: real git repositories in temp dirs, commits, pushes."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Mapping
from pathlib import Path

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


def infra_file(resources: str) -> str:
    """A Nickel infra file around the given resource fields."""
    return "{\n  resources = {\n" + resources + "\n  },\n}\n"
