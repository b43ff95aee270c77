"""No verb ever shows a Python traceback (issue 9 item 5).

Every verb of click's command tree (walked, so a new verb is covered the day it is added) runs with bad
arguments and bad files: an unknown option, a missing repository, a garbage file where a repository or an
input file belongs, a nonexistent revision, a data directory that is a file. Whatever the verb does, no output
may contain a traceback, no exception may escape to click, and a failure must say something on stderr.

Cases that fail today in other helpers' rooms are xfail(strict=True) with the owner named: when the owner's fix
is merged, the case passes, the strict xfail fails, and the lead removes the mark.
"""

from __future__ import annotations

import gc
import os
import re
import signal
import socket
import subprocess
import sys
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import click
import pytest
import structlog
from click.testing import CliRunner

from daemon.cli.main import cli
from tests.fixtures import WorkRepo
from tests.proc import ROOT, cli_env

TRACEBACK = "Traceback (most recent call last)"
REV_PARAMS = ("rev", "head", "base", "revision")
COMMON = ("repo", "data_dir", "config_file", "branch", "root")
# (verb, case) -> owner, for failures outside daemon/cli's room; see the module docstring.
KNOWN: dict[tuple[str, str], str] = {}


def leaves(cmd: click.Command, path: tuple[str, ...] = ()) -> Iterator[tuple[tuple[str, ...], click.Command]]:
    """Every runnable verb under `cmd`, with its path of names."""
    if isinstance(cmd, click.Group):
        ctx = click.Context(cmd)
        for name in sorted(cmd.list_commands(ctx)):  # the lazy group imports each verb here
            sub = cmd.get_command(ctx, name)
            if sub is not None:
                yield from leaves(sub, (*path, name))
    else:
        yield path, cmd


VERBS = dict(leaves(cli))


@dataclass(frozen=True, slots=True)
class Place:
    """The bad (and good) things a case points verbs at."""

    good_repo: Path
    missing: Path
    garbage: Path
    data: Path


def _value(param: click.Parameter, place: Place, file: Path) -> list[str]:
    """A value for a required parameter: a choice's first, `file` for paths, a word for text."""
    if isinstance(param.type, click.Choice):
        return [str(param.type.choices[0])]
    if isinstance(param.type, (click.Path, click.File)):
        return [str(file)]
    if isinstance(param.type, (click.types.IntParamType, click.types.FloatParamType)):
        return ["1"]
    return ["no-such-thing"]


def argv(verb: tuple[str, ...], case: str, place: Place) -> list[str] | None:
    """The command line of `case` for `verb`, or None when the case does not apply to it."""
    cmd = VERBS[verb]
    names = {p.name for p in cmd.params}
    file = {"missing-repo": place.missing, "garbage-repo": place.garbage}.get(case, place.garbage)
    args: list[str] = []
    for p in cmd.params:
        if p.name in COMMON or not p.required:
            continue
        values = _value(p, place, file)
        if isinstance(p, click.Option):
            args += [p.opts[0], *values]
        else:
            args += values
    common = "repo" in names
    if case == "unknown-option":
        return [*verb, *args, "--no-such-option"]
    if case in ("missing-repo", "garbage-repo"):
        if not common and not any(isinstance(p.type, (click.Path, click.File)) for p in cmd.params if p.required):
            return None
        repo = ["--repo", str(file), "--data-dir", str(place.data)] if common else []
        return [*verb, *args, *repo]
    if not common:
        return None
    good = ["--repo", str(place.good_repo)]
    if case == "bad-revision":
        revs = [p for p in cmd.params if p.name in REV_PARAMS]
        if not revs:
            return None
        extra: list[str] = []
        for p in revs:
            if isinstance(p, click.Option):
                extra += [p.opts[0], "no-such-rev"]
        positional = [a if a != "no-such-thing" else "no-such-rev" for a in args]
        return [*verb, *positional, *extra, *good, "--data-dir", str(place.data)]
    if case == "data-dir-is-a-file":
        return [*verb, *args, *good, "--data-dir", str(place.garbage)]
    raise AssertionError(case)


