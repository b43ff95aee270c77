"""The infra contract's checks in Python, after Nickel's cheap `Shape` pass (load step 1).

`(import "infra.ncl").Config` costs Nickel about 0.35 ms per resource (custom contracts, per-kind dispatch,
defaults merged); its `Shape` about half of that. So infra files are evaluated with `Shape`, which leaves
exactly what JSON cannot show to Nickel (enum tags versus strings, closed field sets), and this module checks
the rest of `Config` on the decoded value and fills in its defaults, giving the value `Config` would give.

A big revision's files that declare `file` resources only take `FileShape` instead (the same field contracts
without the other kinds' fields: Nickel's cost grows with a record contract's fields, and 5,000 resources cost a
third less); which files read as such is a guess from their text (`files_only`), checked by FileShape itself.

This is a filter, never the judge: a value it does not accept, a file `Shape` rejects, and a file it cannot
vouch for (one that imports, or says `default`: a field of default priority meets the contract's default in a
merge, which Nickel refuses and a decoded value cannot show) are evaluated again with `Config`, and Nickel's
verdict and located error are what the user sees. Keep it in step with nickel/infra.ncl
(tests/reconcilers/infra/test_contract_agree.py holds good and bad samples of every kind against Nickel).
"""

from __future__ import annotations

import functools
import hashlib
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from reconcilers.base import Problem
from reconcilers.locations import nickel_dir
from reconcilers.ports import Evaluator, Snapshot

CONFIG = '(import "infra.ncl").Config'
SHAPE = '(import "infra.ncl").Shape'
# Shape for files of `file` resources only (a third cheaper in Nickel). Used when the fast files of a revision
# hold this many bytes or more: below, one run for every file costs less than a second run would (~40 ms).
FILE_SHAPE = '(import "infra.ncl").FileShape'
FILE_SHAPE_AT = 64 * 1024
# The nickel/infra.ncl this module mirrors (sha256 of the file). Any other text turns the fast pass off (every
# file is evaluated with Config: slower, never wrong), and tests/reconcilers/infra/test_contract_agree.py fails
# until this module, Shape and the samples follow the change and the digest is updated.
LIBRARY_SHA256 = "6e3b43c69a0c85582cb541e6cf8148bfb0097c2c0d19f610bfad6cdd06bb4902"
MAX_NICKEL_BYTES = 1024 * 1024                       # as the evaluator's: a bigger file goes to Config's errors

# Nickel's regexes (Rust `regex`: `$` is the end of the text) as Python full matches.
_ID = re.compile(r"[a-z0-9][a-z0-9_.-]{0,127}")
_MODE = re.compile(r"0?[0-7]{3}")
_DOTDOT = re.compile(r"(^|/)\.\.(/|\Z)")
_CIDR = re.compile(r"[0-9]{1,3}(\.[0-9]{1,3}){3}/[0-9]{1,2}")
_PORTS = re.compile(r"[0-9]{1,5}(-[0-9]{1,5})?")
_ISSUE = re.compile(r"[A-Za-z0-9_-]+(/[A-Za-z0-9_-]+)*/issue/[A-Za-z0-9_.-]+")
_NAME = re.compile(r"[^,\s]{1,253}")
_CERT_FIELDS = frozenset(("alt_names", "certificate", "common_name", "ip_sans", "part", "ttl"))

Check = Callable[[Any], bool]
REQUIRED = object()                                   # a field without a default that must be there
OPTIONAL = object()                                   # a field without a default that may be absent


def is_str(v: Any) -> bool:
    return isinstance(v, str)


def is_bool(v: Any) -> bool:
    return isinstance(v, bool)


def is_pos_nat(v: Any) -> bool:
    """std.number.PosNat: an integer above 0 (JSON `true` is no number)."""
    return type(v) is int and v > 0


def is_id(v: Any) -> bool:
    return isinstance(v, str) and _ID.fullmatch(v) is not None


