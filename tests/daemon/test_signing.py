"""Commit signature verification (daemon/control/signing.py) with real keys, real ssh-keygen/gpgv and real git
commits."""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pygit2
import pytest

from daemon.control.signing import MAX_SIGNATURE_BYTES, SigningPolicy, signing_policy_from_settings, verify_commit
from daemon.errors import SettingsError
from tests.fixtures import (
    SshKeys,
    WorkRepo,
    clean_env,
    commit_with,
    make_ssh_keys,
    run_tool,
    ssh_signing,
    with_signature,
)

# Not skips: .ci/run installs these tools, and a missing one must fail loudly rather than hide the checks.
needs_ssh = pytest.mark.usefixtures("_ssh_tools")
needs_gpg = pytest.mark.usefixtures("_gpg_tools")


@pytest.fixture
def _ssh_tools() -> None:
    assert shutil.which("ssh-keygen"), "ssh-keygen is missing: apt-get install openssh-client"


@pytest.fixture
def _gpg_tools() -> None:
    missing = [t for t in ("gpg", "gpgv", "gpgconf") if shutil.which(t) is None]
    assert not missing, f"{', '.join(missing)} missing: apt-get install gnupg gpgv"


def _ssh_commit(repo: WorkRepo, key: Path, files: dict[str, str], env: dict[str, str] | None = None) -> str:
    """Commit `files` signed with the SSH key `key` (its .pub path, as git's user.signingkey); returns the id."""
    return commit_with(repo, files, signing=ssh_signing(key), message="signed", env=env)


def _git_verifies(repo: Path, commit: str, allowed: Path | None = None, env: dict[str, str] | None = None) -> bool:
    """What `git verify-commit` says of the commit (with the allowed-signers file for SSH)."""
    extra = ["-c", f"gpg.ssh.allowedSignersFile={allowed}"] if allowed else []
    argv = ["git", *extra, "verify-commit", commit]
    return subprocess.run(argv, cwd=repo, env=clean_env(repo, env), capture_output=True, check=False).returncode == 0


# -- SSH -----------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def ssh_keys(tmp_path_factory: pytest.TempPathFactory) -> SshKeys:
    """Key pairs made once per module with the host's ssh-keygen."""
    return make_ssh_keys(tmp_path_factory.mktemp("ssh-keys"))


@pytest.fixture
def work(tmp_path: Path) -> WorkRepo:
    """A fresh repository with one unsigned commit."""
    repo = WorkRepo(tmp_path / "work")
    repo.commit({"README.md": "hello\n"}, "unsigned start")
    return repo


def _policy(allowed: Path | None = None, keyring: Path | None = None, ssh_program: str = "ssh-keygen",
            gpgv_program: str = "gpgv") -> SigningPolicy:
    """A policy requiring signatures, trusting `allowed` (SSH) and/or `keyring` (GPG)."""
    return SigningPolicy(True, allowed, keyring, ssh_program, gpgv_program)


