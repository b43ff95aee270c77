"""What a new user sees (issue 9 items 9-11): diffs in plans and drift, Terraform habits (detailed exit codes,
saved plans, completion, help with examples), status with the repository and the suspension's reason,
messages shortened at a word, quiet pipeline logs, and `stratum init` usable without a git identity.

The spine's verbs run in-process on a repo made by `stratum init`, with the infra reconciler alone."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import structlog
from click.testing import CliRunner, Result

from daemon.cli.main import cli
from daemon.cli.text import clip
from reconcilers import registry
from reconcilers.infra import diff
from tests.fixtures import git

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(autouse=True)
def spine_only(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Only the infra reconciler is registered; logging is reset after each command."""
    for name in [n for n in registry.REGISTRY if n != "infra"]:
        monkeypatch.delitem(registry.REGISTRY, name)
    yield
    structlog.reset_defaults()


class Cli:
    """Runs `stratum` in-process against one repo, data dir and root."""

    def __init__(self, tmp: Path) -> None:
        self.repo, self.data, self.root = tmp / "ops", tmp / "data", tmp / "root"

    def __call__(self, *args: str) -> Result:
        """A verb with --repo/--data-dir/--root filled in."""
        argv = [*args, "--repo", str(self.repo), "--data-dir", str(self.data), "--root", str(self.root)]
        return CliRunner().invoke(cli, argv, catch_exceptions=False)

    def json(self, *args: str) -> Any:
        """A verb's JSON output, decoded."""
        return json.loads(self(*args, "--output", "json").stdout)

    def motd(self, text: str) -> str:
        """Commit the template's motd with another text; returns the commit id."""
        path = self.repo / "infra/motd.ncl"
        source = path.read_text()
        start = source.index('content = "') + len('content = "')
        path.write_text(source[:start] + text + source[source.index('"', start):])
        git(self.repo, "commit", "-qam", "motd")
        return git(self.repo, "rev-parse", "HEAD")


@pytest.fixture
def run(tmp_path: Path) -> Cli:
    """A CLI on a repo made by `stratum init`, applied once."""
    c = Cli(tmp_path)
    assert CliRunner().invoke(cli, ["init", str(c.repo)]).exit_code == 0
    applied = c("apply")
    assert applied.exit_code == 0, applied.output
    return c


# -- item 9: content in plans and drift ----------------------------------------------------------------------
def test_plan_shows_a_unified_diff_of_a_changed_file(run: Cli) -> None:
    """`plan` (text and markdown, the PR comment) shows the lines a commit changes in a file, and JSON has
    both sides; before, it said only "update file etc/motd (0644)"."""
    run.motd("Hello from the new motd\\n")
    text = run("plan").stdout
    assert "~ update file etc/motd (0644)" in text
    assert "-Welcome! This host is managed by Stratum; changes belong in git." in text
    assert "+Hello from the new motd" in text
    md = run("plan", "--format", "markdown").stdout
    assert "```diff\n--- etc/motd (host)\n+++ etc/motd (revision)\n" in md
    assert "<details><summary>update file etc/motd (0644)</summary>" in md
    detail = run.json("plan")["details"]["infra:motd"]
    assert detail["expected"]["content"] != detail["found"]["content"]
    assert detail["found"]["content"].startswith("sha256:")


def test_drift_shows_expected_and_found_with_both_sides_in_json(run: Cli) -> None:
    """A hand edit and a chmod on the host: `drift` names mode expected vs found and shows the diff;
    `drift --output json` carries both sides."""
    motd = run.root / "etc/motd"
    motd.write_text(motd.read_text() + "edited by hand\n")
    motd.chmod(0o664)
    result = run("drift")
    assert result.exit_code == 1
    assert "mode: expected 0644, found 0664" in result.stdout
    assert "+edited by hand" not in result.stdout and "-edited by hand" in result.stdout
    [found] = run.json("drift")
    assert found["resource"] == "motd"
    assert found["expected"]["mode"] == "0644" and found["found"]["mode"] == "0664"
    assert found["found"]["size"] == found["expected"]["size"] + len("edited by hand\n")
    assert "-edited by hand" in found["diff"]


