"""Commit signature verification, as `git verify-commit` does it: SSH through `ssh-keygen -Y`, OpenPGP through `gpgv`.

The host decides whom to trust (`[signing]` in stratumd.toml): an OpenSSH allowed-signers file (git's
`gpg.ssh.allowedSignersFile`) and/or a keyring of exported OpenPGP public keys. The signed data is the commit
object without its `gpgsig` header, so a signature copied onto a commit with another tree, parent or message
does not verify.

Every check runs the host's own tools as argument lists, in a private 0700 temp dir that is also their HOME,
with a minimal environment (no agent sockets, no user config, no GNUPGHOME) and a timeout. Bad input never
raises: the answer is a `Verification` saying why the signature is not good.

Trust in time: like git, allowed-signers `valid-after`/`valid-before` are checked at the *committer* time,
which the signer chose. A retired key can still sign a back-dated commit; to revoke a key, remove its line.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pygit2

from daemon.errors import SettingsError

MAX_SIGNATURE_BYTES = 64 * 1024
TIMEOUT = 10.0                    # seconds per tool run
NAMESPACE = "git"                 # the SSHSIG namespace git signs and verifies commits in
MAX_PRINCIPALS = 16               # principals of one key tried before giving up
METHODS = ("ssh", "gpg", "x509", "none")

_SSH_ARMOR = b"-----BEGIN SSH SIGNATURE-----"
_PGP_ARMOR = (b"-----BEGIN PGP SIGNATURE-----", b"-----BEGIN PGP MESSAGE-----")
_X509_ARMOR = b"-----BEGIN SIGNED MESSAGE-----"
_PACKAGES = {"ssh": "openssh-client (ssh-keygen)", "gpg": "gpgv"}
_KEYS = ("require_signed_commits", "allowed_signers", "gpg_keyring", "ssh_program", "gpgv_program")
_SSH_KEY = re.compile(r"with (\S+) key (\S+)")
_EMAIL = re.compile(r"<([^<>\s]+@[^<>\s]+)>")
_GENERIC = ("No principal matched.", "Could not verify signature.")


@dataclass(frozen=True, slots=True)
class SigningPolicy:
    """Whom the host trusts to sign commits, and whether a good signature is required."""

    require: bool = False
    allowed_signers: Path | None = None       # OpenSSH allowed-signers file
    gpg_keyring: Path | None = None           # exported OpenPGP public keys (`gpg --export`), read by gpgv
    ssh_program: str = "ssh-keygen"
    gpgv_program: str = "gpgv"

    @property
    def enabled(self) -> bool:
        """True when signatures are checked at all (required, or a trust source is configured)."""
        return self.require or self.allowed_signers is not None or self.gpg_keyring is not None


def signing_policy_from_settings(section: Mapping[str, Any], where: str = "") -> SigningPolicy:
    """The policy of a `[signing]` table; unknown keys, missing files or nothing to trust raise SettingsError."""
    unknown = sorted(set(section) - set(_KEYS))
    if unknown:
        raise SettingsError(f"unknown key(s) in [signing]: {', '.join(unknown)}", where=where,
                            hint=f"[signing] takes {', '.join(_KEYS)}")
    require = section.get("require_signed_commits", False)
    if not isinstance(require, bool):
        raise SettingsError(f"[signing] require_signed_commits must be true or false, not {require!r}", where=where)
    allowed = _trust_file(section, "allowed_signers", where)
    keyring = _trust_file(section, "gpg_keyring", where)
    if keyring is not None and _is_armored(keyring):
        raise SettingsError(f"[signing] gpg_keyring {keyring} is ASCII-armored; gpgv reads binary keyrings only",
                            where=where, hint=f"gpg --dearmor < {keyring} > {keyring}.gpg, then point gpg_keyring "
                                              "there (or use `gpg --export` without --armor)")
    if require and allowed is None and keyring is None:
        raise SettingsError("[signing] require_signed_commits is on but no signer is trusted", where=where,
                            hint="set allowed_signers (an OpenSSH allowed-signers file) and/or gpg_keyring")
    programs = {k: section.get(k, default) for k, default in (("ssh_program", "ssh-keygen"), ("gpgv_program", "gpgv"))}
    for key, value in programs.items():
        if not isinstance(value, str) or not value:
            raise SettingsError(f"[signing] {key} must be a program name or path", where=where)
    return SigningPolicy(require=require, allowed_signers=allowed, gpg_keyring=keyring,
                         ssh_program=programs["ssh_program"], gpgv_program=programs["gpgv_program"])


def _trust_file(section: Mapping[str, Any], key: str, where: str) -> Path | None:
    value = section.get(key)
    if value is None:
        return None
    if not isinstance(value, str) or not value:
        raise SettingsError(f"[signing] {key} must be a file path, not {value!r}", where=where)
    path = Path(value).expanduser()
    # The daemon's working directory is not the config's (systemd starts it in /): relative would be a guess.
    if not path.is_absolute():
        raise SettingsError(f"[signing] {key} must be an absolute path, not {value!r}", where=where,
                            hint=f"write {key} = \"/etc/stratum/{path.name}\" or another absolute path")
    if not path.is_file():
        raise SettingsError(f"[signing] {key}: {path} does not exist or is not a file", where=where,
                            hint="create it, or remove the key from [signing]")
    return path


def _is_armored(path: Path) -> bool:
    try:
        with path.open("rb") as fh:
            return fh.read(64).lstrip().startswith(b"-----BEGIN PGP")
    except OSError:
        return False  # unreadable: gpgv reports it at verification time


@dataclass(frozen=True, slots=True)
class Verification:
    """The outcome of checking one commit's signature; `reason` is a sentence for humans either way."""

    signed: bool
    valid: bool
    method: str                               # one of METHODS
    principal: str | None = None              # ssh: the allowed-signers principal; gpg: the uid's email
    key: str | None = None                    # ssh: SHA256:... fingerprint; gpg: primary key fingerprint
    reason: str = ""


