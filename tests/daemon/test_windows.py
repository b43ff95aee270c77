"""Sync windows (daemon/control/windows.py): when a window is active and until when, how deny and allow windows combine
into the gate, manual applies, time zones over DST changes, settings validation, and the next flip of the gate.
Every instant is fixed; nothing reads the clock."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from daemon.control.windows import (
    Window,
    format_duration,
    gate,
    next_change,
    parse_duration,
    windows_from_settings,
)
from daemon.errors import SettingsError

MADRID = ZoneInfo("Europe/Madrid")
FREEZE = {"kind": "deny", "schedule": "0 22 * * 5", "duration": "60h", "name": "weekend freeze"}


def at(*args: int, tz: Any = UTC) -> datetime:
    """An aware datetime."""
    return datetime(*args, tzinfo=tz)


def windows(*items: dict[str, Any]) -> tuple[Window, ...]:
    """Windows from settings-like tables."""
    return windows_from_settings(list(items))


class TestActive:
    def test_inside_a_deny_window_it_ends_after_the_duration(self) -> None:
        """Friday 22:00 + 60h: active on Saturday, ending Monday 10:00."""
        (w,) = windows(FREEZE)
        assert w.active_at(at(2026, 11, 28, 12)) == at(2026, 11, 30, 10)

    def test_outside_a_deny_window_nothing_is_active(self) -> None:
        """Thursday is outside the weekend freeze."""
        (w,) = windows(FREEZE)
        assert w.active_at(at(2026, 11, 26, 12)) is None

    def test_the_start_is_inside_and_the_end_is_outside(self) -> None:
        """An occurrence covers [start, end): active at 22:00:00 sharp, inactive at the end, active a second
        before it."""
        (w,) = windows(FREEZE)
        assert w.active_at(at(2026, 11, 27, 22)) == at(2026, 11, 30, 10)
        assert w.active_at(at(2026, 11, 27, 21, 59, 59)) is None
        assert w.active_at(at(2026, 11, 30, 9, 59, 59)) == at(2026, 11, 30, 10)
        assert w.active_at(at(2026, 11, 30, 10)) is None

    def test_a_fraction_of_a_second_before_the_start_is_outside(self) -> None:
        """Sub-second instants are judged exactly."""
        (w,) = windows(FREEZE)
        assert w.active_at(at(2026, 11, 27, 21, 59, 59, 999999)) is None
        assert w.active_at(at(2026, 11, 27, 22, 0, 0, 1)) == at(2026, 11, 30, 10)

    def test_occurrences_longer_than_the_period_overlap(self) -> None:
        """Hourly for 90 minutes: at 10:45 both the 10:00 and 09:00 occurrences cover it; the later ends last."""
        (w,) = windows({"kind": "deny", "schedule": "0 * * * *", "duration": "1h30m"})
        assert w.active_at(at(2026, 5, 4, 10, 45)) == at(2026, 5, 4, 11, 30)
        assert w.active_at(at(2026, 5, 4, 10, 15)) == at(2026, 5, 4, 11, 30)

    def test_a_naive_datetime_is_refused(self) -> None:
        """Instants without a zone are ambiguous; they are a programming error."""
        (w,) = windows(FREEZE)
        with pytest.raises(ValueError, match="no time zone"):
            w.active_at(datetime(2026, 11, 28, 12))

    def test_next_start_is_strictly_after(self) -> None:
        """At a fire time itself, the next start is the following one."""
        (w,) = windows(FREEZE)
        assert w.next_start(at(2026, 11, 27, 22)) == at(2026, 12, 4, 22)
        assert w.next_start(at(2026, 11, 27, 21, 59, 59, 500000)) == at(2026, 11, 27, 22)


class TestGate:
    def test_no_windows_never_block(self) -> None:
        """Without windows applying is always allowed."""
        assert gate((), at(2026, 11, 28, 12)).blocked is False

    def test_inside_a_deny_window_applying_is_blocked_until_its_end(self) -> None:
        """The gate names the window and says until when, in words people can act on."""
        g = gate(windows(FREEZE), at(2026, 11, 28, 12))
        assert g.blocked and g.until == at(2026, 11, 30, 10) and g.window == "weekend freeze"
        assert g.reason == "deny window 'weekend freeze' (0 22 * * 5 for 60h) until 2026-11-30T10:00:00+00:00"

    def test_outside_every_deny_window_applying_is_allowed(self) -> None:
        """Thursday noon is open."""
        g = gate(windows(FREEZE), at(2026, 11, 26, 12))
        assert (g.blocked, g.until) == (False, None)

    def test_overlapping_deny_windows_chain_to_the_end_of_the_whole_stretch(self) -> None:
        """A freeze ending Monday 10:00 and a Monday 09:00-12:00 maintenance block, and a 12:00-13:00 one right
        after it: applying resumes at 13:00, and the reason names the windows that follow."""
        ws = windows(FREEZE,
                     {"kind": "deny", "schedule": "0 9 * * 1", "duration": "3h", "name": "maintenance"},
                     {"kind": "deny", "schedule": "0 12 * * 1", "duration": "1h", "name": "lunch"})
        g = gate(ws, at(2026, 11, 28, 12))
        assert g.blocked and g.until == at(2026, 11, 30, 13) and g.window == "weekend freeze"
        assert "then deny window 'maintenance'" in g.reason and "'lunch'" in g.reason

    def test_a_window_that_is_always_active_has_no_end_in_sight(self) -> None:
        """Every minute for two minutes never leaves a gap: blocked with no `until`."""
        g = gate(windows({"kind": "deny", "schedule": "* * * * *", "duration": "2m"}), at(2026, 1, 1))
        assert g.blocked and g.until is None and g.reason.endswith("with no end in sight")

    def test_allow_windows_block_outside_them(self) -> None:
        """Office hours only: Saturday is blocked until Monday 09:00."""
        ws = windows({"kind": "allow", "schedule": "0 9 * * 1-5", "duration": "8h", "name": "office"})
        g = gate(ws, at(2026, 11, 28, 12))
        assert g.blocked and g.until == at(2026, 11, 30, 9) and g.window == "office"
        assert g.reason.startswith("outside every allow window; allow window 'office'")

    def test_inside_an_allow_window_applying_is_allowed(self) -> None:
        """Monday 10:00 is inside office hours."""
        ws = windows({"kind": "allow", "schedule": "0 9 * * 1-5", "duration": "8h", "name": "office"})
        g = gate(ws, at(2026, 11, 30, 10))
        assert not g.blocked and g.window == "office" and "until 2026-11-30T17:00:00+00:00" in g.reason

    def test_deny_beats_allow(self) -> None:
        """A deny window inside office hours blocks; it ends mid-morning and applying resumes then."""
        ws = windows({"kind": "allow", "schedule": "0 9 * * 1-5", "duration": "8h", "name": "office"},
                     {"kind": "deny", "schedule": "0 9 30 11 *", "duration": "2h", "name": "release day"})
        g = gate(ws, at(2026, 11, 30, 10))
        assert g.blocked and g.window == "release day" and g.until == at(2026, 11, 30, 11)

    def test_a_deny_window_covering_the_next_allow_start_pushes_the_resume_time(self) -> None:
        """Outside office hours on Saturday, with a deny window from Monday 08:00 to 10:00: resume at 10:00."""
        ws = windows({"kind": "allow", "schedule": "0 9 * * 1-5", "duration": "8h", "name": "office"},
                     {"kind": "deny", "schedule": "0 8 * * 1", "duration": "2h", "name": "monday"})
        g = gate(ws, at(2026, 11, 28, 12))
        assert g.blocked and g.until == at(2026, 11, 30, 10)
        assert "opens 2026-11-30T09:00:00+00:00; applying resumes 2026-11-30T10:00:00+00:00" in g.reason


class TestManual:
    def test_a_manual_deny_window_lets_a_person_apply(self) -> None:
        """With manual = true, an explicit apply passes; the daemon's own applies stay blocked."""
        ws = windows(FREEZE | {"manual": True})
        assert gate(ws, at(2026, 11, 28, 12)).blocked
        g = gate(ws, at(2026, 11, 28, 12), manual=True)
        assert not g.blocked and g.reason.startswith("manual apply permitted in deny window 'weekend freeze'")

    def test_a_deny_window_without_manual_blocks_people_too(self) -> None:
        """manual defaults to false."""
        assert gate(windows(FREEZE), at(2026, 11, 28, 12), manual=True).blocked

    def test_every_active_deny_window_must_permit_a_manual_apply(self) -> None:
        """One manual window does not open a stretch that a non-manual one also covers."""
        ws = windows(FREEZE | {"manual": True},
                     {"kind": "deny", "schedule": "0 0 28 11 *", "duration": "1d", "name": "strict"})
        g = gate(ws, at(2026, 11, 28, 12), manual=True)
        assert g.blocked and g.window == "strict" and g.until == at(2026, 11, 29)

    def test_a_manual_allow_window_lets_a_person_apply_outside_the_allow_windows(self) -> None:
        """Outside office hours, a person may apply when an allow window says manual = true."""
        ws = windows({"kind": "allow", "schedule": "0 9 * * 1-5", "duration": "8h", "manual": True})
        assert gate(ws, at(2026, 11, 28, 12)).blocked
        assert not gate(ws, at(2026, 11, 28, 12), manual=True).blocked


