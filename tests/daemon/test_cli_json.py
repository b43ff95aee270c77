"""`--output json` of every verb goes through daemon.cli.common.emit_json (orjson): the same values json printed
before (str() for what JSON has no type for), UTF-8, and json's answer where orjson refuses a value."""

from __future__ import annotations

import datetime as dt
import json
from dataclasses import dataclass
from pathlib import Path

import pytest

from daemon.cli.common import emit_json


@dataclass(frozen=True, slots=True)
class _Point:
    x: int


def test_emit_json_prints_what_json_printed(capsysbinary: pytest.CaptureFixture[bytes]) -> None:
    """Strings (non-ASCII included), numbers, nesting, tuples, int keys, paths, datetimes and dataclasses
    print as json.dumps(default=str) printed them, parsed back to the same value."""
    data = {"name": "café ✓", "n": 3, "f": 0.5, "none": None, "ok": True, "t": (1, 2), "nested": {"a": [1, {}]},
            1: "int key", "path": Path("/srv/x"), "when": dt.datetime(2026, 1, 2, 3, 4, 5),
            "point": _Point(1)}
    emit_json(data)
    out = capsysbinary.readouterr().out
    assert out.endswith(b"\n")
    assert json.loads(out.decode("utf-8")) == json.loads(json.dumps(data, default=str))
    assert "café ✓".encode() in out                                    # UTF-8, not \u escapes


def test_a_value_orjson_refuses_is_printed_by_json(capsysbinary: pytest.CaptureFixture[bytes]) -> None:
    """An integer over 64 bits (orjson refuses it) still prints, exactly."""
    emit_json({"big": 2**70, "s": "é"})
    assert json.loads(capsysbinary.readouterr().out.decode("utf-8")) == {"big": 2**70, "s": "é"}


def test_emit_json_writes_to_a_text_stream_swapped_in() -> None:
    """A caller that swaps stdout for a StringIO (no binary buffer) still gets the JSON, as text."""
    import contextlib
    import io

    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        emit_json({"s": "é", "n": 1})
    assert json.loads(out.getvalue()) == {"s": "é", "n": 1}
