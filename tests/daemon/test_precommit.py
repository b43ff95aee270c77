"""Stratum's `.pre-commit-hooks.yaml` under the real pre-commit: a team's ops repo names this project as a hook
repository, pre-commit installs it (language python: a venv, `pip install .` and every dependency), and
`git commit` then runs the same checks the daemon runs, on what is being committed.

The hook repository is a git repo holding a copy of the checkout's files (uncommitted edits included), so
the hooks tested are the ones in the working tree. The install takes about 45 s here (dependency resolution
over the package index, then unpacking ~450 MB: onnxruntime, numpy, duckdb, ...), so one pre-commit home is
shared by the whole module and every test that needs it is marked slow. pip keeps its cache and configuration (HOME is
left alone), which is what makes a second session's install faster on a machine that downloads from PyPI.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.fixtures import GIT_ENV

ROOT = Path(__file__).resolve().parents[2]
HOOK_IDS = ("stratum-validate", "stratum-secrets", "stratum-knowledge")
# A field the `'file` contract does not know, inserted after line 8 of the template's infra/motd.ncl.
UNKNOWN_FIELD = '      colour = "blue",\n'


def _run(argv: list[str | Path], cwd: Path, env: dict[str, str], timeout: float = 120,
         ) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(a) for a in argv], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=timeout, check=False)


def _env(**extra: str) -> dict[str, str]:
    """The environment for git, pre-commit and the hooks: nothing of the checkout (no PYTHONPATH, no
    STRATUM_*), no user or system git configuration, a fixed identity."""
    env = {k: v for k, v in os.environ.items()
           if k != "PYTHONPATH" and not k.startswith(("STRATUM_", "GIT_", "PRE_COMMIT"))}
    return {**env, **GIT_ENV, "GIT_CONFIG_GLOBAL": os.devnull, **extra}


def _copy_checkout(dest: Path) -> None:
    listed = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
                            cwd=ROOT, capture_output=True, check=True).stdout.decode().split("\0")
    for rel in filter(None, listed):
        if (ROOT / rel).is_file():
            (dest / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / rel, dest / rel)


@dataclass(frozen=True)
class PreCommit:
    """pre-commit with Stratum's hooks installed once: the hook repo, its commit and the shared home."""

    home: Path
    hook_repo: Path
    rev: str

    def env(self, tmp: Path) -> dict[str, str]:
        """The environment of one test: the shared pre-commit home, the test's own state directory."""
        return _env(PRE_COMMIT_HOME=str(self.home), XDG_STATE_HOME=str(tmp / "state"))

    def config(self) -> str:
        """A .pre-commit-config.yaml using this project as a hook repository, pinned to its commit."""
        hooks = "".join(f"      - id: {h}\n" for h in HOOK_IDS)
        return f"repos:\n  - repo: {self.hook_repo}\n    rev: {self.rev}\n    hooks:\n{hooks}"


