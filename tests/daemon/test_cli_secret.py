"""`stratum secret ...` end to end: keygen, encrypt/decrypt/edit/set/unset/rotate/updatekeys/verify in a real
git repo with Nickel rules, `git diff` through the textconv, `git merge` through the merge driver, $EDITOR as a
real script, and the pre-commit checks."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result

from daemon.cli.main import cli
from reconcilers.vault import manifest
from reconcilers.vault.init import wire_repo
from tests.fixtures import GIT_ENV, WorkRepo, git

ROOT = Path(__file__).resolve().parents[2]
PLAINTEXT = "s3cr3t-Value-never-shown"
COMMAND = f"{sys.executable} -m daemon.cli.secret"


class Env:
    """One user with a key, a repo with rules that trust them and name them as recipient."""

    def __init__(self, tmp: Path, monkeypatch: pytest.MonkeyPatch) -> None:
        self.tmp = tmp
        monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp / "cfg"))
        monkeypatch.delenv("STRATUM_KEY_FILE", raising=False)
        monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))
        self.runner = CliRunner()
        out = self.ok("keygen", "--output", "json")
        info = json.loads(out.stdout)
        self.key_file = Path(info["file"])
        self.recipient, self.signer = info["recipient"], info["signer"]
        monkeypatch.setenv("STRATUM_KEY_FILE", str(self.key_file))
        self.repo = WorkRepo(tmp / "ops")
        self.write_rules()
        wire_repo(self.repo.path, command=COMMAND)
        self.repo.commit(message="rules")

    def write_rules(
        self, extra_recipients: tuple[str, ...] = (), signers: tuple[str, ...] | None = None, stage: bool = True
    ) -> None:
        """Write secrets/rules.ncl and stage it (the CLI reads the rules from the index, as the daemon would)."""
        recipients = ", ".join(json.dumps(r) for r in (self.recipient, *extra_recipients))
        signer_list = ", ".join(
            f'{{ name = "u{i}", key = {json.dumps(s)} }}'
            for i, s in enumerate(signers if signers is not None else (self.signer,))
        )
        self.repo.write(
            {
                "secrets/rules.ncl": (
                    f"{{\n  trusted_signers = [{signer_list}],\n"
                    f'  creation_rules = [{{ path_regex = "^secrets/", recipients = [{recipients}] }}],\n}}\n'
                )
            }
        )
        if stage:
            git(self.repo.path, "add", "secrets/rules.ncl")

    def run(self, *args: str, input: str | bytes | None = None) -> Result:
        return self.runner.invoke(cli, ["secret", *args], input=input, catch_exceptions=True)

    def ok(self, *args: str, input: str | bytes | None = None) -> Result:
        result = self.run(*args, input=input)
        assert result.exit_code == 0, (result.output, repr(result.exception))
        return result

    def path(self, rel: str) -> Path:
        return self.repo.path / rel

    def manifest_file(self, rel: str = "secrets/app.yaml", values: str | None = None) -> Path:
        file = self.path(rel)
        file.parent.mkdir(parents=True, exist_ok=True)
        file.write_text(values or f"db:\n  password: {PLAINTEXT}\n  port: 5432\napi:\n  token: tok-1\n")
        self.ok("encrypt", str(file))
        return file

    def decrypt(self, file: Path) -> Any:
        return manifest.load_yaml(self.ok("decrypt", str(file)).stdout, "out")


@pytest.fixture
def env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Env:
    return Env(tmp_path, monkeypatch)


def editor(tmp: Path, body: str) -> str:
    """A real $EDITOR: a shell script that logs its argument and the file's mode, then runs `body`."""
    script = tmp / "editor.sh"
    script.write_text(
        f'#!/bin/sh\necho "$1" >> {tmp}/editor.log\nstat -c %a "$1" >> {tmp}/editor.log\n'
        f'stat -c %a "$(dirname "$1")" >> {tmp}/editor.log\n{body}\n'
    )
    script.chmod(0o755)
    return str(script)