def is_mode(v: Any) -> bool:
    return isinstance(v, str) and _MODE.fullmatch(v) is not None


def is_rel_path(v: Any) -> bool:
    """stratum.ncl's RelPath: non-empty, not absolute, no `..` component."""
    return isinstance(v, str) and v != "" and not v.startswith("/") and _DOTDOT.search(v) is None


def _matches(pattern: re.Pattern[str]) -> Check:
    return lambda v: isinstance(v, str) and pattern.fullmatch(v) is not None


def array_of(check: Check) -> Check:
    return lambda v: isinstance(v, list) and all(check(x) for x in v)


def dict_of(check: Check) -> Check:
    return lambda v: isinstance(v, dict) and all(check(x) for x in v.values())


def is_secret_ref(v: Any) -> bool:
    return isinstance(v, dict) and sorted(v) == ["key", "secret"] and is_str(v["secret"]) and is_str(v["key"])


def _names(v: Any) -> bool:
    return isinstance(v, list) and all(isinstance(n, str) and _NAME.fullmatch(n) is not None for n in v)


def cert_ok(v: dict[str, Any]) -> bool:
    """infra.ncl's `cert_problem v == ""`."""
    return (set(v) <= _CERT_FIELDS
            and isinstance(v["certificate"], str) and _ISSUE.fullmatch(v["certificate"]) is not None
            and isinstance(v.get("common_name"), str) and v["common_name"] != ""
            and v.get("part") in ("certificate", "private_key", "ca_chain")
            and ("alt_names" not in v or _names(v["alt_names"]))
            and ("ip_sans" not in v or _names(v["ip_sans"]))
            and ("ttl" not in v or is_str(v["ttl"])))


def _is_cert_ref(v: Any) -> bool:
    return isinstance(v, dict) and "certificate" in v


def string_or_secret(v: Any) -> bool:
    return is_str(v) or is_secret_ref(v) or (_is_cert_ref(v) and cert_ok(v))


def secret_or_cert(v: Any) -> bool:
    return is_secret_ref(v) or (_is_cert_ref(v) and cert_ok(v))


def user_data(v: Any) -> bool:
    return is_str(v) or is_secret_ref(v) or array_of(lambda p: is_str(p) or is_secret_ref(p))(v)


def one_of(*names: str) -> Check:
    return lambda v: v in names and isinstance(v, str)


def provider(v: Any) -> bool:
    """A cloud resource's provider: an enum tag (Shape saw to that), an id, never 'local."""
    return is_id(v) and v != "local"


@dataclass(frozen=True, slots=True)
class Record:
    """A closed record contract: each field's check, the fields required, the defaults (`record()` builds it)."""

    checks: Mapping[str, Check]
    required: frozenset[str]
    fixed: Mapping[str, Any]                          # defaults that are values (strings, numbers, booleans)
    fresh: tuple[tuple[str, Callable[[], Any]], ...]  # defaults that are containers: a new one per value

    def complete(self, value: Any) -> dict[str, Any] | None:
        """`value` with the defaults filled in (keys sorted, as Nickel exports them), or None."""
        if not isinstance(value, dict):
            return None
        checks = self.checks
        for name, item in value.items():
            check = checks.get(name)
            if check is None or not check(item):
                return None                           # a field of no kind's record, or a wrong value
        if not self.required <= value.keys():
            return None
        out = {**self.fixed, **value}                 # the value's own fields over the defaults
        for name, make in self.fresh:
            if name not in value:
                out[name] = make()                    # never shared between values (mutable JSON containers)
        return dict(sorted(out.items()))