class TestTimeZones:
    def test_the_schedule_is_read_in_the_window_zone(self) -> None:
        """Friday 22:00 in Madrid (CET, UTC+1) is 21:00 UTC."""
        (w,) = windows(FREEZE | {"timezone": "Europe/Madrid"})
        assert w.active_at(at(2026, 11, 27, 21, 30)) == at(2026, 11, 30, 9)
        assert w.active_at(at(2026, 11, 27, 20, 59)) is None

    def test_a_freeze_over_the_autumn_change_ends_at_the_same_local_time(self) -> None:
        """Summer time ends on 25 October 2026: from Friday 22:00 CEST the freeze still ends Monday 10:00 CET
        (61 hours of real time)."""
        (w,) = windows(FREEZE | {"timezone": "Europe/Madrid"})
        end = w.active_at(at(2026, 10, 24, 12))
        assert end == at(2026, 10, 26, 10, tz=MADRID) == at(2026, 10, 26, 9)
        assert w.active_at(at(2026, 10, 23, 20)) == end and w.active_at(at(2026, 10, 23, 19, 59)) is None

    def test_a_freeze_over_the_spring_change_ends_at_the_same_local_time(self) -> None:
        """Summer time starts on 29 March 2026: Friday 22:00 CET to Monday 10:00 CEST (59 hours)."""
        (w,) = windows(FREEZE | {"timezone": "Europe/Madrid"})
        assert w.active_at(at(2026, 3, 28, 12)) == at(2026, 3, 30, 8)

    def test_a_fire_time_in_the_skipped_hour_happens_when_the_gap_ends(self) -> None:
        """02:30 does not exist on 29 March 2026 in Madrid: the window opens at 03:00 CEST instead."""
        (w,) = windows({"kind": "deny", "schedule": "30 2 * * *", "duration": "1h", "timezone": "Europe/Madrid"})
        assert w.next_start(at(2026, 3, 28, 12)) == at(2026, 3, 29, 3, tz=MADRID)
        assert w.active_at(at(2026, 3, 29, 0, 59)) is None
        assert w.active_at(at(2026, 3, 29, 1, 30)) == at(2026, 3, 29, 4, tz=MADRID)

    def test_a_fire_time_in_the_repeated_hour_opens_the_window_twice(self) -> None:
        """02:30 happens twice on 25 October 2026 in Madrid; a one-hour window then covers 00:30-02:30 UTC in
        one stretch, and the gate's `until` is its end."""
        ws = windows({"kind": "deny", "schedule": "30 2 * * *", "duration": "1h", "timezone": "Europe/Madrid"})
        assert ws[0].active_at(at(2026, 10, 25, 0, 30)) is not None
        g = gate(ws, at(2026, 10, 25, 0, 45))
        assert g.blocked and g.until == at(2026, 10, 25, 2, 30)
        assert gate(ws, at(2026, 10, 25, 2, 30)).blocked is False

    def test_an_earlier_start_in_the_fold_can_end_later(self) -> None:
        """Every 20 minutes for 30 minutes of wall time: a start at 02:40 CEST ends at 03:10 local (02:10 UTC),
        later than the 02:00 CET start's 02:30 CET (01:30 UTC); the window is active until the later end."""
        (w,) = windows({"kind": "deny", "schedule": "*/20 * * * *", "duration": "30m", "timezone": "Europe/Madrid"})
        assert w.active_at(at(2026, 10, 25, 1, 5)) == at(2026, 10, 25, 2, 10)


