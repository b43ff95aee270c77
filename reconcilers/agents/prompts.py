"""Prompt templates: Jinja2, sandboxed and bounded, with helpers that pull context.

Helpers a template may call (each answers text): `runbook(query)` and `decisions(query)` search the knowledge
index, `plan()` is the current read-only plan summary, and `inputs` holds what triggered the run and the
outputs of earlier pipeline steps. The helpers come from a `Context` the caller builds (the reconciler hands
knowledge search; a test a real search over a real index or plain functions).

Rendering a committed template runs in the bounded template worker of the infra reconciler (a child process
with a deadline, a memory limit and an output cap: reconcilers/infra/templates.py), never in the runner's
process. Helpers cannot cross into that process, so their calls are answered first, here: each call whose
argument is a text literal or `inputs.<name>` is looked up before rendering, and inside the worker
`runbook(...)`, `decisions(...)` and `plan()` are macros reading those answers. Parsing (to find the calls)
is linear in the template's size, which is capped.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

import jinja2
from jinja2 import nodes
from jinja2.sandbox import ImmutableSandboxedEnvironment

MAX_PROMPT = 32_000          # characters of a rendered prompt: larger is refused, not truncated silently
MAX_TEMPLATE = 64_000        # characters of a prompt template
MAX_HELPER = 4_000           # characters one helper may add
MAX_CALLS = 20               # helper calls answered per render
RENDER_TIMEOUT_S = 5.0
HELPERS = ("runbook", "decisions", "plan")
# On the template's first line (no newline), so the template's own line numbers stay what the author sees.
PRELUDE = ("{%- macro runbook(q) -%}{{ stratum_helpers.runbook[q] | default('(not available: a helper "
           "argument must be text or inputs.<name>)') }}{%- endmacro -%}"
           "{%- macro decisions(q) -%}{{ stratum_helpers.decisions[q] | default('(not available: a helper "
           "argument must be text or inputs.<name>)') }}{%- endmacro -%}"
           "{%- macro plan() -%}{{ stratum_helpers.plan }}{%- endmacro -%}")


def sandbox() -> jinja2.Environment:
    """The environment prompts are parsed in (validate): immutable sandbox, undefined names raise."""
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
    """A template failed to render (syntax, undefined name, sandbox refusal, a bound hit, too long)."""


class Renderer(Protocol):
    """What renders a template text with JSON variables, bounded: the infra TemplateRenderer."""

    def render(self, rid: str, template: str, text: str, variables: Mapping[str, Any]) -> str:
        """The rendered text, or an InputError."""
        ...


def bounded_renderer() -> Renderer:
    """A template worker for prompts: its own process, deadline, memory limit and output cap."""
    from reconcilers.infra.templates import TemplateRenderer

    return TemplateRenderer(timeout=RENDER_TIMEOUT_S, max_output=MAX_PROMPT + len(PRELUDE), budget=1e9)


def _argument(arg: nodes.Expr, inputs: Mapping[str, Any]) -> str | None:
    """A helper call's argument when it can be known before rendering: a text literal or inputs.<name>."""
    if isinstance(arg, nodes.Const) and isinstance(arg.value, str):
        return arg.value
    if isinstance(arg, nodes.Getattr) and isinstance(arg.node, nodes.Name) and arg.node.name == "inputs":
        value = inputs.get(arg.attr)
        return value if isinstance(value, str) else json.dumps(value, default=str) if value is not None else None
    return None


def answers(template: str, ctx: Context) -> dict[str, Any]:
    """The helpers' answers for every call in `template` whose argument is known before rendering."""
    try:
        tree = sandbox().parse(template)
    except jinja2.TemplateSyntaxError as err:
        raise PromptError(f"prompt template: line {err.lineno}: {err.message}") from err
    found: dict[str, Any] = {"runbook": {}, "decisions": {}, "plan": ""}
    calls = 0
    for call in tree.find_all(nodes.Call):
        if not isinstance(call.node, nodes.Name) or call.node.name not in HELPERS:
            continue
        calls += 1
        if calls > MAX_CALLS:
            raise PromptError(f"prompt template: more than {MAX_CALLS} helper calls")
        if call.node.name == "plan":
            found["plan"] = str(ctx.plan())[:MAX_HELPER]
            continue
        arg = _argument(call.args[0], ctx.inputs) if call.args else None
        if arg is not None and arg not in found[call.node.name]:
            fn = ctx.runbook if call.node.name == "runbook" else ctx.decisions
            found[call.node.name][arg] = str(fn(arg))[:MAX_HELPER]
    return found


def render(template: str, ctx: Context, renderer: Renderer) -> str:
    """The prompt text, rendered by `renderer` (bounded); raises PromptError with the template's message."""
    if len(template) > MAX_TEMPLATE:
        raise PromptError(f"prompt template is {len(template)} characters, over the {MAX_TEMPLATE} limit")
    variables = {"inputs": json.loads(json.dumps(dict(ctx.inputs), default=str)),
                 "stratum_helpers": answers(template, ctx)}
    from reconcilers.errors import InputError

    try:
        out = renderer.render("prompt", "prompt", PRELUDE + template, variables)
    except InputError as err:
        raise PromptError(f"prompt template: {err.what}" + (f" ({err.where})" if err.where else "")) from err
    if len(out) > MAX_PROMPT:
        raise PromptError(f"prompt template rendered {len(out)} characters, over the {MAX_PROMPT} limit")
    return out
