"""The template worker: a child process that renders Jinja templates from repo content, one JSON line each.

A template is code a contributor commits. In the daemon, two nested `range(100000)` loops ran for minutes and
`{{ 'x' * 2000000000 }}` took gigabytes, so rendering runs here: under an address-space limit, with an
interval timer that stops a render at its deadline (the parent kills this process if even that fails), an
output cap counted while rendering (`generate()`, chunk by chunk), and sizes checked before `*` and `**` build
huge values. Every refusal carries the template line it happened on.

Request: {"name": str, "text": str, "vars": {...}, "timeout": float, "max_output": int}
Reply: {"ok": str} or {"error": str, "line": int, "kind": "syntax" | "render" | "limit"}.
"""

from __future__ import annotations

import json
import operator
import resource
import select
import signal
import sys
from types import FrameType, TracebackType
from typing import Any

import jinja2
import jinja2.sandbox
from jinja2.exceptions import SecurityError

MAX_VALUE = 4 * 1024 * 1024          # the biggest string/list `*` may build, and the biggest `**` result in bytes


class _Deadline(Exception):
    """The render overran its deadline (raised from the interval timer's signal handler)."""


class _TooBig(Exception):
    """The output grew over its cap while rendering."""


class ValueTooBig(SecurityError):
    """A `*` or `**` would build a huge value (refused before it is built)."""


def _size(value: Any) -> int:
    return len(value) if isinstance(value, (str, bytes, list, tuple)) else 0


class BoundedEnvironment(jinja2.sandbox.ImmutableSandboxedEnvironment):
    """The sandbox, with `*` and `**` refused when their result would be huge (before it is built)."""

    intercepted_binops = frozenset({"*", "**"})

    def call_binop(self, context: Any, op: str, left: Any, right: Any) -> Any:
        """Check the size a `*` or `**` would produce, then compute it."""
        if op == "*":
            for seq, times in ((left, right), (right, left)):
                if isinstance(times, int) and _size(seq) * max(times, 0) > MAX_VALUE:
                    raise ValueTooBig(f"`*` would build a value of {_size(seq) * times} items "
                                        f"(over {MAX_VALUE})")
            return operator.mul(left, right)
        if op == "**":
            if isinstance(left, int) and isinstance(right, int) and right > 0 \
                    and abs(left) > 1 and abs(left).bit_length() * right > MAX_VALUE * 8:
                raise ValueTooBig(f"`**` would build a number of about {abs(left).bit_length() * right} bits")
            return operator.pow(left, right)
        return super().call_binop(context, op, left, right)


def _template_line(tb: TracebackType | None) -> int:
    """The innermost template line of a traceback (Jinja rewrites frames to `<template>` lines)."""
    line = 0
    while tb is not None:
        if tb.tb_frame.f_code.co_filename == "<template>":
            line = tb.tb_lineno
        tb = tb.tb_next
    return line


def _paused_line(template: jinja2.Template, stream: Any) -> int:
    """The template line a paused render stream stands at (the innermost generator it delegates to)."""
    frame = None
    while stream is not None and getattr(stream, "gi_frame", None) is not None:
        frame = stream.gi_frame
        stream = getattr(stream, "gi_yieldfrom", None)
    return int(template.get_corresponding_lineno(frame.f_lineno)) if frame is not None else 0


def render(text: str, variables: dict[str, Any], timeout: float, max_output: int) -> dict[str, Any]:
    """Render one template within the bounds; never raises."""
    env = BoundedEnvironment(undefined=jinja2.StrictUndefined, autoescape=False, keep_trailing_newline=True)
    try:
        template = env.from_string(text)
    except jinja2.TemplateSyntaxError as err:
        return {"error": f"template syntax: {err.message}", "line": err.lineno or 0, "kind": "syntax"}
    except RecursionError:
        return {"error": "template is nested too deeply to parse", "line": 0, "kind": "limit"}
    parts: list[str] = []
    total = 0
    stream = template.generate(**variables)
    signal.setitimer(signal.ITIMER_REAL, timeout)
    try:
        for chunk in stream:
            total += len(chunk)
            if total > max_output:
                raise _TooBig()
            parts.append(chunk)
    except _Deadline:
        return {"error": f"rendering did not finish within {timeout:g} s (a loop too long?)",
                "line": _template_line(sys.exc_info()[2]), "kind": "limit"}
    except _TooBig:
        return {"error": f"rendered output is over {max_output} bytes", "line": _paused_line(template, stream),
                "kind": "limit"}
    except MemoryError:
        parts.clear()
        return {"error": "rendering ran out of memory (the worker's limit)",
                "line": _template_line(sys.exc_info()[2]), "kind": "limit"}
    except ValueTooBig as err:
        return {"error": str(err), "line": _template_line(sys.exc_info()[2]), "kind": "limit"}
    except RecursionError:
        return {"error": "rendering recursed too deeply (a recursive macro?)",
                "line": _template_line(sys.exc_info()[2]), "kind": "limit"}
    except jinja2.TemplateSyntaxError as err:
        return {"error": f"template syntax: {err.message}", "line": err.lineno or 0, "kind": "syntax"}
    except Exception as err:  # noqa: BLE001 undefined variables, sandbox refusals, type errors: a located reply
        return {"error": str(err) or type(err).__name__, "line": _template_line(sys.exc_info()[2]),
                "kind": "render"}
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
    return {"ok": "".join(parts)}


def _on_alarm(signum: int, frame: FrameType | None) -> None:
    raise _Deadline()


def main() -> None:
    """Serve requests until stdin closes (or nothing comes for the idle time)."""
    limit_mb = int(sys.argv[1]) if len(sys.argv) > 1 else 512
    idle = float(sys.argv[2]) if len(sys.argv) > 2 else 0.0
    if limit_mb > 0:
        limit = limit_mb * 1024 * 1024
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    signal.signal(signal.SIGALRM, _on_alarm)
    signal.signal(signal.SIGINT, signal.SIG_IGN)       # the daemon's Ctrl-C is the daemon's to handle
    while True:
        if idle > 0 and not select.select([sys.stdin], [], [], idle)[0]:
            return
        line = sys.stdin.readline()
        if not line:
            return
        try:
            request = json.loads(line)
            reply = render(str(request["text"]), dict(request["vars"]), float(request["timeout"]),
                           int(request["max_output"]))
            out = json.dumps(reply)
        except MemoryError:
            out = json.dumps({"error": "rendering ran out of memory (the worker's limit)", "line": 0,
                              "kind": "limit"})
        sys.stdout.write(out + "\n")
        sys.stdout.flush()


if __name__ == "__main__":
    main()
