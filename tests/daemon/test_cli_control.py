"""`stratum suspend | resume | windows` without a daemon: the suspension is written to the index (so the next
daemon start honours it) and shown; the windows of host settings are listed with the gate they make. (Over a
running daemon's socket these are tested with the daemon.)"""

from __future__ import annotations

import json
import textwrap
from pathlib import Path
from typing import Any

import click
import pytest
from click.testing import CliRunner, Result

from daemon.cli import control
from daemon.index.read_models import SUSPENSION_KEYS
from daemon.index.store import Index

WINDOWS_TOML = """
    [[windows]]
    name = "weekend freeze"
    kind = "deny"
    schedule = "0 22 * * 5"
    duration = "60h"

    [[windows]]
    kind = "allow"
    schedule = "0 9 * * 1-5"
    duration = "8h"
    timezone = "Europe/Madrid"
    manual = true
"""


class Cli:
    """Runs the control verbs in-process against one data directory and one host settings file."""

    def __init__(self, tmp: Path) -> None:
        self.data = tmp / "data"
        self.config = tmp / "stratumd.toml"
        self.runner = CliRunner()

    def __call__(self, verb: str, *args: str) -> Result:
        """Invoke `stratum <verb> ...` with --data-dir and --config filled in."""
        command = {"suspend": control.suspend, "resume": control.resume, "windows": control.windows}[verb]
        argv = [*args, "--repo", str(self.data.parent), "--data-dir", str(self.data), "--config", str(self.config)]
        return self.runner.invoke(command, argv, catch_exceptions=False)

    def json(self, verb: str, *args: str) -> Any:
        """Invoke with JSON output and decode stdout."""
        result = self(verb, *args, "--output", "json")
        assert result.exit_code == 0, result.output
        return json.loads(result.stdout)

    def state(self) -> dict[str, str | None]:
        """The suspension keys in the index, and the kinds of the recorded events."""
        index = Index(self.data / "index.duckdb")
        try:
            out: dict[str, Any] = {k: index.get_state(k) for k in SUSPENSION_KEYS}
            out["events"] = [r[0] for r in index.query("SELECT kind FROM events ORDER BY ts")]
            return out
        finally:
            index.close()


