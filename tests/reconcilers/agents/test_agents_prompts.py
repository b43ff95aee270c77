"""Prompt templates render in the bounded template worker (a child process with a deadline and an output cap),
with the knowledge helpers answered before rendering."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from reconcilers.agents.prompts import Context, PromptError, Renderer, bounded_renderer, render


@pytest.fixture(scope="module")
def renderer() -> Iterator[Renderer]:
    """One template worker for the module."""
    r = bounded_renderer()
    yield r
    r.close()  # type: ignore[attr-defined]


def test_helpers_and_inputs(renderer: Renderer) -> None:
    """runbook() with a literal or inputs.<name>, decisions() and plan() are answered; line numbers are the
    author's (the helpers' prelude shares the first line)."""
    ctx = Context(runbook=lambda q: f"RB[{q}]", decisions=lambda q: f"ADR[{q}]", plan=lambda: "no changes",
                  inputs={"check": "pg", "message": "refused"})
    text = "Check {{ inputs.check }}: {{ inputs.message }}\n{{ runbook('disk full') }} {{ runbook(inputs.check) }}" \
           "\n{{ decisions('restarts') }} / {{ plan() }}"
    assert render(text, ctx, renderer) == "Check pg: refused\nRB[disk full] RB[pg]\nADR[restarts] / no changes"


def test_an_argument_not_known_before_rendering_says_so(renderer: Renderer) -> None:
    """A helper argument computed inside the template cannot be answered; the prompt says why."""
    out = render("{{ runbook('x' ~ 'y') }}", Context(runbook=lambda q: "never"), renderer)
    assert out.startswith("(not available: a helper argument must be text or inputs.<name>)")


def test_a_template_that_runs_forever_is_stopped(renderer: Renderer) -> None:
    """Nested loops past the worker's deadline fail the render with a clear message; the worker is replaced."""
    loop = "{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}"
    with pytest.raises(PromptError, match="did not finish within"):
        render(loop, Context(), renderer)
    assert render("ok {{ inputs.a }}", Context(inputs={"a": 1}), renderer) == "ok 1"


def test_an_undefined_name_is_a_prompt_error(renderer: Renderer) -> None:
    """Undefined names fail (strict), with the template's message."""
    with pytest.raises(PromptError, match="nothing"):
        render("{{ nothing.here }}", Context(), renderer)