class TestKeysAndEncrypt:
    def test_keygen_writes_a_0600_key_and_prints_the_recipient(self, env: Env) -> None:
        """The key file is 0600 in the config dir; stdout is the recipient alone."""
        assert env.key_file.parent == env.tmp / "cfg" / "stratum" / "keys"
        assert env.key_file.stat().st_mode & 0o777 == 0o600
        result = env.ok("keygen", "--name", "second")
        assert result.stdout.strip().startswith("stratum1") and "\n" not in result.stdout.strip()

    def test_encrypt_decrypt_round_trip_without_plaintext_on_disk(self, env: Env) -> None:
        """encrypt writes only ciphertext; decrypt gives back the typed values; verify accepts it."""
        file = env.manifest_file()
        assert PLAINTEXT not in file.read_text() and "ENC[AES256_GCM" in file.read_text()
        assert env.decrypt(file) == {"db": {"password": PLAINTEXT, "port": 5432}, "api": {"token": "tok-1"}}
        out = env.ok("verify", str(file), "--output", "json")
        assert json.loads(out.stdout)["files"][0]["trusted_as"] == "u0"

    def test_decrypt_to_a_file_is_0600(self, env: Env) -> None:
        """-o writes the plaintext 0600."""
        file = env.manifest_file()
        env.ok("decrypt", str(file), "-o", str(env.tmp / "plain.yaml"))
        assert (env.tmp / "plain.yaml").stat().st_mode & 0o777 == 0o600

    def test_set_unset_rotate(self, env: Env) -> None:
        """set reads stdin with a type, unset removes, rotate changes every ciphertext and keeps the values."""
        file = env.manifest_file()
        env.ok("set", str(file), "db.replicas", "--type", "int", input="3\n")
        env.ok("set", str(file), "new.nested.key", input="hello\n")
        env.ok("unset", str(file), "api.token")
        values = env.decrypt(file)
        assert values["db"]["replicas"] == 3 and values["new"]["nested"]["key"] == "hello" and "api" not in values
        before = dict(manifest.leaves(manifest.parse(file.read_text(), "f").data))
        env.ok("rotate", str(file))
        after = dict(manifest.leaves(manifest.parse(file.read_text(), "f").data))
        assert all(before[k] != after[k] for k in before) and env.decrypt(file) == values

    def test_unset_of_a_missing_key_names_it(self, env: Env) -> None:
        """A missing key is an error naming file and key path."""
        file = env.manifest_file()
        result = env.run("unset", str(file), "db.nope")
        assert result.exit_code == 1 and "db.nope" in result.output and "Traceback" not in result.output

    def test_updatekeys_adds_the_recipients_the_rules_name_now(self, env: Env, tmp_path: Path) -> None:
        """After a recipient joins the rules, check fails until updatekeys re-wraps; then the newcomer decrypts."""
        file = env.manifest_file()
        other = json.loads(env.ok("keygen", "--name", "bob", "--output", "json").stdout)
        env.write_rules(extra_recipients=(other["recipient"],))
        failing = env.run("check", "--repo", str(env.repo.path), str(file))
        assert failing.exit_code == 1 and "required by the rules is missing" in failing.output
        env.ok("updatekeys", str(file))
        env.ok("check", "--repo", str(env.repo.path), str(file))
        out = env.ok("decrypt", str(file), "--key-file", other["file"])
        assert PLAINTEXT in out.stdout


