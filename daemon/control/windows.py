"""Sync windows, as in Argo CD: cron-scheduled stretches of time that deny or allow applying.

A host lists `[[windows]]` tables in stratumd.toml. Applying is blocked while any deny window is active; when
allow windows exist it is also blocked outside all of them; deny beats allow. A window with `manual = true` lets a
person's explicit `stratum apply` through. Work that arrives while blocked is queued by the daemon, not dropped.

Everything here is pure: the instant to judge is a parameter, and every datetime returned is in UTC.

Time zones: fire times come from croniter on zoneinfo-aware datetimes, so `0 22 * * 5` in Europe/Madrid is
22:00 local all year. A duration runs on that zone's wall clock, so a 60h weekend freeze from Friday 22:00 ends
Monday 10:00 local even over a DST change. A fire time inside the hour skipped in spring happens when the gap
ends (03:00); one inside the hour repeated in autumn happens twice (croniter's choice), which can only lengthen
that night's window.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from daemon.errors import SettingsError

KINDS = ("deny", "allow")
MAX_DURATION_S = 31 * 86400
_KEYS = ("kind", "schedule", "duration", "timezone", "name", "manual")
_ALIASES = ("@yearly", "@annually", "@monthly", "@weekly", "@daily", "@midnight", "@hourly")
_UNITS = {"d": 86400, "h": 3600, "m": 60, "s": 1}
_DURATION = re.compile(r"(?:\d+[dhms])+")
_FOLD_SPAN = timedelta(hours=3)        # longer than any repeated (autumn) stretch of local time
_FOLD_FIRES = 240                      # bound on the fire times looked at inside it
_MAX_STEPS = 1000                      # bound on the walk to the end of a blocked stretch
_HORIZON = timedelta(days=400)         # a longer stretch has no end in sight (a yearly allow window fits)
_SCHEDULE_HINT = "five fields: minute hour day-of-month month day-of-week, e.g. '0 22 * * 5' (Fridays 22:00)"


def parse_duration(text: str) -> int:
    """Seconds in a duration such as "60h", "1h30m" or "2d" (units d, h, m, s); ValueError when malformed."""
    compact = text.replace(" ", "")
    if not _DURATION.fullmatch(compact):
        raise ValueError(f"duration {text!r} is not a number of d, h, m or s (e.g. '60h', '1h30m')")
    return sum(int(n) * _UNITS[unit] for n, unit in re.findall(r"(\d+)([dhms])", compact))


def format_duration(seconds: int) -> str:
    """The short form of a duration: whole days as "2d", otherwise hours, minutes and seconds ("60h", "1h30m")."""
    if seconds and seconds % 86400 == 0:
        return f"{seconds // 86400}d"
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    return "".join(f"{n}{u}" for n, u in ((hours, "h"), (minutes, "m"), (secs, "s")) if n) or "0s"


def _utc(when: datetime) -> datetime:
    if when.tzinfo is None or when.utcoffset() is None:
        raise ValueError(f"{when!r} has no time zone; pass an aware datetime")
    return when.astimezone(UTC)


def _iso(when: datetime) -> str:
    return when.isoformat(timespec="seconds")


@dataclass(frozen=True, slots=True)
class Window:
    """One `[[windows]]` table: from every fire time of `schedule` (in `timezone`), `duration_s` of deny/allow.

    Build these with `windows_from_settings`, which validates them; methods take and return aware datetimes.
    """

    kind: str
    schedule: str
    duration_s: int
    timezone: str = "UTC"
    name: str = ""
    manual: bool = False

    @property
    def label(self) -> str:
        """The name, or the schedule of an unnamed window."""
        return self.name or self.schedule

    def describe(self) -> str:
        """The window for people, e.g. deny window 'weekend freeze' (0 22 * * 5 for 60h, Europe/Madrid)."""
        named = f" '{self.name}'" if self.name else ""
        zone = f", {self.timezone}" if self.timezone != "UTC" else ""
        return f"{self.kind} window{named} ({self.schedule} for {format_duration(self.duration_s)}{zone})"

    def as_dict(self) -> dict[str, Any]:
        """The window as settings-like JSON."""
        return {"name": self.name, "kind": self.kind, "schedule": self.schedule,
                "duration": format_duration(self.duration_s), "duration_s": self.duration_s,
                "timezone": self.timezone, "manual": self.manual}

    def active_at(self, now: datetime) -> datetime | None:
        """When the occurrence active at `now` ends (UTC), or None when the window is not active.

        An occurrence starts at a fire time and covers [start, end). Occurrences of a window longer than its
        cron period overlap; the one started last ends last, except after an autumn fold, where an earlier start
        can end later on the wall clock, so the fire times around a fold are all looked at.
        """
        now = _utc(now)
        ends = [end for start in self._starts_until(now) if (end := self._end(start)) > now]
        return max(ends, default=None)

    def next_start(self, after: datetime) -> datetime | None:
        """The first fire time strictly after `after` (UTC), or None when the schedule never fires again."""
        after = _utc(after)
        from croniter import CroniterBadDateError, croniter  # type: ignore[import-untyped, unused-ignore]  # no types

        try:
            # Fire times are whole minutes, so strictly after `after` is strictly after its whole second.
            it = croniter(self.schedule, after.replace(microsecond=0).astimezone(self._zone()))
            for _ in range(4):
                start = _utc(it.get_next(datetime))
                if start > after:
                    return start
        except CroniterBadDateError:
            pass  # the schedule has no further fire time
        return None

    def _zone(self) -> ZoneInfo:
        return ZoneInfo(self.timezone)

    def _starts_until(self, now: datetime) -> Iterator[datetime]:
        """Fire times at or before `now` (UTC, newest first): the latest, plus those within a fold's span of it
        when the zone's offset changed there."""
        from croniter import CroniterBadDateError, croniter  # type: ignore[import-untyped, unused-ignore]  # no types

        zone = self._zone()
        # get_prev is strictly before its start and fire times are whole minutes: start just past now's second.
        it = croniter(self.schedule, (now.replace(microsecond=0) + timedelta(seconds=1)).astimezone(zone))
        latest: datetime | None = None
        folded = False
        try:
            for _ in range(_FOLD_FIRES):
                start = _utc(it.get_prev(datetime))
                if start > now:
                    continue
                if latest is None:
                    latest = start
                    folded = start.astimezone(zone).utcoffset() != (start - _FOLD_SPAN).astimezone(zone).utcoffset()
                elif not folded or start < latest - _FOLD_SPAN:
                    return
                yield start
        except CroniterBadDateError:
            return  # the schedule never fired before now

    def _end(self, start: datetime) -> datetime:
        """`start` plus the duration on the window zone's wall clock, in UTC (never before `start`)."""
        zone = self._zone()
        wall = start.astimezone(zone).replace(tzinfo=None) + timedelta(seconds=self.duration_s)
        end = wall.replace(tzinfo=zone, fold=0).astimezone(UTC)  # a time in a spring gap maps past it
        return end if end > start else start + timedelta(seconds=self.duration_s)


