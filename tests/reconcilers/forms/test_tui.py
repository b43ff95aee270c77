"""The TUI backend driven by Textual's pilot (no terminal needed): fields, a condition that shows a field,
an inline error from the shared check, the plan, and a submitted branch."""

from __future__ import annotations

import asyncio

import pygit2

from reconcilers.forms.output import Submission
from reconcilers.forms.tui import FormApp
from tests.fixtures import git
from tests.reconcilers.forms.conftest import OpsRepo


def test_the_tui_shows_errors_inline_then_the_plan_then_submits(ops: OpsRepo) -> None:
    """Type a name and a refused port: the port's error shows under it and Submit stays off; fix it, pick
    the `command` runtime (its field appears), preview, submit: the branch exists and main did not move."""
    from textual.widgets import Button, Input, Select, Static

    main = git(ops.work.path, "rev-parse", "main")
    session = ops.session()
    app = FormApp(session, session.defaults(), "carol@example.com")

    async def drive() -> Submission | None:
        async with app.run_test(size=(120, 60)) as pilot:
            assert app.query_one("#f-command").display is False          # runtime python: hidden
            app.query_one("#f-name", Input).value = "ledger"
            app.query_one("#f-port", Input).value = "80"
            await pilot.pause()
            await pilot.click("#preview")
            await pilot.pause()
            assert str(app.query_one("#error-port", Static).render()) == "must be at least 1024"
            assert app.query_one("#submit", Button).disabled
            app.query_one("#f-port", Input).value = "9400"
            app.query_one("#f-runtime", Select).value = "command"
            await pilot.pause()
            assert app.query_one("#f-command").display is True
            app.query_one("#f-command", Input).focus()
            await pilot.press(*"/usr/bin/ledger")
            await pilot.press("f2")
            await pilot.pause()
            assert "| create | `ledger-service` | systemd_unit |" in str(app.query_one("#plan", Static).render())
            await pilot.click("#submit")
            await pilot.pause()
        return app.return_value

    try:
        result = asyncio.run(drive())
    finally:
        session.close()
    assert result is not None and result.branch.startswith("forms/local-service/")
    commit = pygit2.Repository(str(ops.work.path)).revparse_single(result.branch)
    assert '"/usr/bin/ledger"' in commit.tree["infra/services/ledger.ncl"].data.decode()
    assert "Submitted-by: carol@example.com" in commit.message
    assert git(ops.work.path, "rev-parse", "main") == main
