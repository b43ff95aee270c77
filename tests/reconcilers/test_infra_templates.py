"""Infra templates render in a bounded worker: deadlines, memory and output caps, located errors, no hang."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from daemon.errors import InputError
from daemon.git.source import GitSource
from daemon.nickel.evaluator import Evaluator
from reconcilers.infra.load import load_infra
from reconcilers.infra.templates import TemplateRenderer
from tests.fixtures import WorkRepo, infra, resource


@pytest.fixture(scope="module")
def renderer() -> Iterator[TemplateRenderer]:
    """One bounded worker for the module, with a short deadline so overruns end quickly."""
    r = TemplateRenderer(timeout=1.0, memory_mb=256, max_output=64 * 1024)
    yield r
    r.close()


def test_a_template_renders_with_its_vars(renderer: TemplateRenderer) -> None:
    """The worker renders loops and variables like the in-process Jinja did."""
    out = renderer.render("app", "t.j2", "{% for w in ws %}{{ w }}\n{% endfor %}port={{ port }}\n",
                          {"ws": ["a", "b"], "port": 80})
    assert out == "a\nb\nport=80\n"


def test_nested_long_loops_stop_at_the_deadline_with_the_line(renderer: TemplateRenderer) -> None:
    """Two nested range(100000) loops (ten billion steps) end as a located error, not a hung run."""
    text = "ok\n{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}\n"
    with pytest.raises(InputError) as info:
        renderer.render("app", "templates/loop.j2", text, {})
    assert "did not finish within 1 s" in info.value.what
    assert info.value.where == "templates/loop.j2:2"
    # The worker is usable again afterwards.
    assert renderer.render("app", "t.j2", "{{ 1 + 1 }}", {}) == "2"


def test_a_huge_string_product_is_refused_before_it_is_built(renderer: TemplateRenderer) -> None:
    """`'x' * 2000000000` is refused by size, at its line, without allocating 2 GB."""
    with pytest.raises(InputError) as info:
        renderer.render("app", "templates/big.j2", "a\nb\n{{ 'x' * 2000000000 }}\n", {})
    assert info.value.where == "templates/big.j2:3"
    assert "would build a value" in info.value.what


def test_a_huge_power_is_refused(renderer: TemplateRenderer) -> None:
    """`9 ** 999999999` (a number of gigabits) is refused rather than computed."""
    with pytest.raises(InputError) as info:
        renderer.render("app", "templates/pow.j2", "{{ 9 ** 999999999 }}", {})
    assert info.value.where == "templates/pow.j2:1"


def test_output_is_capped_while_rendering(renderer: TemplateRenderer) -> None:
    """Output grown in small chunks past the cap stops at the cap (counted while rendering, not after)."""
    text = "{% for i in range(100000) %}{{ 'y' * 1000 }}\n{% endfor %}"
    with pytest.raises(InputError) as info:
        renderer.render("app", "templates/out.j2", text, {})
    assert "over 65536 bytes" in info.value.what
    assert info.value.where == "templates/out.j2:1"


def test_memory_is_limited_by_the_worker(renderer: TemplateRenderer) -> None:
    """A value built in steps past the worker's address-space limit ends as an error, and the worker recovers."""
    text = "{% set ns = namespace(s='x' * 4000000) %}{% for i in range(200) %}" \
           "{% set ns.s = ns.s ~ ns.s[:4000000] %}{% endfor %}{{ ns.s | length }}"
    with pytest.raises(InputError) as info:
        renderer.render("app", "templates/mem.j2", text, {})
    assert info.value.where.startswith("templates/mem.j2")
    assert renderer.render("app", "t.j2", "fine", {}) == "fine"


def test_syntax_and_undefined_errors_are_located(renderer: TemplateRenderer) -> None:
    """A syntax error names its line; an undefined variable names the template line that used it."""
    with pytest.raises(InputError) as info:
        renderer.render("app", "t.j2", "ok\n{% for %}\n", {})
    assert info.value.where == "t.j2:2"
    with pytest.raises(InputError) as info:
        renderer.render("app", "u.j2", "a\nb\n{{ missing }}\n", {})
    assert info.value.where == "u.j2"             # the loader pins it on the resource that lacks the variable
    assert "'missing' is undefined (at u.j2:3)" in info.value.what


def test_the_sandbox_still_refuses_escapes(renderer: TemplateRenderer) -> None:
    """Attribute games that reach Python internals are refused by the sandbox inside the worker."""
    with pytest.raises(InputError) as info:
        renderer.render("app", "esc.j2", "{{ ''.__class__.__mro__[1].__subclasses__() }}", {})
    assert "esc.j2" in info.value.where


def test_load_infra_reports_a_runaway_template_as_a_located_problem(
        tmp_path: Path, evaluator: Evaluator, renderer: TemplateRenderer) -> None:
    """Through load_infra, an endless template is a problem at the template's line; other resources still load."""
    repo = WorkRepo(tmp_path / "repo")
    repo.commit({
        "templates/loop.j2": "x\n{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}",
        "infra/a.ncl": infra(resource("bad", "file", path="bad", template="templates/loop.j2"),
                             resource("good", "file", path="good", content="ok")),
    })
    snap = GitSource(str(repo.path), "main", tmp_path / "data").snapshot("main")
    desired = load_infra(snap, evaluator, None, renderer)
    assert [(p.path, p.line) for p in desired.problems] == [("templates/loop.j2", 2)]
    assert "did not finish" in desired.problems[0].message
    assert set(desired.resources) == {"good"}


def test_a_revision_full_of_slow_templates_stops_at_its_budget(tmp_path: Path, evaluator: Evaluator) -> None:
    """Issue 16 item 1: each template has its own deadline, and all of one revision's renders share a budget, so
    many templates each just under the deadline cannot hold a run for minutes. Past the budget the rest are
    refused without being run, each a problem naming its template; the next revision starts a fresh budget."""
    slow = "x\n{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}"
    repo = WorkRepo(tmp_path / "repo")
    repo.commit({
        **{f"templates/t{i}.j2": slow for i in range(8)},
        "infra/a.ncl": infra(*(resource(f"r{i}", "file", path=f"f{i}", template=f"templates/t{i}.j2")
                               for i in range(8))),
    })
    snap = GitSource(str(repo.path), "main", tmp_path / "data").snapshot("main")
    renderer = TemplateRenderer(timeout=0.5, memory_mb=256, budget=1.2)
    try:
        desired = load_infra(snap, evaluator, None, renderer)
        messages = [p.message for p in desired.problems]
        assert len(messages) == 8 and desired.resources == {}
        refused = [m for m in messages if "the budget is 1.2 s" in m]
        # At least one ran to its deadline and the rest were refused. How many ran depends on the host's load (a
        # loaded 2-core machine starts the render worker late), so only the two ends are fixed.
        assert 1 <= len(refused) <= 7, messages
        assert all("did not finish" in m for m in messages if m not in refused)
        assert all(any(f"templates/t{i}.j2" in f"{p.path} {p.message}" for p in desired.problems) for i in range(8))
        again = load_infra(snap, evaluator, None, renderer)   # a fresh budget: the first renders run again
        assert "did not finish" in again.problems[0].message
    finally:
        renderer.close()
