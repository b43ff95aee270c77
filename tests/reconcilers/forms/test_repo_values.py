"""Values from the repository: `options_from` and `default_nickel` are Nickel expressions evaluated over the
base revision (through the Evaluator port, bounded), `default_env` reads the environment of whoever runs."""

from __future__ import annotations

import pytest

from reconcilers.errors import InputError
from reconcilers.forms.loader import load_forms
from reconcilers.forms.session import FormSession
from tests.reconcilers.forms.conftest import OpsRepo

FORM = '''[form]
name = "pick"
title = "Pick"
target = "infra/picked/{name}.ncl"
template = "forms/templates/pick.ncl.j2"

[[elements]]
name = "name"
default_env = "PICK_NAME"

[[elements]]
name = "after"
type = "select"
options_from = "(import \\"infra/app.ncl\\").resources |> std.record.fields"

[[elements]]
name = "port"
type = "number"
default_nickel = "(import \\"infra/app.ncl\\").resources.app-config.vars.port + 1"
'''
TEMPLATE = '''{ resources = { {{ name }} = { kind = 'directory, path = "srv/picked/{{ name }}",
  depends_on = [{{ ncl.after }}], description = "port {{ port }}" } } }
'''


def _session(ops: OpsRepo, form: str = FORM) -> FormSession:
    ops.work.commit({"forms/pick.toml": form, "forms/templates/pick.ncl.j2": TEMPLATE}, message="pick")
    snap = ops.source.snapshot("main")
    loaded = load_forms(snap)
    assert loaded.problems == ()
    return FormSession(loaded.forms["pick"], snap, ops.evaluator, environ={"PICK_NAME": "from-env"})


def test_options_and_defaults_come_from_the_repository(ops: OpsRepo) -> None:
    """The select offers the ids of infra/app.ncl; the port default is the app's port + 1; the name the env's."""
    session = _session(ops)
    try:
        assert set(session.options()["after"]) == {"app-dir", "app-config", "app-current", "app-service",
                                                   "app-init"}
        assert session.defaults() == {"name": "from-env", "port": 8081}
        assert session.check({"name": "x", "after": "nope", "port": 1}).errors["after"].startswith("must be one of")
        preview = session.preview(session.check({"name": "x", "after": "app-dir", "port": 1}).answers)
        assert "| create | `x` | directory |" in preview.plan
    finally:
        session.close()


def test_a_failing_expression_names_the_element(ops: OpsRepo) -> None:
    """options_from that does not evaluate: an InputError at the form's element line."""
    session = _session(ops, FORM.replace("std.record.fields", "std.record.nope"))
    try:
        with pytest.raises(InputError, match="element after: options_from failed") as err:
            session.options()
        assert err.value.where == "forms/pick.toml:11"
    finally:
        session.close()