@needs_ssh
class TestSsh:
    def test_good_signature_is_valid_with_its_principal(self, ssh_keys: SshKeys, work: WorkRepo) -> None:
        """A commit signed by a key in allowed signers is valid, names its principal and key, and git agrees."""
        allowed = ssh_keys.allowed(work.path.parent / "allowed_signers")
        commit = _ssh_commit(work, ssh_keys.alice.with_suffix(".pub"), {"a.txt": "a\n"})
        v = verify_commit(pygit2.Repository(str(work.path)), commit, _policy(allowed))
        assert (v.signed, v.valid, v.method, v.principal) == (True, True, "ssh", "alice@example.com")
        assert v.key is not None and v.key.startswith("SHA256:")
        assert v.reason == f"good ssh signature by alice@example.com ({v.key})"
        assert _git_verifies(work.path, commit, allowed)

    def test_unsigned_commit_is_not_signed(self, ssh_keys: SshKeys, work: WorkRepo) -> None:
        """A commit without a signature is reported unsigned and invalid, and git agrees."""
        allowed = ssh_keys.allowed(work.path.parent / "allowed_signers")
        commit = work.commit({"a.txt": "a\n"})
        v = verify_commit(pygit2.Repository(str(work.path)), commit, _policy(allowed))
        assert (v.signed, v.valid, v.method, v.principal, v.key) == (False, False, "none", None, None)
        assert "not signed" in v.reason
        assert not _git_verifies(work.path, commit, allowed)

    def test_unknown_key_is_invalid(self, ssh_keys: SshKeys, work: WorkRepo) -> None:
        """A signature by a key that is not in allowed signers is invalid, names the key, and git agrees."""
        allowed = ssh_keys.allowed(work.path.parent / "allowed_signers")
        commit = _ssh_commit(work, ssh_keys.mallory.with_suffix(".pub"), {"a.txt": "a\n"})
        v = verify_commit(pygit2.Repository(str(work.path)), commit, _policy(allowed))
        assert (v.signed, v.valid, v.method, v.principal) == (True, False, "ssh", None)
        assert v.key is not None and v.key.startswith("SHA256:")
        assert "not in the allowed signers" in v.reason and v.key in v.reason
        assert not _git_verifies(work.path, commit, allowed)

    def test_signature_copied_onto_another_tree_is_invalid(self, ssh_keys: SshKeys, work: WorkRepo) -> None:
        """A good signature attached to a commit with a different tree does not verify, and git agrees."""
        allowed = ssh_keys.allowed(work.path.parent / "allowed_signers")
        start = run_tool(["git", "rev-parse", "HEAD"], work.path)
        signed = _ssh_commit(work, ssh_keys.alice.with_suffix(".pub"), {"a.txt": "approved\n"})
        repo = pygit2.Repository(str(work.path))
        forged = with_signature(repo, signed, start)
        v = verify_commit(repo, forged, _policy(allowed))
        assert (v.signed, v.valid, v.method, v.principal) == (True, False, "ssh", None)
        assert "not valid for this commit" in v.reason
        assert verify_commit(repo, signed, _policy(allowed)).valid
        assert not _git_verifies(work.path, forged, allowed)

    @pytest.mark.parametrize("options", ['namespaces="git",valid-before="20000101"',
                                         'namespaces="git",valid-after="29990101"'])
    def test_key_outside_its_validity_is_invalid(self, ssh_keys: SshKeys, work: WorkRepo, options: str) -> None:
        """A key whose allowed-signers validity window excludes the commit time is not accepted, and git agrees."""
        allowed = ssh_keys.allowed(work.path.parent / "allowed_signers", options)
        commit = _ssh_commit(work, ssh_keys.alice.with_suffix(".pub"), {"a.txt": "a\n"})
        v = verify_commit(pygit2.Repository(str(work.path)), commit, _policy(allowed))
        assert (v.signed, v.valid, v.principal) == (True, False, None)
        assert "no allowed signer accepts" in v.reason and ("expired" in v.reason or "not yet valid" in v.reason)
        assert not _git_verifies(work.path, commit, allowed)

    def test_validity_is_checked_at_the_committer_time(self, ssh_keys: SshKeys, work: WorkRepo) -> None:
        """A commit made while the key was valid still verifies after valid-before has passed, as in git."""
        allowed = ssh_keys.allowed(work.path.parent / "allowed_signers", 'namespaces="git",valid-before="20200101"')
        when = {"GIT_COMMITTER_DATE": "2015-06-01T12:00:00Z", "GIT_AUTHOR_DATE": "2015-06-01T12:00:00Z"}
        commit = _ssh_commit(work, ssh_keys.alice.with_suffix(".pub"), {"a.txt": "a\n"}, when)
        v = verify_commit(pygit2.Repository(str(work.path)), commit, _policy(allowed))
        assert (v.valid, v.principal) == (True, "alice@example.com")
        assert _git_verifies(work.path, commit, allowed)

    def test_other_namespace_is_invalid(self, ssh_keys: SshKeys, work: WorkRepo) -> None:
        """A key allowed only for another signature namespace may not sign commits, and git agrees."""
        allowed = ssh_keys.allowed(work.path.parent / "allowed_signers", 'namespaces="file"')
        commit = _ssh_commit(work, ssh_keys.alice.with_suffix(".pub"), {"a.txt": "a\n"})
        v = verify_commit(pygit2.Repository(str(work.path)), commit, _policy(allowed))
        assert (v.signed, v.valid, v.principal) == (True, False, None)
        assert "namespace" in v.reason and v.key is not None
        assert not _git_verifies(work.path, commit, allowed)

    def test_garbage_signature_is_invalid(self, ssh_keys: SshKeys, work: WorkRepo) -> None:
        """An SSH-armored signature that does not parse is invalid with a reason, not an exception."""
        allowed = ssh_keys.allowed(work.path.parent / "allowed_signers")
        repo = pygit2.Repository(str(work.path))
        garbage = "-----BEGIN SSH SIGNATURE-----\nbm90IGEgc2lnbmF0dXJl\n-----END SSH SIGNATURE-----"
        commit = str(repo.create_commit_with_signature(_payload_of(repo), garbage))
        v = verify_commit(repo, commit, _policy(allowed))
        assert (v.signed, v.valid, v.method, v.principal, v.key) == (True, False, "ssh", None, None)
        assert "not valid for this commit" in v.reason

    def test_oversized_signature_is_invalid(self, ssh_keys: SshKeys, work: WorkRepo) -> None:
        """A signature over the size cap is refused before any tool reads it."""
        allowed = ssh_keys.allowed(work.path.parent / "allowed_signers")
        repo = pygit2.Repository(str(work.path))
        body = "\n".join(["A" * 70] * (MAX_SIGNATURE_BYTES // 70 + 1))
        huge = f"-----BEGIN SSH SIGNATURE-----\n{body}\n-----END SSH SIGNATURE-----"
        commit = str(repo.create_commit_with_signature(_payload_of(repo), huge))
        v = verify_commit(repo, commit, _policy(allowed))
        assert (v.signed, v.valid, v.method) == (True, False, "ssh")
        assert "limit" in v.reason

    @pytest.mark.parametrize(("armor", "method", "words"), [
        ("-----BEGIN SIGNED MESSAGE-----\nMIAGCSqGSIb3DQEHAqCAMIACAQEx\n-----END SIGNED MESSAGE-----", "x509",
         "not supported"),
        ("just some words", "none", "unknown format"),
    ])
    def test_unsupported_formats_are_invalid(self, ssh_keys: SshKeys, work: WorkRepo, armor: str, method: str,
                                             words: str) -> None:
        """x509 and unrecognised signatures count as signed but never valid."""
        repo = pygit2.Repository(str(work.path))
        commit = str(repo.create_commit_with_signature(_payload_of(repo), armor))
        v = verify_commit(repo, commit, _policy(ssh_keys.allowed(work.path.parent / "allowed_signers")))
        assert (v.signed, v.valid, v.method) == (True, False, method)
        assert words in v.reason

    def test_missing_ssh_keygen_names_what_to_install(self, ssh_keys: SshKeys, work: WorkRepo) -> None:
        """Without ssh-keygen the signature is invalid and the reason says which tool to install."""
        allowed = ssh_keys.allowed(work.path.parent / "allowed_signers")
        commit = _ssh_commit(work, ssh_keys.alice.with_suffix(".pub"), {"a.txt": "a\n"})
        policy = _policy(allowed, ssh_program=str(work.path.parent / "no-such-ssh-keygen"))
        v = verify_commit(pygit2.Repository(str(work.path)), commit, policy)
        assert (v.signed, v.valid, v.method) == (True, False, "ssh")
        assert "not installed" in v.reason and "openssh-client" in v.reason

    def test_tools_run_in_a_clean_private_environment(self, ssh_keys: SshKeys, work: WorkRepo,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
        """The tool sees no agent socket and no user config: only PATH, LC_ALL and a private 0700 HOME."""
        allowed = ssh_keys.allowed(work.path.parent / "allowed_signers")
        commit = _ssh_commit(work, ssh_keys.alice.with_suffix(".pub"), {"a.txt": "a\n"})
        seen = work.path.parent / "seen"
        tool = work.path.parent / "fake-ssh-keygen"
        tool.write_text(f'#!/bin/sh\nenv > "{seen}"\nstat -c "mode=%a" "$HOME" >> "{seen}"\nexit 255\n')
        tool.chmod(0o755)
        monkeypatch.setenv("SSH_AUTH_SOCK", str(work.path.parent / "agent.sock"))
        monkeypatch.setenv("GNUPGHOME", str(work.path.parent / "gnupg"))
        v = verify_commit(pygit2.Repository(str(work.path)), commit, _policy(allowed, ssh_program=str(tool)))
        assert (v.signed, v.valid) == (True, False)
        lines = seen.read_text().splitlines()
        names = {line.partition("=")[0] for line in lines}
        assert {"PATH", "HOME", "LC_ALL"} <= names and not names & {"SSH_AUTH_SOCK", "GNUPGHOME", "USER"}
        assert "mode=700" in lines and str(work.path) not in seen.read_text()

    def test_ssh_signature_without_allowed_signers_is_invalid(self, ssh_keys: SshKeys, work: WorkRepo) -> None:
        """An SSH signature cannot be valid when the host trusts no SSH signer."""
        commit = _ssh_commit(work, ssh_keys.alice.with_suffix(".pub"), {"a.txt": "a\n"})
        v = verify_commit(pygit2.Repository(str(work.path)), commit, SigningPolicy())
        assert (v.signed, v.valid, v.method) == (True, False, "ssh")
        assert "allowed_signers" in v.reason

    def test_unknown_commit_is_not_signed(self, work: WorkRepo) -> None:
        """A commit id that is not in the repository gives an answer, not an exception."""
        v = verify_commit(pygit2.Repository(str(work.path)), "0" * 40, SigningPolicy())
        assert (v.signed, v.valid) == (False, False) and "not found" in v.reason


def _payload_of(repo: pygit2.Repository) -> str:
    """The raw object text of HEAD (an unsigned commit), to attach made-up signatures to."""
    head = repo[repo.head.target]
    assert isinstance(head, pygit2.Commit)
    return str(repo.read(head.id)[1].decode())


# -- GPG -----------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class GpgKeys:
    """A GNUPGHOME holding Bob's signing key, Bob's exported public keyring, and Eve's (who signs nothing here)."""

    home: Path
    bob: str
    bob_keyring: Path
    eve_keyring: Path


@pytest.fixture(scope="module")
def gpg_keys(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GpgKeys]:
    """Keys generated once per module; the gpg-agent they start is stopped afterwards."""
    base = tmp_path_factory.mktemp("gpg")
    home = base / "gnupg"
    home.mkdir(mode=0o700)
    env = {"GNUPGHOME": str(home)}
    try:
        for uid in ("Bob <bob@example.com>", "Eve <eve@example.com>"):
            run_tool(["gpg", "--batch", "--passphrase", "", "--quick-gen-key", uid, "ed25519", "sign", "never"], base,
                     env)
        listing = run_tool(["gpg", "--batch", "--with-colons", "--list-keys", "bob@example.com"], base, env)
        bob = next(line.split(":")[9] for line in listing.splitlines() if line.startswith("fpr:"))
        keyrings = {}
        for name in ("bob", "eve"):
            # `gpg --export` (binary, not --armor) is a keyring file gpgv reads as is.
            out = subprocess.run(["gpg", "--batch", "--export", f"{name}@example.com"], capture_output=True,
                                 env={**os.environ, **env}, check=True).stdout
            keyrings[name] = base / f"{name}.gpg"
            keyrings[name].write_bytes(out)
        yield GpgKeys(home, bob, keyrings["bob"], keyrings["eve"])
    finally:
        run_tool(["gpgconf", "--kill", "gpg-agent"], base, env, check=False)


def _gpg_commit(repo: WorkRepo, keys: GpgKeys, files: dict[str, str]) -> str:
    """Commit `files` signed with Bob's OpenPGP key through git's gpg program; returns the id."""
    return commit_with(repo, files, signing=["-c", "gpg.program=gpg", "-c", f"user.signingkey={keys.bob}"],
                       message="gpg", env={"GNUPGHOME": str(keys.home)})


@needs_gpg
class TestGpg:
    def test_good_signature_is_valid_with_the_uid_email(self, gpg_keys: GpgKeys, work: WorkRepo) -> None:
        """A commit signed by a key in the keyring is valid, with the uid's email and the fingerprint; git agrees."""
        commit = _gpg_commit(work, gpg_keys, {"a.txt": "a\n"})
        v = verify_commit(pygit2.Repository(str(work.path)), commit, _policy(keyring=gpg_keys.bob_keyring))
        assert (v.signed, v.valid, v.method, v.principal, v.key) == (True, True, "gpg", "bob@example.com",
                                                                       gpg_keys.bob)
        assert v.reason == f"good gpg signature by bob@example.com ({gpg_keys.bob})"
        assert _git_verifies(work.path, commit, env={"GNUPGHOME": str(gpg_keys.home)})

    def test_key_not_in_the_keyring_is_invalid(self, gpg_keys: GpgKeys, work: WorkRepo) -> None:
        """A signature by a key missing from the host keyring is invalid and names the key."""
        commit = _gpg_commit(work, gpg_keys, {"a.txt": "a\n"})
        v = verify_commit(pygit2.Repository(str(work.path)), commit, _policy(keyring=gpg_keys.eve_keyring))
        assert (v.signed, v.valid, v.method, v.principal, v.key) == (True, False, "gpg", None, gpg_keys.bob)
        assert "not in the trusted keyring" in v.reason

    def test_signature_copied_onto_another_tree_is_invalid(self, gpg_keys: GpgKeys, work: WorkRepo) -> None:
        """A good OpenPGP signature attached to a commit with another tree is bad, and git agrees."""
        start = run_tool(["git", "rev-parse", "HEAD"], work.path)
        signed = _gpg_commit(work, gpg_keys, {"a.txt": "approved\n"})
        repo = pygit2.Repository(str(work.path))
        forged = with_signature(repo, signed, start)
        v = verify_commit(repo, forged, _policy(keyring=gpg_keys.bob_keyring))
        assert (v.signed, v.valid, v.method) == (True, False, "gpg")
        assert "bad gpg signature" in v.reason
        assert not _git_verifies(work.path, forged, env={"GNUPGHOME": str(gpg_keys.home)})

    def test_gpg_signature_without_keyring_is_invalid(self, gpg_keys: GpgKeys, work: WorkRepo, tmp_path: Path,
                                                      ) -> None:
        """An OpenPGP signature cannot be valid when the host has no keyring, whatever SSH signers it trusts."""
        commit = _gpg_commit(work, gpg_keys, {"a.txt": "a\n"})
        allowed = tmp_path / "allowed_signers"
        allowed.write_text("")
        v = verify_commit(pygit2.Repository(str(work.path)), commit, _policy(allowed))
        assert (v.signed, v.valid, v.method) == (True, False, "gpg")
        assert "gpg_keyring" in v.reason

    def test_missing_gpgv_names_what_to_install(self, gpg_keys: GpgKeys, work: WorkRepo) -> None:
        """Without gpgv the signature is invalid and the reason says which tool to install."""
        commit = _gpg_commit(work, gpg_keys, {"a.txt": "a\n"})
        policy = _policy(keyring=gpg_keys.bob_keyring, gpgv_program=str(work.path.parent / "no-such-gpgv"))
        v = verify_commit(pygit2.Repository(str(work.path)), commit, policy)
        assert (v.signed, v.valid) == (True, False)
        assert "not installed" in v.reason and "gpgv" in v.reason


# -- settings ------------------------------------------------------------------------------------------------
class TestSettings:
    def test_empty_section_disables_checks(self) -> None:
        """No [signing] keys means no checks and nothing required."""
        policy = signing_policy_from_settings({})
        assert policy == SigningPolicy() and not policy.enabled

    def test_full_section_builds_the_policy(self, tmp_path: Path) -> None:
        """All keys together give a policy that is enabled and points at the trust files."""
        (tmp_path / "allowed").write_text("")
        (tmp_path / "ring.gpg").write_bytes(b"\x99\x00")
        policy = signing_policy_from_settings({"require_signed_commits": True,
                                               "allowed_signers": str(tmp_path / "allowed"),
                                               "gpg_keyring": str(tmp_path / "ring.gpg")})
        assert policy == SigningPolicy(True, tmp_path / "allowed", tmp_path / "ring.gpg") and policy.enabled

    def test_trust_source_alone_enables_checks(self, tmp_path: Path) -> None:
        """An allowed-signers file without `require` still verifies (to record who signed)."""
        (tmp_path / "allowed").write_text("")
        policy = signing_policy_from_settings({"allowed_signers": str(tmp_path / "allowed")})
        assert policy.enabled and not policy.require

    @pytest.mark.parametrize(("section", "words"), [
        ({"require_signed_comits": True}, "require_signed_comits"),
        ({"require_signed_commits": True}, "no signer is trusted"),
        ({"require_signed_commits": "yes"}, "true or false"),
        ({"allowed_signers": "/no/such/allowed_signers"}, "does not exist"),
        ({"allowed_signers": "relative/allowed_signers"}, "absolute path"),
        ({"gpg_keyring": 3}, "file path"),
    ])
    def test_bad_sections_are_settings_errors(self, section: dict[str, object], words: str) -> None:
        """Unknown keys, wrong types, missing or relative files and `require` without trust are refused."""
        with pytest.raises(SettingsError) as err:
            signing_policy_from_settings(section, where="stratumd.toml")
        assert words in err.value.what and err.value.where == "stratumd.toml"

    def test_armored_keyring_is_refused(self, tmp_path: Path) -> None:
        """An ASCII-armored keyring, which gpgv cannot read, is refused with the command that fixes it."""
        ring = tmp_path / "ring.asc"
        ring.write_text("-----BEGIN PGP PUBLIC KEY BLOCK-----\n\n-----END PGP PUBLIC KEY BLOCK-----\n")
        with pytest.raises(SettingsError) as err:
            signing_policy_from_settings({"gpg_keyring": str(ring)})
        assert "armored" in err.value.what and "--dearmor" in err.value.hint