@dataclass(frozen=True, slots=True)
class Gate:
    """Whether applying may run now; when blocked, `until` is when it may resume (None: not within reach)."""

    blocked: bool
    until: datetime | None = None
    reason: str = ""
    window: str = ""

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready form (`until` in ISO 8601)."""
        return {"blocked": self.blocked, "until": _iso(self.until) if self.until else None,
                "reason": self.reason, "window": self.window}


def _rules(windows: Sequence[Window], manual: bool) -> tuple[list[Window], list[Window], bool]:
    """The deny windows that count, the allow windows, and whether being outside all allow windows blocks."""
    denies = [w for w in windows if w.kind == "deny" and not (manual and w.manual)]
    allows = [w for w in windows if w.kind == "allow"]
    need_allow = bool(allows) and not (manual and any(w.manual for w in allows))
    return denies, allows, need_allow


def _resume(windows: Sequence[Window], now: datetime, manual: bool) -> tuple[datetime | None, list[Window]]:
    """The first instant at or after `now` when applying is allowed, and the windows that held it back."""
    denies, allows, need_allow = _rules(windows, manual)
    held: list[Window] = []
    t = now
    for _ in range(_MAX_STEPS):
        if t - now > _HORIZON:
            break
        active = [(end, w) for w in denies if (end := w.active_at(t)) is not None]
        if active:
            end, w = max(active, key=lambda pair: pair[0])
        elif need_allow and not any(a.active_at(t) for a in allows):
            starts = [(start, a) for a in allows if (start := a.next_start(t)) is not None]
            if not starts:
                break
            end, w = min(starts, key=lambda pair: pair[0])
        else:
            return t, held
        if w not in held:
            held.append(w)
        t = end
    return None, held


def _until_text(until: datetime | None) -> str:
    return f"until {_iso(until)}" if until else "with no end in sight"


def gate(windows: Sequence[Window], now: datetime, manual: bool = False) -> Gate:
    """Whether applying may run at `now`; `manual` is a person's explicit `stratum apply`."""
    now = _utc(now)
    denies, allows, need_allow = _rules(windows, manual)
    active = [(end, w) for w in denies if (end := w.active_at(now)) is not None]
    if active:
        _, w = max(active, key=lambda pair: pair[0])
        until, held = _resume(windows, now, manual)
        more = [h.describe() for h in held if h is not w]
        reason = f"{w.describe()} {_until_text(until)}" + (f" (then {', '.join(more)})" if more else "")
        return Gate(True, until, reason, w.label)
    inside = [(end, a) for a in allows if (end := a.active_at(now)) is not None]
    if need_allow and not inside:
        until, _ = _resume(windows, now, manual)
        opens = [(start, a) for a in allows if (start := a.next_start(now)) is not None]
        if not opens:
            return Gate(True, None, "outside every allow window, and none opens again", allows[0].label)
        start, a = min(opens, key=lambda pair: pair[0])
        reason = f"outside every allow window; {a.describe()} opens {_iso(start)}"
        if until != start:
            reason += f"; applying resumes {_until_text(until).removeprefix('until ')}"
        return Gate(True, until, reason, a.label)
    skipped = [w for w in windows if w.kind == "deny" and w not in denies and w.active_at(now)]
    if skipped:
        return Gate(False, reason=f"manual apply permitted in {skipped[0].describe()}", window=skipped[0].label)
    if inside:
        end, a = max(inside, key=lambda pair: pair[0])
        return Gate(False, reason=f"inside {a.describe()} until {_iso(end)}", window=a.label)
    if allows:
        return Gate(False, reason="manual apply permitted outside the allow windows")
    return Gate(False)