class TestEdit:
    def test_edit_changes_one_value_and_keeps_the_others_ciphertext(self, env: Env) -> None:
        """$EDITOR edits a 0600 copy in a 0700 dir; only the edited value's ciphertext changes; no copy remains."""
        file = env.manifest_file()
        before = manifest.parse(file.read_text(), "f")
        os.environ["EDITOR"] = editor(env.tmp, "sed -i 's/port: 5432/port: 6543/' \"$1\"")
        try:
            env.ok("edit", str(file))
        finally:
            del os.environ["EDITOR"]
        plain, mode, dir_mode = (env.tmp / "editor.log").read_text().split()
        assert (mode, dir_mode) == ("600", "700") and not Path(plain).exists()
        assert not Path(plain).parent.exists()
        after = manifest.parse(file.read_text(), "f")
        assert after.data["db"]["password"] == before.data["db"]["password"]
        assert after.data["db"]["port"] != before.data["db"]["port"]
        assert after.meta.version > before.meta.version
        assert env.decrypt(file)["db"]["port"] == 6543

    def test_a_failing_editor_saves_nothing_and_leaves_no_plaintext(self, env: Env) -> None:
        """Editor exit 1: error, file unchanged, plaintext copy gone."""
        file = env.manifest_file()
        before = file.read_text()
        os.environ["EDITOR"] = editor(env.tmp, "echo 'db: {password: leaked}' > \"$1\"; exit 1")
        try:
            result = env.run("edit", str(file))
        finally:
            del os.environ["EDITOR"]
        assert result.exit_code == 1 and "nothing was saved" in result.output
        assert file.read_text() == before
        plain = (env.tmp / "editor.log").read_text().split()[0]
        assert not Path(plain).exists()

    def test_sigterm_during_edit_removes_the_plaintext(self, env: Env) -> None:
        """SIGTERM to stratum while the editor runs: exit 1 with `error:`, and the plaintext copy is gone."""
        file = env.manifest_file()
        before = file.read_text()
        script = editor(env.tmp, "kill -TERM $PPID; sleep 2")
        proc = subprocess.run(
            [*COMMAND.split(), "secret", "edit", str(file)],
            capture_output=True,
            text=True,
            env={**os.environ, "EDITOR": script},
            timeout=60,
            check=False,
        )
        assert proc.returncode == 1 and proc.stderr.startswith("error:") and "SIGTERM" in proc.stderr
        assert PLAINTEXT not in proc.stderr + proc.stdout
        plain = (env.tmp / "editor.log").read_text().split()[0]
        assert not Path(plain).exists() and file.read_text() == before


class TestGitDrivers:
    def test_git_diff_shows_key_paths_and_fingerprints_never_plaintext(self, env: Env) -> None:
        """Through .gitattributes diff=stratum, `git diff` names the changed key and hides values."""
        file = env.manifest_file()
        env.repo.commit(message="add")
        env.ok("set", str(file), "db.password", input="another-secret-value\n")
        diff = git(env.repo.path, "diff", "--", "secrets/app.yaml")
        changed = [ln for ln in diff.splitlines() if ln.startswith(("+", "-")) and not ln.startswith(("+++", "---"))]
        assert any(ln.startswith("-db.password: <str hmac:") for ln in changed)
        assert any(ln.startswith("+db.password: <str hmac:") for ln in changed)
        assert not any("port" in ln or "token" in ln for ln in changed)
        assert PLAINTEXT not in diff and "another-secret-value" not in diff

    def test_git_merge_merges_values_from_both_branches(self, env: Env) -> None:
        """Both branches change different keys: the merge driver combines, re-encrypts and re-signs."""
        file = env.manifest_file()
        env.repo.commit(message="base")
        git(env.repo.path, "checkout", "-q", "-b", "feature")
        env.ok("set", str(file), "api.token", input="tok-2\n")
        env.repo.commit(message="feature")
        git(env.repo.path, "checkout", "-q", "main")
        env.ok("set", str(file), "db.port", "--type", "int", input="7000\n")
        env.repo.commit(message="main")
        git(env.repo.path, "merge", "-q", "--no-edit", "feature")
        assert env.decrypt(file) == {"db": {"password": PLAINTEXT, "port": 7000}, "api": {"token": "tok-2"}}
        env.ok("check", "--repo", str(env.repo.path), str(file))

    def test_git_merge_conflict_is_marked_per_key(self, env: Env) -> None:
        """Both branches change the same key: git reports a conflict naming the key; the file stays encrypted."""
        file = env.manifest_file()
        env.repo.commit(message="base")
        git(env.repo.path, "checkout", "-q", "-b", "feature")
        env.ok("set", str(file), "api.token", input="theirs\n")
        env.repo.commit(message="feature")
        git(env.repo.path, "checkout", "-q", "main")
        env.ok("set", str(file), "api.token", input="ours\n")
        env.repo.commit(message="main")
        proc = subprocess.run(
            ["git", "merge", "--no-edit", "feature"],
            cwd=env.repo.path,
            capture_output=True,
            text=True,
            check=False,
            env={**os.environ, **GIT_ENV, "HOME": str(env.repo.path)},
        )
        assert proc.returncode != 0 and "api.token" in proc.stdout + proc.stderr
        assert "ours" not in file.read_text() and "theirs" not in file.read_text()
        token = env.decrypt(file)["api"]["token"]
        assert "<<<<<<< ours" in token and "'theirs'" in token