CASES = ("unknown-option", "missing-repo", "garbage-repo", "bad-revision", "data-dir-is-a-file")
PARAMS = [pytest.param(v, c, id=f"{' '.join(v)}:{c}",
                       marks=[pytest.mark.xfail(strict=True, reason=f"owner: {KNOWN[(' '.join(v), c)]}")]
                       if (" ".join(v), c) in KNOWN else [])
          for v in VERBS for c in CASES]


def _live() -> set[int]:
    """Pids of this process's running children (read from /proc: scanning Popen objects is slow here)."""
    me = str(os.getpid())
    out = set()
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue  # exited while listed
        if fields[1] == me and fields[0] != "Z":
            out.add(int(stat.parent.name))
    return out


def invoke(args: list[str]) -> tuple[int, str, str, BaseException | None, list[int]]:
    """Run `stratum ARGS` in-process: exit code, stdout, stderr, an escaped exception, and the pids of child
    processes it left running (stopped here, so the leak fails this case and not a later one)."""
    before = _live()
    with warnings.catch_warnings(record=True) as dropped:
        # A Popen dropped while its process runs warns when collected: record it instead of failing later.
        warnings.simplefilter("always", ResourceWarning)
        result = CliRunner().invoke(cli, args, catch_exceptions=True)
        code, out, err = result.exit_code, result.stdout, result.stderr
        escaped = result.exception if not isinstance(result.exception, SystemExit) else None
        del result
        gc.collect()
        leaked = _live() - before
    for w in dropped:
        match = re.match(r"subprocess (\d+) is still running", str(w.message))
        if match:
            leaked.add(int(match[1]))
    for pid in leaked:  # our own children, by id
        try:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
        except (ProcessLookupError, ChildProcessError):
            pass
    return code, out, err, escaped, sorted(leaked)


@pytest.fixture(scope="module")
def place(tmp_path_factory: pytest.TempPathFactory) -> Place:
    """A small valid ops repo, a path that does not exist, and a garbage file."""
    tmp = tmp_path_factory.mktemp("bad")
    repo = WorkRepo(tmp / "ops")
    repo.commit({"infra/motd.ncl": '{ motd = { kind = "file", path = "etc/motd", content = "hi\\n" } }\n'})
    garbage = tmp / "garbage.bin"
    garbage.write_bytes(b"\x00\xffnot a repository, a plan, a manifest or anything else\n" * 20)
    return Place(good_repo=repo.path, missing=tmp / "no-such-dir", garbage=garbage, data=tmp / "data")


@pytest.fixture(autouse=True)
def isolated(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """No user state is read or written, no editor is started; logging is reset after each command."""
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "state"))
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "config"))
    monkeypatch.setenv("EDITOR", "false")
    monkeypatch.setenv("VISUAL", "false")
    monkeypatch.delenv("STRATUM_DEBUG", raising=False)
    monkeypatch.chdir(tmp_path)
    yield
    structlog.reset_defaults()
    gc.collect()  # a worker process a failing verb left behind warns here, on the test that leaked it


def test_the_command_tree_is_walked() -> None:
    """The walk finds the spine's verbs and the verb groups' subcommands (so new verbs are covered)."""
    names = {" ".join(v) for v in VERBS}
    assert {"plan", "apply", "status", "drift", "completion", "secret encrypt", "kb search"} <= names


@pytest.mark.parametrize(("verb", "case"), PARAMS)
def test_no_verb_shows_a_traceback(verb: tuple[str, ...], case: str, place: Place) -> None:
    """Bad arguments and bad files give a message (and an exit code), never a traceback or an escaped
    exception."""
    args = argv(verb, case, place)
    if args is None:
        return  # the case has nothing to point this verb at (no repository, file or revision parameter)
    code, stdout, stderr, escaped, leaked = invoke(args)
    shown = stdout + stderr
    assert not leaked, f"`stratum {' '.join(args)}` left child processes running: {leaked}"
    assert TRACEBACK not in shown, shown
    assert escaped is None, f"{type(escaped).__name__}: {escaped} escaped from `stratum {' '.join(args)}`"
    # The handler turns a bug into `internal error: ...`: no traceback, but not a message about the input.
    assert "internal error" not in shown, f"`stratum {' '.join(args)}`: {shown}"
    if code != 0:
        assert stderr.strip(), f"`stratum {' '.join(args)}` failed silently (exit {code})"