def test_a_file_that_may_carry_a_secret_shows_fingerprints_only(run: Cli) -> None:
    """A file not readable by others (0600) is never shown in a diff: only fingerprints, in text and JSON."""
    secret_line = "db_password = hunter2-not-a-real-one"
    (run.repo / "infra/creds.ncl").write_text(
        '{ resources = { creds = { kind = \'file, path = "etc/app/creds", mode = "0600", '
        f'content = "{secret_line}\\n" }} }} }}\n')
    git(run.repo, "add", "-A")
    git(run.repo, "commit", "-qm", "creds")
    assert run("apply").exit_code == 0
    (run.root / "etc/app/creds").write_text("db_password = changed-on-the-host\n")
    drift = run("drift").stdout + json.dumps(run.json("drift"))
    assert "hunter2" not in drift and "changed-on-the-host" not in drift
    assert "content: expected sha256:" in drift
    assert "may carry a secret" in drift


def test_diff_rendering_is_bounded() -> None:
    """A huge change is cut to a bounded number of lines; binary and oversized files get a reason instead."""
    old = "".join(f"line {i}\n" for i in range(5000)).encode()
    new = "".join(f"LINE {i}\n" for i in range(5000)).encode()
    text = diff.unified("big", old[:60_000], new[:60_000], "host", "revision")
    assert len(text.splitlines()) <= diff.MAX_DIFF_LINES + 1 and len(text) <= diff.MAX_DIFF_CHARS + 200
    assert text.splitlines()[-1].endswith("more diff line(s) not shown")
    assert "binary" in diff.unified("b", b"\x00\x01", b"\x00\x02", "host", "revision")
    assert "not shown" in diff.unified("h", b"x" * (diff.MAX_DIFF_BYTES + 1), b"y", "host", "revision")


def test_sensitivity_rules() -> None:
    """Secret-like names, modes closed to others and private keys count as sensitive; a motd does not."""
    assert diff.sensitive("etc/motd", "0644") is False
    assert diff.sensitive("etc/app/.env", "0644") and diff.sensitive("srv/tls/site.key", "0644")
    assert diff.sensitive("etc/app/conf", "0640")
    assert diff.sensitive("etc/x", "0644", b"-----BEGIN OPENSSH PRIVATE KEY-----")


# -- item 10: Terraform habits -------------------------------------------------------------------------------
def test_plan_detailed_exitcode(run: Cli) -> None:
    """--detailed-exitcode: 0 without changes, 2 with changes, 1 when the revision is rejected."""
    assert run("plan", "--detailed-exitcode").exit_code == 2     # the template's certificate files wait (no vault)
    git(run.repo, "rm", "-q", "infra/tls.ncl")
    git(run.repo, "commit", "-qm", "no certificate")
    assert run("apply").exit_code == 0
    assert run("plan", "--detailed-exitcode").exit_code == 0
    assert run("plan").exit_code == 0
    run.motd("changed\\n")
    assert run("plan", "--detailed-exitcode").exit_code == 2
    assert run("plan").exit_code == 0
    (run.repo / "infra/bad.ncl").write_text("{ resources = { x = { kind = 'fiel } } }\n")
    git(run.repo, "add", "-A")
    git(run.repo, "commit", "-qm", "bad")
    assert run("plan", "--detailed-exitcode").exit_code == 1


def test_a_saved_plan_applies_exactly(run: Cli, tmp_path: Path) -> None:
    """`plan -o FILE` then `apply FILE` applies that plan; the file is private to its owner."""
    run.motd("planned\\n")
    saved = tmp_path / "tonight.plan"
    assert run("plan", "-o", str(saved)).exit_code == 0
    assert saved.stat().st_mode & 0o777 == 0o600
    result = run("apply", str(saved))
    assert result.exit_code == 0, result.output
    assert (run.root / "etc/motd").read_text() == "planned\n"


def test_a_saved_plan_is_refused_when_the_branch_moved(run: Cli, tmp_path: Path) -> None:
    """A commit after the plan: nothing is applied and the refusal names both revisions."""
    planned = run.motd("planned\\n")
    saved = tmp_path / "p.plan"
    assert run("plan", "-o", str(saved)).exit_code == 0
    moved = run.motd("committed later\\n")
    result = run("apply", str(saved))
    assert result.exit_code == 1
    assert f"moved since the plan was made: it was at {planned[:12]}, it is at {moved[:12]}" in result.stderr
    assert "Welcome!" in (run.root / "etc/motd").read_text()