@pytest.fixture
def cli(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Cli:
    """A CLI whose user is alice and whose host settings are empty."""
    monkeypatch.setenv("LOGNAME", "alice")
    return Cli(tmp_path)


class TestSuspend:
    def test_suspend_records_the_state_and_says_what_it_means(self, cli: Cli) -> None:
        """The index holds suspended, the reason, who and when; one event is recorded; the output says commits
        are recorded but not applied, and that the next daemon start honours it."""
        result = cli("suspend", "--reason", "incident 42")
        assert result.exit_code == 0
        assert "suspended: commits are recorded but not applied until `stratum resume` (reason: incident 42)" in \
            result.stdout
        assert "next daemon start honours this" in result.stdout
        state = cli.state()
        assert (state["suspended"], state["suspended_reason"], state["suspended_by"]) == ("true", "incident 42",
                                                                                         "alice")
        assert float(str(state["suspended_at"])) > 0
        assert state["events"] == ["suspended"]

    def test_suspending_twice_changes_nothing(self, cli: Cli) -> None:
        """The second suspend keeps the first reason and records no second event."""
        cli("suspend", "--reason", "incident 42")
        result = cli("suspend", "--reason", "something else")
        assert result.stdout.startswith("already suspended since ") and "by alice (reason: incident 42)" in \
            result.stdout
        assert cli.state()["suspended_reason"] == "incident 42" and cli.state()["events"] == ["suspended"]

    def test_suspend_json(self, cli: Cli) -> None:
        """Machines get the state, whether it changed and whether a daemon took the request."""
        data = cli.json("suspend", "--reason", "audit")
        assert data["suspended"] is True and data["changed"] is True and data["daemon"] is False
        assert (data["reason"], data["by"]) == ("audit", "alice") and data["at"] > 0


class TestResume:
    def test_resume_clears_the_suspension(self, cli: Cli) -> None:
        """Every suspension key is gone and a `resumed` event is recorded."""
        cli("suspend", "--reason", "incident 42")
        result = cli("resume")
        assert result.exit_code == 0
        assert result.stdout.strip() == "resumed: the next daemon start applies the newest commit"
        state = cli.state()
        assert [state[k] for k in SUSPENSION_KEYS] == [None] * 4
        assert state["events"] == ["suspended", "resumed"]

    def test_resume_when_not_suspended_changes_nothing(self, cli: Cli) -> None:
        """No event for a change that did not happen."""
        result = cli("resume")
        assert result.stdout.strip() == "not suspended: nothing to resume"
        assert cli.state()["events"] == []

    def test_resume_json(self, cli: Cli) -> None:
        """The answer says applying is no longer suspended."""
        cli("suspend")
        data = cli.json("resume")
        assert (data["suspended"], data["changed"], data["daemon"], data["at"]) == (False, True, False, None)


class TestWindows:
    def test_the_windows_and_the_gate_are_listed(self, cli: Cli) -> None:
        """On a Saturday the freeze blocks until Monday 10:00 UTC; a person may not apply either (the freeze
        is not manual); both windows are listed with their state."""
        cli.config.write_text(textwrap.dedent(WINDOWS_TOML))
        result = cli("windows", "--at", "2026-11-28T12:00:00Z")
        assert result.exit_code == 0, result.output
        lines = result.stdout.splitlines()
        assert lines[0] == ("at 2026-11-28T12:00:00+00:00: applying is BLOCKED: deny window 'weekend freeze' "
                            "(0 22 * * 5 for 60h) until 2026-11-30T10:00:00+00:00")
        assert lines[1] == "  manual `stratum apply`: blocked"
        assert lines[2] == "  next change: 2026-11-30T08:00:00+00:00"
        assert lines[3].split() == ["KIND", "NAME", "SCHEDULE", "FOR", "TIMEZONE", "MANUAL", "STATE"]
        assert "weekend freeze" in lines[4] and "active until 2026-11-30T10:00:00+00:00" in lines[4]
        assert "Europe/Madrid" in lines[5] and "manual" in lines[5] and "next 2026-11-30T08:00:00+00:00" in lines[5]

    def test_an_open_gate_says_why(self, cli: Cli) -> None:
        """Inside office hours applying is allowed, and the line names the allow window and its end."""
        cli.config.write_text(textwrap.dedent(WINDOWS_TOML))
        result = cli("windows", "--at", "2026-11-26T10:00:00Z")
        assert result.stdout.splitlines()[0] == (
            "at 2026-11-26T10:00:00+00:00: applying is allowed (inside allow window (0 9 * * 1-5 for 8h, "
            "Europe/Madrid) until 2026-11-26T16:00:00+00:00)")

    def test_windows_json(self, cli: Cli) -> None:
        """Outside the freeze and outside office hours, only a manual apply passes (the allow window is manual)."""
        cli.config.write_text(textwrap.dedent(WINDOWS_TOML))
        data = cli.json("windows", "--at", "2026-11-26T20:00:00+00:00")
        assert data["now"] == "2026-11-26T20:00:00+00:00"
        assert data["gate"]["blocked"] is True and data["gate"]["until"] == "2026-11-27T08:00:00+00:00"
        assert data["manual"]["blocked"] is False
        assert data["next_change"] == "2026-11-27T08:00:00+00:00"
        assert [w["name"] for w in data["windows"]] == ["weekend freeze", ""]
        assert data["windows"][0] | {"next_start": None} == {
            "name": "weekend freeze", "kind": "deny", "schedule": "0 22 * * 5", "duration": "60h",
            "duration_s": 216000, "timezone": "UTC", "manual": False, "active_until": None, "next_start": None}
        assert data["windows"][0]["next_start"] == "2026-11-27T22:00:00+00:00"

    def test_no_windows(self, cli: Cli) -> None:
        """Without [[windows]], schedules never block."""
        result = cli("windows")
        assert result.stdout.strip() == "no windows: schedules never block applying"

    def test_a_bad_window_is_an_error_naming_the_file(self, cli: Cli) -> None:
        """Exit 1, and the message points at the settings file and the window."""
        cli.config.write_text('[[windows]]\nkind = "deny"\nschedule = "0 22 * * 5"\nduration = "forever"\n')
        result = cli("windows")
        assert result.exit_code == 1
        assert f"error: {cli.config}: [[windows]] #1: duration 'forever' is not a number" in result.stderr

    def test_a_bad_time_is_an_error(self, cli: Cli) -> None:
        """--at takes ISO 8601."""
        result = cli("windows", "--at", "next friday")
        assert result.exit_code == 1 and "is not an ISO 8601 time" in result.stderr


def test_the_verbs_are_registered() -> None:
    """`stratum suspend`, `resume` and `windows` exist (listed, and loadable from the lazy group)."""
    from daemon.cli.main import cli as stratum

    ctx = click.Context(stratum)      # verbs load lazily: ask the group, not its loaded `commands`
    assert {"suspend", "resume", "windows"} <= set(stratum.list_commands(ctx))
    assert all(stratum.get_command(ctx, verb) is not None for verb in ("suspend", "resume", "windows"))