class TestCheck:
    def test_plaintext_in_secrets_fails_naming_the_key(self, env: Env) -> None:
        """A plaintext YAML under secrets/ fails the check with its key path."""
        env.repo.write({"secrets/leak.yaml": f"db:\n  password: {PLAINTEXT}\n"})
        git(env.repo.path, "add", "-A")
        result = env.run("check", "--repo", str(env.repo.path), "--output", "json")
        assert result.exit_code == 1
        problems = json.loads(result.stdout)["problems"]
        assert [(p["path"], p["message"]) for p in problems] == [
            ("secrets/leak.yaml", "db.password: value is not encrypted")
        ]
        assert PLAINTEXT not in result.output

    def test_credentials_in_any_staged_file_fail(self, env: Env) -> None:
        """An AWS key id, a PEM private key and a GitHub token anywhere are found, each by file:line."""
        aws = "AKIA" + "Q" * 16
        pem = "-----BEGIN " + "RSA PRIVATE KEY-----"
        gh = "ghp_" + "a1B2" * 9
        env.repo.write({"app/config.env": f"x=1\nAWS={aws}\n{pem}\ntoken={gh}\n"})
        git(env.repo.path, "add", "-A")
        result = env.run("check", "--repo", str(env.repo.path), "--output", "json")
        found = {(p["line"], p["message"]) for p in json.loads(result.stdout)["problems"]}
        assert found == {
            (2, "contains a AWS access key id"),
            (3, "contains a PEM private key block"),
            (4, "contains a GitHub token"),
        }
        assert aws not in result.output and gh not in result.output

    def test_untrusted_signer_fails(self, env: Env) -> None:
        """A manifest signed by a key that is not in trusted_signers fails the check."""
        file = env.manifest_file()
        env.write_rules(signers=())
        result = env.run("check", "--repo", str(env.repo.path), str(file))
        assert result.exit_code == 1 and "not a trusted signer" in result.output

    def test_a_replayed_older_manifest_fails(self, env: Env) -> None:
        """Staging an older, validly signed version of a committed manifest is caught as a replay."""
        file = env.manifest_file()
        old = file.read_text()
        env.ok("set", str(file), "api.token", input="newer\n")
        env.repo.commit(message="v2")
        file.write_text(old)
        git(env.repo.path, "add", "-A")
        result = env.run("check", "--repo", str(env.repo.path))
        assert result.exit_code == 1 and "replayed" in result.output

    def test_errors_go_through_main_with_exit_1(self, env: Env, tmp_path: Path) -> None:
        """Run as a process: a decrypt without a key prints `error: file: ...` with a hint, exit code 1."""
        file = env.manifest_file()
        empty = tmp_path / "none.key"
        empty.write_text("# no keys\n")
        empty.chmod(0o600)
        proc = subprocess.run(
            [*COMMAND.split(), "secret", "decrypt", str(file)],
            capture_output=True,
            text=True,
            env={**os.environ, "STRATUM_KEY_FILE": str(empty)},
            check=False,
        )
        assert proc.returncode == 1 and proc.stderr.startswith("error: ") and "hint:" in proc.stderr
        assert str(file) in proc.stderr or "secrets/app.yaml" in proc.stderr