def record(fields: Mapping[str, tuple[Check, Any]]) -> Record:
    """A Record from field -> (check, default | REQUIRED | OPTIONAL)."""
    defaults = [(name, d) for name, (_, d) in fields.items() if d is not REQUIRED and d is not OPTIONAL]
    for name, d in defaults:
        if isinstance(d, (list, dict)) and d:
            raise ValueError(f"default of {name}: a container default must be empty (made anew per value)")
    return Record(checks={name: check for name, (check, _) in fields.items()},
                  required=frozenset(name for name, (_, d) in fields.items() if d is REQUIRED),
                  fixed={name: d for name, d in defaults if not isinstance(d, (list, dict))},
                  fresh=tuple((name, type(d)) for name, d in defaults if isinstance(d, (list, dict))))


def record_array(record: Record) -> Check:
    """`Array Rule`: every element checked; elements get their defaults in `complete_arrays`."""
    return lambda v: isinstance(v, list) and all(record.complete(x) is not None for x in v)


_DRIFT = one_of("correct", "detect")
_LOCAL = {
    "kind": (is_str, REQUIRED), "provider": (one_of("local"), "local"), "depends_on": (array_of(is_id), []),
    "prune": (is_bool, True), "drift": (_DRIFT, "correct"), "labels": (dict_of(is_str), {}),
    "description": (is_str, ""),
}
_CLOUD = {
    "kind": (is_str, REQUIRED), "provider": (provider, REQUIRED), "depends_on": (array_of(is_id), []),
    "prune": (is_bool, True), "drift": (_DRIFT, "correct"), "labels": (dict_of(is_str), {}),
    "description": (is_str, ""), "tags": (dict_of(is_str), {}), "timeout": (is_pos_nat, 300),
}
_CIDR_OK = _matches(_CIDR)
RULE = record({"protocol": (one_of("tcp", "udp", "icmp", "all"), "tcp"), "ports": (_matches(_PORTS), "0-65535"),
               "cidr": (_CIDR_OK, "0.0.0.0/0")})
LISTENER = record({"protocol": (one_of("tcp", "http"), "tcp"), "port": (is_pos_nat, REQUIRED),
                   "instance_port": (is_pos_nat, REQUIRED)})
_NESTED = {"rules": RULE, "listeners": LISTENER}     # arrays of records whose elements take defaults too

KINDS: dict[str, Record] = {
    "file": record({**_LOCAL, "path": (is_rel_path, REQUIRED), "content": (string_or_secret, OPTIONAL),
                    "template": (is_rel_path, OPTIONAL), "vars": (lambda v: isinstance(v, dict), {}),
                    "mode": (is_mode, OPTIONAL)}),
    "directory": record({**_LOCAL, "path": (is_rel_path, REQUIRED), "mode": (is_mode, "0755")}),
    "symlink": record({**_LOCAL, "path": (is_rel_path, REQUIRED), "target": (is_rel_path, REQUIRED)}),
    "command": record({**_LOCAL, "run": (is_str, REQUIRED), "creates": (is_rel_path, OPTIONAL),
                       "unless": (is_str, OPTIONAL), "compensate": (is_str, OPTIONAL),
                       "timeout": (is_pos_nat, 300), "env": (dict_of(string_or_secret), {})}),
    "systemd_unit": record({**_LOCAL, "name": (is_str, REQUIRED), "content": (string_or_secret, REQUIRED),
                            "credentials": (dict_of(secret_or_cert), {}), "mode": (is_mode, OPTIONAL)}),
    "server": record({**_CLOUD, "size": (is_str, REQUIRED), "image": (is_str, REQUIRED), "zone": (is_str, OPTIONAL),
                      "subnet": (is_id, OPTIONAL), "firewalls": (array_of(is_id), []),
                      "ssh_key": (is_str, OPTIONAL), "user_data": (user_data, OPTIONAL),
                      "wait_ready": (is_bool, True)}),
    "network": record({**_CLOUD, "cidr": (_CIDR_OK, REQUIRED)}),
    "subnet": record({**_CLOUD, "network": (is_id, REQUIRED), "cidr": (_CIDR_OK, REQUIRED),
                      "zone": (is_str, OPTIONAL)}),
    "firewall": record({**_CLOUD, "network": (is_id, OPTIONAL), "rules": (record_array(RULE), [])}),
    "volume": record({**_CLOUD, "size_gb": (is_pos_nat, REQUIRED), "zone": (is_str, OPTIONAL),
                      "server": (is_id, OPTIONAL), "device": (is_str, "/dev/sdf"),
                      "volume_type": (is_str, "standard")}),
    "dns_record": record({**_CLOUD, "zone": (is_str, REQUIRED), "name": (is_str, ""),
                          "record_type": (one_of("A", "AAAA", "CNAME", "TXT", "MX"), "A"),
                          "ttl": (is_pos_nat, 300), "values": (array_of(is_str), REQUIRED)}),
    "load_balancer": record({**_CLOUD, "zones": (array_of(is_str), []),
                             "listeners": (record_array(LISTENER), REQUIRED),
                             "servers": (array_of(is_id), [])}),
}