class _Unverifiable(Exception):
    """A tool could not give an answer (missing, timed out); the message is the reason."""


def verify_commit(repo: pygit2.Repository, commit_id: str, policy: SigningPolicy) -> Verification:
    """Check the signature of commit `commit_id` against `policy`'s trusted signers; never raises on bad input."""
    try:
        commit = repo[commit_id]
    except (KeyError, ValueError, TypeError, pygit2.GitError):
        return Verification(False, False, "none", reason=f"commit {commit_id[:12]} not found")
    if not isinstance(commit, pygit2.Commit):
        return Verification(False, False, "none", reason=f"{commit_id[:12]} is not a commit")
    signature, payload = commit.gpg_signature
    if signature is None:
        return Verification(False, False, "none", reason="the commit is not signed")
    method = _method(signature)
    if len(signature) > MAX_SIGNATURE_BYTES:
        return Verification(True, False, method, reason=f"the signature is {len(signature)} bytes, over the "
                                                        f"{MAX_SIGNATURE_BYTES}-byte limit")
    if method == "x509":
        return Verification(True, False, method, reason="x509 (gpgsm) signatures are not supported; "
                                                        "sign with an SSH or OpenPGP key")
    if method == "none":
        return Verification(True, False, method, reason="the signature is in an unknown format")
    try:
        # mkdtemp makes the dir 0700: signature, payload and the tools' HOME stay private to this user.
        with tempfile.TemporaryDirectory(prefix="stratum-sig-") as tmp:
            if method == "ssh":
                return _verify_ssh(signature, payload, int(commit.commit_time), policy, Path(tmp))
            return _verify_gpg(signature, payload, policy, Path(tmp))
    except _Unverifiable as err:
        return Verification(True, False, method, reason=str(err))


def _method(signature: bytes) -> str:
    head = signature.lstrip()
    if head.startswith(_SSH_ARMOR):
        return "ssh"
    if head.startswith(_PGP_ARMOR):
        return "gpg"
    if head.startswith(_X509_ARMOR):
        return "x509"
    return "none"


@dataclass(frozen=True, slots=True)
class _Run:
    code: int
    out: str
    err: str


def _run(program: str, method: str, args: Sequence[str], home: Path, stdin: bytes = b"") -> _Run:
    exe = shutil.which(program)
    if exe is None:
        raise _Unverifiable(f"cannot verify {method} signatures: {program} is not installed; "
                            f"install {_PACKAGES[method]} on the host")
    env = {"PATH": os.defpath, "HOME": str(home), "LC_ALL": "C"}
    try:
        proc = subprocess.run([exe, *args], input=stdin, capture_output=True, env=env, cwd=home,
                              timeout=TIMEOUT, check=False)
    except subprocess.TimeoutExpired as err:
        raise _Unverifiable(f"{program} did not answer within {TIMEOUT:g} s") from err
    except OSError as err:
        raise _Unverifiable(f"cannot run {program}: {err.strerror or err}") from err
    return _Run(proc.returncode, proc.stdout.decode("utf-8", "replace"),
                _detail(proc.stderr.decode("utf-8", "replace"), home))


def _detail(stderr: str, home: Path) -> str:
    """The tool's own explanation, without our temp paths and the generic last words, capped."""
    lines = [line.strip().replace(str(home), "<tmp>") for line in stderr.splitlines()]
    text = "; ".join(line for line in lines if line and line not in _GENERIC)
    return text if len(text) <= 300 else text[:297] + "..."


def _verify_time(when: int) -> list[str]:
    """`-Overify-time` at the committer time (UTC, `Z`), as git passes it; none if the time is out of range."""
    try:
        stamp = datetime.fromtimestamp(when, UTC).strftime("%Y%m%d%H%M%S")
    except (OverflowError, OSError, ValueError):
        return []  # ssh-keygen then checks validity at the current time, which is stricter
    return [f"-Overify-time={stamp}Z"]