class TestRulesFromTheIndex:
    """The CLI loads the creation rules from the staged tree with the daemon's loader, never the work tree."""

    def test_an_unstaged_rules_edit_is_not_used_until_staged(self, env: Env) -> None:
        """A recipient added to the rules but not staged does not count (with a note); staged, it does."""
        file = env.manifest_file()
        bob = json.loads(env.ok("keygen", "--name", "bob", "--output", "json").stdout)
        env.write_rules(extra_recipients=(bob["recipient"],), stage=False)
        passing = env.run("check", "--repo", str(env.repo.path), str(file))
        assert passing.exit_code == 0 and "unstaged changes" in passing.output
        git(env.repo.path, "add", "secrets/rules.ncl")
        failing = env.run("check", "--repo", str(env.repo.path), str(file))
        assert failing.exit_code == 1 and "required by the rules is missing" in failing.output
        assert "unstaged" not in failing.output

    def test_staged_imports_are_used_and_imports_outside_the_snapshot_fail(self, env: Env) -> None:
        """rules.ncl may import a staged file; an import that only exists on disk is an error naming the rules."""
        env.repo.write({"secrets/signers.ncl": f'[{{ name = "u0", key = {json.dumps(env.signer)} }}]\n'})
        env.repo.write(
            {
                "secrets/rules.ncl": (
                    'let signers = import "signers.ncl" in\n{ trusted_signers = signers, creation_rules = '
                    f'[{{ path_regex = "^secrets/", recipients = [{json.dumps(env.recipient)}] }}] }}\n'
                )
            }
        )
        git(env.repo.path, "add", "secrets/rules.ncl")
        file = env.path("secrets/x.yaml")
        file.write_text("api:\n  token: tok\n")
        result = env.run("encrypt", str(file))
        assert result.exit_code == 1 and "secrets/rules.ncl" in result.output
        assert "ENC[" not in file.read_text()
        git(env.repo.path, "add", "secrets/signers.ncl")
        env.ok("encrypt", str(file))
        env.ok("check", "--repo", str(env.repo.path), str(file))

    def test_a_bare_repository_uses_the_rules_of_head(self, env: Env, tmp_path: Path) -> None:
        """With no index (bare), load_repo evaluates HEAD's rules; an empty bare repo has none."""
        from daemon.cli.plugin_host import PluginHost
        from reconcilers.vault.secret_rules import load_repo
        from tests.fixtures import bare_repo

        empty = bare_repo(tmp_path / "empty.git")
        assert load_repo(PluginHost(), empty) is None
        git(tmp_path, "clone", "-q", "--bare", str(env.repo.path), str(tmp_path / "ops.git"))
        rules = load_repo(PluginHost(), tmp_path / "ops.git")
        assert rules is not None and rules.signers[0][1].text == env.signer

    def test_as_a_git_pre_commit_hook_with_filenames(self, env: Env) -> None:
        """Run as pre-commit runs it (pass_filenames: staged names as arguments): a plaintext manifest blocks
        the commit naming the key, an encrypted one goes through, and `commit -a` is checked against the rules
        it is about to commit."""
        hook = env.repo.path / ".git" / "hooks" / "pre-commit"
        hook.write_text(
            "#!/bin/sh\nset -e\n"
            f"files=$(git diff --cached --name-only --diff-filter=ACMR)\n{COMMAND} secret check $files\n"
        )
        hook.chmod(0o755)
        env.repo.write({"secrets/leak.yaml": f"db:\n  password: {PLAINTEXT}\n"})
        git(env.repo.path, "add", "-A")
        blocked = subprocess.run(
            ["git", "commit", "-q", "-m", "leak"],
            cwd=env.repo.path,
            capture_output=True,
            text=True,
            check=False,
            env={**os.environ, **GIT_ENV, "HOME": str(env.repo.path)},
        )
        assert blocked.returncode != 0 and "db.password: value is not encrypted" in blocked.stderr
        assert PLAINTEXT not in blocked.stderr + blocked.stdout
        git(env.repo.path, "rm", "-q", "--cached", "secrets/leak.yaml")
        env.path("secrets/leak.yaml").unlink()
        env.manifest_file()
        git(env.repo.path, "add", "-A")
        git(env.repo.path, "commit", "-q", "-m", "encrypted")
        # `git commit -a` runs the hook against a temporary index (GIT_INDEX_FILE): its rules are the ones used.
        env.write_rules(signers=(), stage=False)
        env.ok("set", str(env.path("secrets/app.yaml")), "api.token", input="tok-2\n")
        untrusted = subprocess.run(
            ["git", "commit", "-q", "-a", "-m", "untrust"],
            cwd=env.repo.path,
            capture_output=True,
            text=True,
            check=False,
            env={**os.environ, **GIT_ENV, "HOME": str(env.repo.path)},
        )
        assert untrusted.returncode != 0 and "not a trusted signer" in untrusted.stderr