def complete_resource(raw: Any) -> dict[str, Any] | None:
    """One resource as `Resource` of infra.ncl makes it, or None when Config would not accept it as is."""
    if not isinstance(raw, dict):
        return None
    record = KINDS.get(raw.get("kind"))  # type: ignore[arg-type]
    if record is None:
        return None
    out = record.complete(raw)
    if out is None:
        return None
    for name, nested in _NESTED.items():
        if name in out:
            out[name] = [nested.complete(x) for x in out[name]]
    return out


def complete_file(value: Any) -> dict[str, Any] | None:
    """One infra file's value under `Config` (`{ resources = {..} }`, defaults filled), or None."""
    if not isinstance(value, dict) or not set(value) <= {"resources"}:
        return None
    resources = value.get("resources", {})
    if not isinstance(resources, dict):
        return None
    out: dict[str, Any] = {}
    for rid, raw in resources.items():
        done = complete_resource(raw)
        if done is None:
            return None
        out[rid] = done
    return {"resources": out}


# A line whose first character (but blanks) is `#` holds no code: a comment, or text inside a multi-line string.
_COMMENT_LINE = re.compile(rb"^[ \t]*#.*$", re.MULTILINE)


def shape_eligible(data: bytes) -> bool:
    """Whether a file's value under Shape + this module equals its value under Config: no imports (whose
    text this module does not see) and no `default` (a default-priority field merged with the contract's
    default is an error in Nickel, invisible in the value). Either word anywhere but on a comment line counts,
    in a string too: a file is sent to Config on the least doubt."""
    if b"default" not in data and b"import" not in data:
        return True
    code = _COMMENT_LINE.sub(b"", data)
    return b"default" not in code and b"import" not in code


# Enum tags of every kind but `file`, as a file would write them (a guess, never a verdict: see files_only).
_OTHER_KIND_TAGS = tuple(f"'{k}".encode() for k in KINDS if k != "file")


def files_only(data: bytes) -> bool:
    """Whether a file reads as declaring `file` resources only: it writes `'file` and no other kind's tag.
    Only picks the cheaper FileShape for a batch: a file it misjudges (a kind built by a function) is refused
    by FileShape and evaluated with Config like any file Shape refuses, so a wrong guess costs time, never a
    different value."""
    return b"'file" in data and not any(tag in data for tag in _OTHER_KIND_TAGS)


@functools.cache
def mirrors_library() -> bool:
    """Whether the installed nickel/infra.ncl is the one this module mirrors (LIBRARY_SHA256)."""
    try:
        return hashlib.sha256((nickel_dir() / "infra.ncl").read_bytes()).hexdigest() == LIBRARY_SHA256
    except OSError:
        return False


@dataclass(frozen=True, slots=True)
class Evaluated:
    """Step 1's result: values under Config per path, located problems, cache keys (as EvalResult)."""

    values: dict[str, Any]
    problems: tuple[Problem, ...]
    keys: dict[str, str]
    rechecked: tuple[str, ...] = ()                   # paths Config evaluated (not vouched for by the fast pass)