def _verify_ssh(signature: bytes, payload: bytes, when: int, policy: SigningPolicy, tmp: Path) -> Verification:
    """1. find the principals of the signing key, 2. verify as each, 3. else explain whose key it was."""
    allowed = policy.allowed_signers
    if allowed is None:
        return Verification(True, False, "ssh", reason="the commit has an SSH signature but no allowed_signers "
                                                       "file is configured in [signing]")
    if not allowed.is_file():
        return Verification(True, False, "ssh", reason=f"the allowed signers file {allowed} is missing")
    sig_file = tmp / "commit.sig"
    sig_file.write_bytes(signature)
    ssh, at = policy.ssh_program, _verify_time(when)
    # 1. which principals list this key (and are valid at the commit time)
    found = _run(ssh, "ssh", ["-Y", "find-principals", "-f", str(allowed), "-s", str(sig_file), *at], tmp)
    principals = [p.strip() for p in found.out.splitlines() if p.strip()] if found.code == 0 else []
    # 2. verify the signature over the commit as each principal; git's namespace is required
    failures: list[str] = []
    for principal in principals[:MAX_PRINCIPALS]:
        checked = _run(ssh, "ssh", ["-Y", "verify", "-f", str(allowed), "-I", principal, "-n", NAMESPACE,
                                    "-s", str(sig_file), *at], tmp, payload)
        if checked.code == 0:
            key = _ssh_key(checked.out)
            return Verification(True, True, "ssh", principal, key, f"good ssh signature by {principal} ({key})")
        failures.append(checked.err)
    # 3. no principal accepts it: is it a sound signature by some key, and which?
    check = _run(ssh, "ssh", ["-Y", "check-novalidate", "-n", NAMESPACE, "-s", str(sig_file)], tmp, payload)
    if check.code != 0:
        why = check.err or "it does not verify"
        return Verification(True, False, "ssh", reason=f"the ssh signature is not valid for this commit: {why}")
    key = _ssh_key(check.out)
    if principals:
        why = "; ".join(f for f in failures if f) or "verification failed"
        return Verification(True, False, "ssh", None, key,
                            f"ssh key {key} of {', '.join(principals)} may not sign this commit: {why}")
    if found.err:
        return Verification(True, False, "ssh", None, key,
                            f"no allowed signer accepts ssh key {key} for this commit: {found.err}")
    return Verification(True, False, "ssh", None, key, f"ssh key {key} is not in the allowed signers file")


def _ssh_key(out: str) -> str | None:
    match = _SSH_KEY.search(out)
    return match.group(2) if match else None


def _verify_gpg(signature: bytes, payload: bytes, policy: SigningPolicy, tmp: Path) -> Verification:
    """gpgv against the host keyring; the status lines (not the exit code alone) say who signed."""
    keyring = policy.gpg_keyring
    if keyring is None:
        return Verification(True, False, "gpg", reason="the commit has a gpg signature but no gpg_keyring is "
                                                       "configured in [signing]")
    if not keyring.is_file():
        return Verification(True, False, "gpg", reason=f"the gpg keyring {keyring} is missing")
    sig_file, data_file = tmp / "commit.sig", tmp / "commit.data"
    sig_file.write_bytes(signature)
    data_file.write_bytes(payload)
    run = _run(policy.gpgv_program, "gpg", ["--homedir", str(tmp), "--status-fd", "1", "--keyring", str(keyring),
                                           str(sig_file), str(data_file)], tmp)
    status: dict[str, str] = {}                # keyword -> arguments of its first status line
    for line in run.out.splitlines():
        if line.startswith("[GNUPG:] "):
            word, _, rest = line[9:].partition(" ")
            status.setdefault(word, rest)
    if "BADSIG" in status:
        return Verification(True, False, "gpg", reason="bad gpg signature: the commit differs from what was signed")
    for word, what in (("EXPKEYSIG", "an expired key"), ("REVKEYSIG", "a revoked key"),
                       ("EXPSIG", "a signature that has expired")):
        if word in status:
            return Verification(True, False, "gpg", reason=f"the gpg signature was made with {what}")
    if "NO_PUBKEY" in status:
        errsig = status.get("ERRSIG", "").split(" ")  # keyid algo hash class time rc [fingerprint]
        key = errsig[6] if len(errsig) > 6 else status["NO_PUBKEY"]
        return Verification(True, False, "gpg", None, key, f"gpg key {key} is not in the trusted keyring")
    if run.code != 0 or "GOODSIG" not in status or "VALIDSIG" not in status or "ERRSIG" in status:
        return Verification(True, False, "gpg", reason=f"gpgv could not verify the signature: "
                                                       f"{run.err or 'exit code ' + str(run.code)}")
    valid = status["VALIDSIG"].split(" ")
    key = valid[9] if len(valid) > 9 else valid[0]  # the primary key's fingerprint when a subkey signed
    uid = status["GOODSIG"].partition(" ")[2]
    match = _EMAIL.search(uid)
    principal = match.group(1) if match else None
    return Verification(True, True, "gpg", principal, key, f"good gpg signature by {principal or uid} ({key})")