def test_a_saved_plan_is_refused_when_the_host_moved(run: Cli, tmp_path: Path) -> None:
    """The host changed after the plan (a hand edit): the plan no longer describes it, nothing is applied."""
    run.motd("planned\\n")
    saved = tmp_path / "p.plan"
    assert run("plan", "-o", str(saved)).exit_code == 0
    (run.root / "etc/motd").write_text("edited by hand\n")
    result = run("apply", str(saved))
    assert result.exit_code == 1
    assert "the observed state changed since the plan was made" in result.stderr
    assert (run.root / "etc/motd").read_text() == "edited by hand\n"


def test_a_garbage_plan_file_is_refused_with_a_hint(run: Cli, tmp_path: Path) -> None:
    """Not a plan: a located message with what to do, exit 1."""
    junk = tmp_path / "junk.plan"
    junk.write_text('{"terraform": true}')
    result = run("apply", str(junk))
    assert result.exit_code == 1
    assert f"{junk}: not a Stratum plan file" in result.stderr and "stratum plan -o FILE" in result.stderr


@pytest.mark.parametrize("shell", ["bash", "zsh", "fish"])
def test_completion_scripts(shell: str) -> None:
    """`stratum completion SHELL` prints click's script for the `stratum` program."""
    result = CliRunner().invoke(cli, ["completion", shell])
    assert result.exit_code == 0
    assert "_STRATUM_COMPLETE" in result.stdout


def test_completion_bash_completes_verbs() -> None:
    """The bash protocol answers with the verbs (what the script asks the program at each TAB)."""
    env = {**os.environ, "_STRATUM_COMPLETE": "bash_complete", "COMP_WORDS": "stratum pl", "COMP_CWORD": "1"}
    proc = subprocess.run([sys.executable, "-c", "from daemon.cli.main import main; main()"], env=env,
                          capture_output=True, text=True, timeout=120, check=False)
    assert "plain,plan" in proc.stdout.splitlines()


def test_every_verb_help_is_a_man_page() -> None:
    """Each spine verb's --help has examples; the top-level help lists exit codes."""
    top = CliRunner().invoke(cli, ["--help"]).stdout
    assert "Examples:" in top and "Exit codes" in top
    for verb in ("validate", "plan", "apply", "drift", "status", "log", "events", "rollback", "suspend", "resume",
                 "windows", "completion"):
        assert "Examples:" in CliRunner().invoke(cli, [verb, "--help"]).stdout, verb


def test_status_shows_the_repository_and_the_suspension(run: Cli) -> None:
    """`status` names the repository and branch, and why, by whom and since when applying is suspended."""
    reason = "release freeze until the payment audit is signed off"
    assert run("suspend", "--reason", reason).exit_code == 0
    text = run("status").stdout
    assert f"repository: {run.repo} (branch main)" in text
    assert "SUSPENDED by " in text and reason in text and "since " in text
    data = run.json("status")
    assert data["suspension"]["reason"] == reason


# -- item 11: noise ------------------------------------------------------------------------------------------
def test_clip_cuts_at_a_word_boundary() -> None:
    """Shortened messages end on a whole word and an ellipsis; short ones are untouched."""
    text = "applying suspended by root: freeze for the quarterly release until the audit"
    assert clip(text, 200) == text
    short = clip(text, 40)
    assert short.endswith("…") and len(short) <= 40
    assert text.startswith(short[:-1]) and text[len(short) - 1] == " "
    assert clip("x" * 50, 10) == "x" * 9 + "…"


def test_log_and_events_keep_words_whole(run: Cli) -> None:
    """A long event message is shortened at a word in `events`, in full in JSON."""
    reason = "freeze for the quarterly release: nothing ships until the audit of the payment service is done"
    run("suspend", "--reason", reason)
    line = next(li for li in run("events").stdout.splitlines() if "suspended" in li)
    assert line.endswith("…")
    shown = line.split("applying suspended", 1)[1][:-1]
    assert reason.find(shown.split(": ", 1)[1]) == 0 and not reason[len(shown.split(': ', 1)[1])].isalnum()
    assert any(reason in e["message"] for e in run.json("events"))