class TestSettings:
    def test_a_full_window_is_read(self) -> None:
        """Every key lands in the Window; timezone defaults to UTC, manual to false, name to empty."""
        (w,) = windows(FREEZE | {"timezone": "Europe/Madrid", "manual": True})
        assert w == Window("deny", "0 22 * * 5", 60 * 3600, "Europe/Madrid", "weekend freeze", True)
        (bare,) = windows({"kind": "allow", "schedule": "@daily", "duration": "1h"})
        assert (bare.timezone, bare.name, bare.manual, bare.label) == ("UTC", "", False, "@daily")

    @pytest.mark.parametrize(("text", "seconds"), [("60h", 216000), ("1h30m", 5400), ("2d", 172800),
                                                    ("90s", 90), ("1d 2h", 93600)])
    def test_durations_parse(self, text: str, seconds: int) -> None:
        """Units d, h, m, s, alone or combined."""
        assert parse_duration(text) == seconds

    @pytest.mark.parametrize(("seconds", "text"), [(216000, "60h"), (5400, "1h30m"), (172800, "2d"), (61, "1m1s")])
    def test_durations_format(self, seconds: int, text: str) -> None:
        """Whole days as days, the rest as hours, minutes and seconds."""
        assert format_duration(seconds) == text

    @pytest.mark.parametrize(("change", "message"), [
        ({"schedule": "0 22 * *"}, "schedule '0 22 * *' has 4 fields, not 5"),
        ({"schedule": "0 22 * * * *"}, "has 6 fields, not 5"),
        ({"schedule": "61 22 * * 5"}, "schedule '61 22 * * 5' is not a valid cron expression"),
        ({"schedule": "0 22 * * funday"}, "is not a valid cron expression"),
        ({"schedule": "0 0 30 2 *"}, "schedule '0 0 30 2 *' never fires"),
        ({"schedule": "@reboot"}, "is not a cron alias"),
        ({"schedule": 5}, "`schedule` must be a str"),
        ({"duration": "60"}, "duration '60' is not a number of d, h, m or s"),
        ({"duration": "an hour"}, "is not a number of d, h, m or s"),
        ({"duration": 3600}, "`duration` must be a str"),
        ({"duration": "0h"}, "must be more than 0 and at most 31 days"),
        ({"duration": "32d"}, "must be more than 0 and at most 31 days"),
        ({"timezone": "Mars/Olympus"}, "unknown timezone 'Mars/Olympus'"),
        ({"timezone": "../etc/passwd"}, "unknown timezone"),
        ({"kind": "maybe"}, "`kind` must be 'deny' or 'allow', not 'maybe'"),
        ({"kind": None}, "a window needs `kind`"),
        ({"schedule": None}, "a window needs `schedule`"),
        ({"manual": "yes"}, "`manual` must be a bool"),
        ({"starts": "friday"}, "unknown key(s) 'starts' in a window"),
    ])
    def test_invalid_settings_are_refused_with_a_clear_message(self, change: dict[str, Any], message: str) -> None:
        """Each mistake names the window (by position and file) and says what is wrong."""
        item = {k: v for k, v in (FREEZE | change).items() if v is not None}
        with pytest.raises(SettingsError) as err:
            windows_from_settings([FREEZE, item], where="/etc/stratum/stratumd.toml")
        assert message in err.value.what
        assert err.value.where == "/etc/stratum/stratumd.toml: [[windows]] #2"

    def test_a_bad_schedule_hints_at_the_cron_format(self) -> None:
        """The hint shows the five fields."""
        with pytest.raises(SettingsError) as err:
            windows(FREEZE | {"schedule": "every friday"})
        assert "minute hour day-of-month month day-of-week" in err.value.hint

    def test_two_windows_with_one_name_are_refused(self) -> None:
        """Names identify windows in reasons and listings."""
        with pytest.raises(SettingsError, match="two windows are named 'weekend freeze'"):
            windows(FREEZE, FREEZE | {"schedule": "0 22 * * 4"})

    @pytest.mark.parametrize("items", [{"kind": "deny"}, "deny", [["deny"]]])
    def test_windows_must_be_an_array_of_tables(self, items: Any) -> None:
        """A single [windows] table, a string or a list of non-tables is refused."""
        with pytest.raises(SettingsError, match=r"array of tables|must be a table"):
            windows_from_settings(items)


class TestNextChange:
    def test_without_windows_nothing_changes(self) -> None:
        """No windows, no wake-up."""
        assert next_change((), at(2026, 11, 28, 12)) is None

    def test_outside_it_is_the_next_start(self) -> None:
        """On Thursday the next flip is Friday 22:00."""
        assert next_change(windows(FREEZE), at(2026, 11, 26, 12)) == at(2026, 11, 27, 22)

    def test_inside_it_is_the_end(self) -> None:
        """On Saturday the next flip is Monday 10:00."""
        assert next_change(windows(FREEZE), at(2026, 11, 28, 12)) == at(2026, 11, 30, 10)

    def test_it_is_the_earliest_over_all_windows(self) -> None:
        """A daily allow window opening sooner than the freeze's end wins; at the instant found, the gate is
        re-judged."""
        ws = windows(FREEZE, {"kind": "allow", "schedule": "0 6 * * *", "duration": "12h"})
        now = at(2026, 11, 28, 19)
        flip = next_change(ws, now)
        assert flip == at(2026, 11, 29, 6)
        assert all(flip <= t for w in ws for t in (w.active_at(now), w.next_start(now)) if t)
        assert gate(ws, flip - timedelta(seconds=1)).blocked and gate(ws, flip).blocked