# What `evaluate` learnt of files it saw before, both pure: a blob's eligibility for the fast pass, and the
# completed value of a Shape result (by its evaluator key). Values are shared, never changed (as the evaluator's).
_MEMO_MAX = 200_000
_ELIGIBLE: dict[tuple[str, int], tuple[bool, bool]] = {}      # (shape_eligible, files_only)
_COMPLETED: dict[str, dict[str, Any] | None] = {}


def _completed(key: str, value: Any) -> dict[str, Any] | None:
    """A Shape result under the rest of Config (`complete_file`), by its evaluator key: completed once, not on
    every load (the same key, the same value)."""
    if key and key in _COMPLETED:
        return _COMPLETED[key]
    done = complete_file(value)
    if key:
        if len(_COMPLETED) >= _MEMO_MAX:
            _COMPLETED.clear()
        _COMPLETED[key] = done
    return done


def evaluate(snap: Snapshot, evaluator: Evaluator, entries: Sequence[Any],
             on_value: Callable[[str, str, Any], None] | None = None) -> Evaluated:
    """Evaluate infra files: the fast pass for the files it can vouch for, `Config` for every other file.
    `on_value(path, key, value)` is told each value under Config as soon as it is known (see
    Evaluator.evaluate), so the caller's work on it overlaps Nickel's runs; the result holds the same value
    objects."""
    fast: list[str] = []
    slow: list[str] = []
    files: set[str] = set()                       # fast files that declare `file` resources only
    fast_bytes = 0
    mirrored = mirrors_library()
    for entry in entries:
        # By blob: a commit changing one file of 20,000 reads and scans one file, not 20,000 (incr helper).
        known = _ELIGIBLE.get((entry.blob_id, entry.mode)) if mirrored else (False, False)
        if known is None:
            try:
                data = snap.read_entry(entry, MAX_NICKEL_BYTES)
            except Exception:  # noqa: BLE001 unreadable (a link, too big): Config's evaluation reports it, located
                data = b"import"
            known = (shape_eligible(data), files_only(data))
            if len(_ELIGIBLE) >= _MEMO_MAX:
                _ELIGIBLE.clear()
            _ELIGIBLE[(entry.blob_id, entry.mode)] = known
        (fast if known[0] else slow).append(entry.path)
        if known[0]:
            fast_bytes += entry.size
            if known[1]:
                files.add(entry.path)
    values: dict[str, Any] = {}
    keys: dict[str, str] = {}
    if fast:
        def shaped(path: str, key: str, value: Any) -> None:
            done = _completed(key, value)     # completed now, while the workers evaluate the next runs
            if done is not None and on_value is not None:
                on_value(path, key, done)

        # The contract of a file depends on its own text and the revision's size only, never on which files
        # changed: an unchanged file keeps its cache key from one commit to the next.
        groups = [(fast, SHAPE)] if fast_bytes < FILE_SHAPE_AT or not files else \
            [(p, c) for p, c in (([p for p in fast if p in files], FILE_SHAPE),
                                 ([p for p in fast if p not in files], SHAPE)) if p]
        for paths, shape in groups:
            first = evaluator.evaluate(snap, paths, shape, entries, on_value=shaped)
            for path, value in first.values.items():
                done = _completed(first.keys.get(path, ""), value)
                if done is not None:
                    values[path] = done
                    keys[path] = first.keys.get(path, "")
        slow.extend(p for p in fast if p not in values)
    problems: tuple[Problem, ...] = ()
    if slow:
        second = evaluator.evaluate(snap, slow, CONFIG, entries, on_value=on_value)
        values.update(second.values)
        keys.update(second.keys)
        problems = tuple(second.problems)
    return Evaluated(values, problems, keys, tuple(slow))
