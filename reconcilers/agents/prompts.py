"""Prompt templates: Jinja2 in a sandbox, strict about undefined names, with helpers that pull context.

Helpers a template may call (each answers text, bounded): `runbook(query)` and `decisions(query)` search the
knowledge index, `plan()` is the current read-only plan summary, and `inputs` holds what triggered the run and
the outputs of earlier pipeline steps. The helpers come from a `Context` the caller builds (the reconciler hands
knowledge search; a test hands a real search over a real index or plain functions), so this module imports no
other reconciler.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import jinja2
from jinja2.sandbox import ImmutableSandboxedEnvironment

MAX_PROMPT = 32_000          # characters of a rendered prompt: larger is refused, not truncated silently
MAX_HELPER = 4_000           # characters one helper may add


def sandbox() -> jinja2.Environment:
    """The environment every prompt is parsed and rendered in: immutable sandbox, undefined names raise."""
    return ImmutableSandboxedEnvironment(undefined=jinja2.StrictUndefined, autoescape=False,
                                         keep_trailing_newline=True)


def _none(_query: str) -> str:
    return ""


@dataclass(frozen=True, slots=True)
class Context:
    """What templates may pull in; every callable answers text."""

    runbook: Callable[[str], str] = _none
    decisions: Callable[[str], str] = _none
    plan: Callable[[], str] = lambda: ""
    inputs: Mapping[str, Any] = field(default_factory=dict)


class PromptError(Exception):
    """A template failed to render (undefined name, sandbox violation, too long)."""


def _bounded(fn: Callable[..., str]) -> Callable[..., str]:
    def call(*args: Any) -> str:
        return str(fn(*args))[:MAX_HELPER]
    return call


def render(template: str, ctx: Context) -> str:
    """The prompt text; raises PromptError with the template's own message."""
    env = sandbox()
    try:
        out = env.from_string(template).render(
            runbook=_bounded(ctx.runbook), decisions=_bounded(ctx.decisions), plan=_bounded(ctx.plan),
            inputs=dict(ctx.inputs))
    except jinja2.TemplateError as err:
        raise PromptError(f"prompt template: {err}") from err
    if len(out) > MAX_PROMPT:
        raise PromptError(f"prompt template rendered {len(out)} characters, over the {MAX_PROMPT} limit")
    return out