class Ops:
    """A team's ops repository from `stratum init`, configured to use Stratum's hooks."""

    def __init__(self, path: Path, pre_commit: PreCommit, tmp: Path) -> None:
        self.path = path
        self.env = pre_commit.env(tmp)
        init = _run([sys.executable, "-c", "from daemon.cli.main import main; main()", "init", path], tmp,
                    {**self.env, "PYTHONPATH": str(ROOT)})
        assert init.returncode == 0, init.stderr
        (path / ".pre-commit-config.yaml").write_text(pre_commit.config())
        self.git("add", "-A")
        self.git("commit", "-q", "-m", "use Stratum's hooks")

    def git(self, *args: str) -> str:
        """Run git and require success; stdout."""
        proc = _run(["git", *args], self.path, self.env)
        assert proc.returncode == 0, f"git {' '.join(args)}: {proc.stdout}{proc.stderr}"
        return proc.stdout.strip()

    def pre_commit(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        """Run pre-commit (the test venv's) in the repo."""
        return _run([sys.executable, "-m", "pre_commit", *args], self.path, self.env, timeout)

    def commit(self, *args: str) -> subprocess.CompletedProcess[str]:
        """`git commit` with the installed hook; the process (stdout and stderr carry the hooks' output)."""
        return _run(["git", "commit", *args], self.path, self.env)

    def head(self) -> str:
        """The current commit."""
        return self.git("rev-parse", "HEAD")

    def daemon_validate(self, rev: str = "HEAD") -> subprocess.CompletedProcess[str]:
        """The daemon's own check of a commit: the checkout's `stratum validate --rev`."""
        return _run([sys.executable, "-c", "from daemon.cli.main import main; main()", "validate", "--rev", rev,
                     "--repo", self.path], self.path, {**self.env, "PYTHONPATH": str(ROOT)})

    def motd(self, broken: bool, text: str = "Welcome") -> str:
        """The template's motd file with another greeting, and with an unknown field when `broken`."""
        lines = (self.path / "infra/motd.ncl").read_text().replace("Welcome", text).splitlines(keepends=True)
        lines = [line for line in lines if line != UNKNOWN_FIELD]
        if broken:
            lines.insert(8, UNKNOWN_FIELD)
        return "".join(lines)

    def write(self, rel: str, content: str) -> None:
        """Write a file in the work tree (not staged)."""
        (self.path / rel).parent.mkdir(parents=True, exist_ok=True)
        (self.path / rel).write_text(content)


@pytest.fixture(scope="session")
def pre_commit(tmp_path_factory: pytest.TempPathFactory) -> PreCommit:
    """Stratum's hooks installed by pre-commit once for the module (the slow part: a real pip install)."""
    tmp = tmp_path_factory.mktemp("pre-commit")
    hook_repo = tmp / "stratum"
    _copy_checkout(hook_repo)
    env = _env(HOME=str(tmp))
    for args in (("init", "-q", "-b", "main"), ("add", "-A"), ("commit", "-q", "-m", "the checkout")):
        assert _run(["git", *args], hook_repo, env).returncode == 0, args
    rev = _run(["git", "rev-parse", "HEAD"], hook_repo, env).stdout.strip()
    shared = PreCommit(tmp / "home", hook_repo, rev)
    installed = Ops(tmp / "ops", shared, tmp).pre_commit("install-hooks", timeout=900)   # a real pip install
    assert installed.returncode == 0, installed.stdout[-5000:] + installed.stderr[-5000:]
    return shared


@pytest.fixture
def ops(pre_commit: PreCommit, tmp_path: Path) -> Ops:
    """A fresh ops repo with the hook installed in .git/hooks/pre-commit."""
    repo = Ops(tmp_path / "ops", pre_commit, tmp_path)
    installed = repo.pre_commit("install")
    assert installed.returncode == 0, installed.stderr
    return repo


# -- the manifest -------------------------------------------------------------------------------------------
def test_the_manifest_is_valid_for_pre_commit() -> None:
    """pre-commit's own schema accepts .pre-commit-hooks.yaml, and the template's local config."""
    env = _env()
    for verb, path in (("validate-manifest", ROOT / ".pre-commit-hooks.yaml"),
                       ("validate-config", ROOT / "repo_template/.pre-commit-config.yaml")):
        proc = _run([sys.executable, "-m", "pre_commit", verb, path], ROOT, env)
        assert proc.returncode == 0, proc.stdout + proc.stderr


# -- through git commit -------------------------------------------------------------------------------------
@pytest.mark.slow
def test_every_hook_passes_on_the_template(ops: Ops) -> None:
    """`pre-commit run --all-files` passes on what `stratum init` lays down, each hook actually running."""
    proc = ops.pre_commit("run", "--all-files")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    for name in ("stratum validate", "stratum secrets", "stratum knowledge lint"):
        assert re.search(rf"^{name}\.+Passed$", proc.stdout, re.MULTILINE), proc.stdout


@pytest.mark.slow
def test_a_contract_error_blocks_the_commit_and_names_the_file(ops: Ops) -> None:
    """An unknown field staged in infra/motd.ncl stops `git commit` with file:line; the daemon rejects the
    same content when it is committed anyway, so hook and daemon agree."""
    before = ops.head()
    ops.write("infra/motd.ncl", ops.motd(broken=True))
    ops.git("add", "infra/motd.ncl")
    proc = ops.commit("-m", "colourful motd")
    assert proc.returncode != 0
    out = proc.stdout + proc.stderr
    assert re.search(r"infra/motd\.ncl:\d+(:\d+)?: .*colour", out), out
    assert ops.head() == before
    ops.git("commit", "-q", "--no-verify", "-m", "colourful motd, unchecked")
    daemon = ops.daemon_validate()
    assert daemon.returncode == 1
    assert "infra/motd.ncl:" in daemon.stderr and "colour" in daemon.stderr


@pytest.mark.slow
def test_a_broken_change_left_unstaged_does_not_block(ops: Ops) -> None:
    """A good change is staged and a broken edit of the same file stays in the work tree: the commit passes,
    records the good content, the daemon accepts it, and the broken edit is still there afterwards."""
    good = ops.motd(broken=False, text="Hello")
    ops.write("infra/motd.ncl", good)
    ops.git("add", "infra/motd.ncl")
    ops.write("infra/motd.ncl", ops.motd(broken=True, text="Hello"))
    proc = ops.commit("-m", "friendlier motd")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert ops.git("show", "HEAD:infra/motd.ncl") + "\n" == good
    assert UNKNOWN_FIELD in (ops.path / "infra/motd.ncl").read_text()
    daemon = ops.daemon_validate()
    assert daemon.returncode == 0, daemon.stderr


@pytest.mark.slow
def test_a_broken_untracked_file_does_not_block(ops: Ops) -> None:
    """A broken infra file that was never added is not part of the commit, so it does not block it (pre-commit
    leaves untracked files in place: this is the hook reading the index, not the work tree)."""
    ops.write("infra/draft.ncl", "{ resources = { draft = { kind = 'nonsense } } }\n")
    ops.write("infra/motd.ncl", ops.motd(broken=False, text="Hello"))
    ops.git("add", "infra/motd.ncl")
    proc = ops.commit("-m", "friendlier motd")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert (ops.path / "infra/draft.ncl").exists()
    assert ops.daemon_validate().returncode == 0


@pytest.mark.slow
def test_staging_the_fix_lets_the_commit_through(ops: Ops) -> None:
    """After a blocked commit, staging the fix passes the hook, and the daemon accepts that very commit."""
    ops.write("infra/motd.ncl", ops.motd(broken=True, text="Hello"))
    ops.git("add", "infra/motd.ncl")
    assert ops.commit("-m", "motd").returncode != 0
    ops.write("infra/motd.ncl", ops.motd(broken=False, text="Hello"))
    ops.git("add", "infra/motd.ncl")
    proc = ops.commit("-m", "motd")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "Hello" in ops.git("show", "HEAD:infra/motd.ncl")
    daemon = ops.daemon_validate(ops.head())
    assert daemon.returncode == 0, daemon.stderr


@pytest.mark.slow
def test_deleting_a_file_another_imports_is_blocked(ops: Ops) -> None:
    """A commit that only deletes a file still runs the hook (always_run: pre-commit passes no deleted files,
    so a `files:` filter would skip it), and the dangling import is caught."""
    ops.write("lib/common.ncl", '{ greeting = "hi\\n" }\n')
    ops.write("infra/extra.ncl", 'let common = import "../lib/common.ncl" in\n'
              "{ resources = { extra = { kind = 'file, path = \"etc/extra\", content = common.greeting } } }\n")
    ops.git("add", "-A")
    assert ops.commit("-m", "a shared library").returncode == 0
    ops.git("rm", "-q", "lib/common.ncl")
    proc = ops.commit("-m", "tidy up")
    assert proc.returncode != 0
    assert "infra/extra.ncl:1" in proc.stdout + proc.stderr


@pytest.mark.slow
@pytest.mark.parametrize("how", ["-a", "path"])
def test_commit_all_and_commit_path_check_what_is_committed(ops: Ops, how: str) -> None:
    """`git commit -a` and `git commit infra/motd.ncl` commit a broken work-tree file that was never staged:
    the hook must check that, not the (good) index."""
    ops.write("infra/motd.ncl", ops.motd(broken=True))
    proc = ops.commit("-a", "-m", "motd") if how == "-a" else ops.commit("-m", "motd", "infra/motd.ncl")
    assert proc.returncode != 0, "a broken revision was committed: " + proc.stdout
    assert "infra/motd.ncl:" in proc.stdout + proc.stderr


# Assembled, so that no key-shaped text sits in this file for scanners to trip over.
_PEM = ("-----BEGIN " + "OPENSSH PRIVATE KEY-----\n" + "b3BlbnNzaC1rZXktdjEAAAAA" * 3 + "\n-----END "
        + "OPENSSH PRIVATE KEY-----\n")


@pytest.mark.slow
@pytest.mark.parametrize(("rel", "content", "why"), [
    ("deploy/id_ed25519", _PEM, "private key"),
    ("secrets/app.yaml", "db_password: hunter2-but-longer\n", "db_password: value is not encrypted"),
])
def test_the_secrets_hook_blocks_plaintext_secrets(ops: Ops, rel: str, content: str, why: str) -> None:
    """A private key staged anywhere, or a secret manifest with a plaintext value, stops the commit, naming
    the file and the reason."""
    ops.write(rel, content)
    ops.git("add", rel)
    proc = ops.commit("-m", "credentials")
    assert proc.returncode != 0
    out = proc.stdout + proc.stderr
    assert re.search(r"^stratum secrets\.+Failed$", out, re.MULTILINE), out
    assert re.search(rf"^{re.escape(rel)}(:\d+)?: .*{why}", out, re.MULTILINE | re.IGNORECASE), out