def next_change(windows: Sequence[Window], now: datetime) -> datetime | None:
    """The next instant after `now` at which the gate may flip (a window opens or closes), or None."""
    now = _utc(now)
    moments = [t for w in windows for t in (w.active_at(now), w.next_start(now)) if t is not None]
    return min(moments, default=None)


# -- settings ------------------------------------------------------------------------------------------------------
def _field(item: Mapping[str, Any], key: str, kind: type, at: str, default: Any = None) -> Any:
    value = item.get(key, default)
    if value is None:
        raise SettingsError(f"a window needs `{key}`", where=at, hint=f"known keys: {', '.join(_KEYS)}")
    if not isinstance(value, kind):
        raise SettingsError(f"`{key}` must be a {kind.__name__}, not {value!r}", where=at)
    return value


def _schedule(text: str, at: str) -> str:
    # croniter (with dateutil, ~30 ms) loads when a host declares [[windows]], not with every verb.
    from croniter import CroniterBadDateError, CroniterError, croniter  # type: ignore[import-untyped, unused-ignore]  # no types

    if text.startswith("@") and text not in _ALIASES:
        raise SettingsError(f"schedule {text!r} is not a cron alias", where=at, hint=f"aliases: {', '.join(_ALIASES)}")
    if not text.startswith("@") and len(text.split()) != 5:
        raise SettingsError(f"schedule {text!r} has {len(text.split())} fields, not 5", where=at, hint=_SCHEDULE_HINT)
    try:
        croniter(text, datetime(2000, 1, 1, tzinfo=UTC)).get_next(datetime)
    except CroniterBadDateError as err:
        raise SettingsError(f"schedule {text!r} never fires", where=at,
                            hint="check the day of the month against the month (there is no 30 February)") from err
    except (CroniterError, ValueError, TypeError, KeyError) as err:
        raise SettingsError(f"schedule {text!r} is not a valid cron expression: {err}", where=at,
                            hint=_SCHEDULE_HINT) from err
    return text


def _window(item: Any, at: str) -> Window:
    if not isinstance(item, Mapping):
        raise SettingsError(f"a window must be a table, not {item!r}", where=at, hint="write it as [[windows]]")
    unknown = sorted(set(item) - set(_KEYS))
    if unknown:
        raise SettingsError(f"unknown key(s) {', '.join(map(repr, unknown))} in a window", where=at,
                            hint=f"known keys: {', '.join(_KEYS)}")
    kind = _field(item, "kind", str, at)
    if kind not in KINDS:
        raise SettingsError(f"`kind` must be 'deny' or 'allow', not {kind!r}", where=at)
    schedule = _schedule(_field(item, "schedule", str, at).strip(), at)
    try:
        duration_s = parse_duration(_field(item, "duration", str, at))
    except ValueError as err:
        raise SettingsError(str(err), where=at, hint="units d, h, m, s, combined like '1h30m'") from err
    if not 0 < duration_s <= MAX_DURATION_S:
        raise SettingsError(f"duration {item['duration']!r} must be more than 0 and at most 31 days", where=at)
    zone = _field(item, "timezone", str, at, "UTC")
    try:
        ZoneInfo(zone)
    except (ZoneInfoNotFoundError, ValueError) as err:
        raise SettingsError(f"unknown timezone {zone!r}", where=at,
                            hint="an IANA zone name such as 'Europe/Madrid' (default: UTC)") from err
    return Window(kind, schedule, duration_s, zone, _field(item, "name", str, at, ""),
                  _field(item, "manual", bool, at, False))


def windows_from_settings(items: Sequence[Mapping[str, Any]], where: str = "") -> tuple[Window, ...]:
    """Validated windows from the `[[windows]]` tables of host settings; SettingsError names the bad one."""
    if isinstance(items, str | Mapping) or not isinstance(items, Sequence):
        raise SettingsError("`windows` must be an array of tables", where=where,
                            hint="write each window as its own [[windows]] table")
    out: list[Window] = []
    for i, item in enumerate(items):
        at = f"{where}: [[windows]] #{i + 1}" if where else f"[[windows]] #{i + 1}"
        window = _window(item, at)
        if window.name and any(w.name == window.name for w in out):
            raise SettingsError(f"two windows are named {window.name!r}", where=at,
                                hint="give each window its own name")
        out.append(window)
    return tuple(out)