def test_in_process_apply_keeps_the_pipeline_logs_off_stderr(tmp_path: Path) -> None:
    """`stratum apply` without a daemon prints its result, not the pipeline's log lines; --verbose shows
    them."""
    c = Cli(tmp_path)
    CliRunner().invoke(cli, ["init", str(c.repo)])
    quiet = c("apply")
    assert quiet.exit_code == 0
    assert "[info" not in quiet.stderr and "run_id=" not in quiet.stderr
    c.motd("again\\n")
    argv = ["--verbose", "apply", "--repo", str(c.repo), "--data-dir", str(c.data), "--root", str(c.root)]
    loud = CliRunner().invoke(cli, argv)
    assert loud.exit_code == 0 and "run_id=" in loud.stderr


def test_init_without_a_git_identity_leaves_a_repo_you_can_commit_in(tmp_path: Path) -> None:
    """With no global git identity (a fresh HOME), `stratum init` sets a repo-local one and says so, so the
    demo's `git commit` works as printed."""
    home = tmp_path / "home"
    home.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith("GIT_")}
    env |= {"HOME": str(home), "XDG_CONFIG_HOME": str(home / ".config"), "GIT_CONFIG_NOSYSTEM": "1"}
    repo = tmp_path / "ops"
    proc = subprocess.run([sys.executable, "-c", "from daemon.cli.main import main; main()", "init", str(repo)],
                          env=env, capture_output=True, text=True, timeout=300, check=False)
    assert proc.returncode == 0, proc.stderr
    assert "No git identity is configured" in proc.stdout
    (repo / "infra/motd.ncl").write_text((repo / "infra/motd.ncl").read_text().replace("Welcome!", "Hello!"))
    commit = subprocess.run(["git", "-C", str(repo), "commit", "-qam", "new motd"], env=env,
                            capture_output=True, text=True, timeout=60, check=False)
    assert commit.returncode == 0, commit.stderr


def test_make_demo_installs_quietly() -> None:
    """The Makefile sends pip's output to a log and prints one progress line (the install itself takes
    minutes: `make -n` shows the recipe make would run)."""
    proc = subprocess.run(["make", "-n", "-B", "-C", str(ROOT), ".venv/bin/stratum"], capture_output=True,
                          text=True, timeout=60, check=False)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.replace("\\\n", " ").splitlines()
    pip_lines = [li for li in lines if "pip install" in li]
    assert pip_lines and all(">.venv/install.log 2>&1" in li for li in pip_lines), pip_lines
    assert [li for li in lines if li.startswith("echo")] == [
        'echo "installing Stratum and its dependencies into .venv (about 2 minutes; log: .venv/install.log)"']


def test_the_group_class_renders_errors_of_every_subgroup() -> None:
    """Verb groups (secret, kb) sit under the one error handler."""
    from daemon.cli.errors import StratumGroup

    assert isinstance(cli, StratumGroup)


def test_markdown_diffs_are_budgeted() -> None:
    """Many changed files: the PR comment shows diffs up to a budget, then says how many were left out; new
    files show no diff (their content is in the commit)."""
    from daemon.run.report import MAX_DETAILS, plan_markdown

    actions, details = [], {}
    for i in range(200):
        aid = f"infra:f{i}"
        actions.append({"id": aid, "reconciler": "infra", "kind": "update", "target": f"f{i}",
                        "summary": f"update file f{i} (0644)", "depends_on": []})
        details[aid] = {"kind": "file", "expected": {"exists": True, "type": "file", "content": "sha256:1"},
                        "found": {"exists": True, "type": "file", "content": "sha256:2"},
                        "diff": "\n".join(f"-old {j}\n+new {j}" for j in range(40))}
    actions.append({"id": "infra:new", "reconciler": "infra", "kind": "create", "target": "new",
                    "summary": "create file new (0644)", "depends_on": []})
    details["infra:new"] = {"kind": "file", "expected": {"exists": True}, "found": {"exists": False},
                            "diff": "+brand new content"}
    plan = {"revision": "a" * 40, "base": "b" * 40, "actions": actions, "problems": [], "drift": [],
            "admission": None, "details": details}
    text = "".join(plan_markdown(plan))
    assert 0 < text.count("```diff") < 200
    assert sum(len(b) for b in text.split("<details>")[1:]) <= MAX_DETAILS + 2_000
    assert "more resource(s) not shown: run `stratum plan`" in text
    assert "brand new content" not in text
