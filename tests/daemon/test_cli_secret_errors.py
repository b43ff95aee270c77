"""Every `stratum secret` verb, run as a real `stratum` process, answers bad arguments and bad files with
`error: where: what` and a hint on stderr and exit code 1, never a Python traceback (issue 9, item 5)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.daemon.test_cli_secret import ROOT, Env

STRATUM = [sys.executable, "-c", "from daemon.cli.main import main; main()"]


@pytest.fixture
def env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Env:
    return Env(tmp_path, monkeypatch)


def stratum(env: Env, *args: str, key_file: Path | None = None, stdin: str = "") -> subprocess.CompletedProcess[str]:
    """`stratum ARGS` in the repo, as a user runs it (the main CLI, not the stand-alone secret group)."""
    environ = {**os.environ, "PYTHONPATH": str(ROOT), "STRATUM_KEY_FILE": str(key_file or env.key_file)}
    return subprocess.run([*STRATUM, *args], cwd=env.repo.path, env=environ, input=stdin, capture_output=True,
                          text=True, timeout=120, check=False)


def assert_clean_error(proc: subprocess.CompletedProcess[str], *expected: str) -> None:
    """Exit 1, a located `error:` line with a hint, the expected words, and no traceback anywhere."""
    out = proc.stdout + proc.stderr
    assert "Traceback" not in out, out
    assert proc.returncode == 1, out
    assert proc.stderr.startswith("error: ") and "hint:" in proc.stderr, out
    for word in expected:
        assert word in out, (word, out)


def test_encrypt_with_no_matching_creation_rule(env: Env) -> None:
    """A file no creation rule covers: names the rules file and the path, says to add a rule or --recipient."""
    file = env.path("elsewhere/app.yaml")
    file.parent.mkdir(parents=True)
    file.write_text("a: 1\n")
    assert_clean_error(stratum(env, "secret", "encrypt", str(file)), "no creation rule", "elsewhere/app.yaml",
                       "--recipient")


def test_decrypt_of_a_file_signed_by_an_untrusted_signer(env: Env, tmp_path: Path) -> None:
    """A manifest signed by a key the rules do not trust: names the signer's short id and the rules file."""
    stranger = tmp_path / "stranger.key"
    made = stratum(env, "secret", "keygen", "--out", str(stranger))
    assert made.returncode == 0, made.stderr
    file = env.path("secrets/app.yaml")
    file.parent.mkdir(parents=True, exist_ok=True)
    file.write_text("a: 1\n")
    sealed = stratum(env, "secret", "encrypt", "--recipient", env.recipient, str(file), key_file=stranger)
    assert sealed.returncode == 0, sealed.stderr
    assert_clean_error(stratum(env, "secret", "decrypt", str(file)), "not a trusted signer", "sig:",
                       "trusted_signers")


def test_unset_of_a_missing_key(env: Env) -> None:
    """`unset FILE missing.key` says where the key path stops and which keys exist there."""
    file = env.manifest_file()
    assert_clean_error(stratum(env, "secret", "unset", str(file), "missing.key"), "missing.key",
                       "no key 'missing'", "keys there: api, db")


@pytest.mark.parametrize("args", [
    ("secret", "decrypt", "nope.yaml"),
    ("secret", "edit", "secrets/rules.ncl"),
    ("secret", "set", "secrets/new.yaml", ""),
    ("secret", "rotate", "secrets/rules.ncl"),
    ("secret", "updatekeys", "secrets/rules.ncl"),
    ("secret", "verify", "secrets/rules.ncl"),
    ("secret", "textconv", "nope.yaml"),
    ("secret", "merge", "nope.yaml", "secrets/rules.ncl", "nope2.yaml"),
    ("secret", "check", "--repo", "/nonexistent-dir"),
    ("secret", "decrypt", "secrets/app.yaml", "-o", "/nonexistent-dir/out.yaml"),
    ("secret", "encrypt", "secrets/app.yaml"),
])
def test_every_verb_with_bad_input_exits_1_without_traceback(env: Env, args: tuple[str, ...]) -> None:
    """Missing files, files that are not manifests, already encrypted files, unwritable outputs: exit 1 (or 2
    for a usage error), a message on stderr, no traceback."""
    env.manifest_file()
    proc = stratum(env, *args, stdin="x\n")
    out = proc.stdout + proc.stderr
    assert "Traceback" not in out, out
    assert proc.returncode in (1, 2), out
    assert proc.stderr.strip(), out