BUGGY = """
import click, sys
from daemon.cli.errors import handle_errors, run_standalone

@click.group()
def group() -> None:
    pass

@group.command()
@handle_errors
def broken() -> None:
    {}[\"data\"]  # a bug of the kind issue 9 item 1 met: KeyError: 'data'

sys.exit(run_standalone(group, [\"broken\"]))
"""


def test_an_unexpected_error_is_a_message_not_a_traceback(tmp_path: Path) -> None:
    """A verb that hits a bug (a KeyError here, in a real process through the real handler) prints one
    `internal error` message naming it and exits 1; STRATUM_DEBUG=1 adds the traceback for developers."""
    env = {k: v for k, v in os.environ.items() if k != "STRATUM_DEBUG"}
    proc = subprocess.run([sys.executable, "-c", BUGGY], capture_output=True, text=True, env=env, timeout=120,
                          check=False)
    assert proc.returncode == 1, proc.stderr
    assert TRACEBACK not in proc.stdout + proc.stderr
    assert proc.stderr.startswith("internal error: KeyError: 'data'"), proc.stderr
    assert "report" in proc.stderr
    debug = subprocess.run([sys.executable, "-c", BUGGY], capture_output=True, text=True, timeout=120, check=False,
                           env={**env, "STRATUM_DEBUG": "1"})
    assert TRACEBACK in debug.stderr


def test_an_os_error_names_the_path(tmp_path: Path) -> None:
    """`stratum init` into a path below a regular file fails with the OS's reason and the path, exit 1."""
    blocker = tmp_path / "file"
    blocker.write_text("x")
    result = CliRunner().invoke(cli, ["init", str(blocker / "ops")], catch_exceptions=True)
    assert result.exit_code == 1, result.output
    assert TRACEBACK not in result.output
    assert str(blocker) in result.stderr


def _stratumd_on_a_taken_port(tmp_path: Path) -> tuple[int, subprocess.CompletedProcess[str]]:
    """Run `stratumd --http-listen` on a port a socket of this test holds."""
    repo = WorkRepo(tmp_path / "ops")
    repo.commit({"README.md": "ops\n"})
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        proc = subprocess.run(
            [sys.executable, "-c", "from daemon.cli.main import daemon_main; daemon_main()", "--repo",
             str(repo.path), "--data-dir", str(tmp_path / "data"), "--http-listen", f"127.0.0.1:{port}"],
            capture_output=True, text=True, timeout=180, check=False,
            env={**os.environ, "HOME": str(tmp_path)})
    return port, proc


def test_stratumd_with_its_http_port_taken_gives_a_message(tmp_path: Path) -> None:
    """`stratumd` on a port another process holds: a message and a hint, exit 1, no traceback."""
    _, proc = _stratumd_on_a_taken_port(tmp_path)
    assert proc.returncode == 1, proc.stderr
    assert TRACEBACK not in proc.stdout + proc.stderr
    assert "Address already in use" in proc.stderr and "--http-listen" in proc.stderr


def test_stratumd_with_its_http_port_taken_names_the_address(tmp_path: Path) -> None:
    """The message names the address that is taken."""
    port, proc = _stratumd_on_a_taken_port(tmp_path)
    assert f"127.0.0.1:{port}" in proc.stderr


def test_a_reader_that_goes_away_is_not_an_error(tmp_path: Path) -> None:
    """`stratum ... | head`: the pipe is closed before the verb writes; it ends quietly with 141 (as a process
    killed by SIGPIPE), not with "error: Broken pipe" and a hint about disks."""
    proc = subprocess.Popen([sys.executable, "-c", "from daemon.cli.main import main; main()", "completion", "bash"],
                            cwd=ROOT, env=cli_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert proc.stdout is not None and proc.stderr is not None
    proc.stdout.close()                 # the reader is gone before the verb prints
    with proc.stderr:
        err = proc.stderr.read().decode()
    assert proc.wait(timeout=60) == 141, err
    assert err == "", err
