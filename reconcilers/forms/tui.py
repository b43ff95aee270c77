"""The TUI backend (Textual): the whole form on one screen, Tab between fields, errors inline under each.

Fields hidden by `when` disappear as answers change. "Preview" runs FormSession.check (the one validation)
and, when it passes, shows the plan of the branch; "Submit" commits it. The app returns the Submission
(None when the user quits: nothing written).
"""

from __future__ import annotations

from typing import Any, ClassVar

from textual.app import App, ComposeResult
from textual.binding import BindingType
from textual.containers import Horizontal, VerticalScroll
from textual.widgets import Button, Checkbox, Footer, Input, Label, Select, SelectionList, Static

from reconcilers.errors import StratumError
from reconcilers.forms.answers import shown
from reconcilers.forms.model import Element
from reconcilers.forms.output import Submission
from reconcilers.forms.session import FormSession, Preview

GROUP_ROWS = 3        # rows shown for a repeating group (empty rows are not items)


class FormApp(App[Submission | None]):
    """One form, one screen."""

    BINDINGS: ClassVar[list[BindingType]] = [("ctrl+q", "quit", "Quit"), ("f2", "preview", "Preview")]
    CSS = ".error { color: red; } .help { color: grey; } #plan { border: round green; padding: 0 1; }"

    def __init__(self, session: FormSession, defaults: dict[str, Any], principal: str) -> None:
        super().__init__()
        self.session = session
        self.defaults = defaults
        self.principal = principal
        self.preview_result: Preview | None = None
        self.ready = False

    # -- layout ------------------------------------------------------------------------------------------
    def _widget(self, e: Element, key: str, default: Any) -> Any:
        text = self.session.text
        if e.type == "confirm":
            return Checkbox(text.prompt(e), value=bool(default), id=f"f-{key}")
        if e.type == "select":
            labels = self.session.labels(e.name)
            choices = [(text.option(e, v, lbl), v) for v, lbl in labels.items()]
            return Select(choices, value=default if default in labels else Select.BLANK, id=f"f-{key}",
                          allow_blank=True)
        if e.type == "multiselect":
            labels = self.session.labels(e.name)
            chosen = set(default or [])
            return SelectionList[str](*[(text.option(e, v, lbl), v, v in chosen) for v, lbl in labels.items()],
                                      id=f"f-{key}")
        return Input(value="" if default is None else str(default), placeholder=text.placeholder(e),
                     password=e.type == "password", id=f"f-{key}")

    def _field(self, e: Element, key: str, default: Any) -> list[Any]:
        text = self.session.text
        out: list[Any] = []
        if e.type != "confirm":
            out.append(Label(text.prompt(e), id=f"label-{key}"))
        out.append(self._widget(e, key, default))
        if text.help(e):
            out.append(Static(text.help(e), classes="help", id=f"help-{key}"))
        out.append(Static("", classes="error", id=f"error-{key}"))
        return out

    def compose(self) -> ComposeResult:
        """Every element (groups as rows of their fields), the buttons, the plan."""
        with VerticalScroll():
            yield Static(self.session.text.form_title(self.session.form), id="title")
            for e in self.session.form.elements:
                if e.type == "group":
                    yield Label(self.session.text.prompt(e), id=f"label-{e.name}")
                    prior = self.defaults.get(e.name) or []
                    for i in range(min(e.max_items, max(GROUP_ROWS, e.min_items))):
                        item = prior[i] if i < len(prior) and isinstance(prior[i], dict) else {}
                        for f in e.fields:
                            yield from self._field(f, f"{e.name}-{i}-{f.name}", item.get(f.name, f.default))
                    yield Static("", classes="error", id=f"error-{e.name}")
                else:
                    yield from self._field(e, e.name, self.defaults.get(e.name))
            with Horizontal():
                yield Button(self.session.text.get("ui-preview", "Preview"), id="preview", variant="primary")
                yield Button(self.session.text.get("ui-submit", "Submit"), id="submit", variant="success",
                             disabled=True)
            yield Static("", id="plan")
        yield Footer()

    def on_mount(self) -> None:
        """Hide what the defaults hide."""
        self._refresh_shown()
        self.ready = True

    # -- values ------------------------------------------------------------------------------------------
    def _value(self, e: Element, key: str) -> Any:
        widget = self.query_one(f"#f-{key}")
        if isinstance(widget, Checkbox):
            return widget.value
        if isinstance(widget, Select):
            return None if widget.value is Select.BLANK else widget.value
        if isinstance(widget, SelectionList):
            return list(widget.selected)
        assert isinstance(widget, Input)
        return widget.value if widget.value != "" else None

    def raw_answers(self) -> dict[str, Any]:
        """What the screen holds, as raw answers."""
        out: dict[str, Any] = {}
        for e in self.session.form.elements:
            if e.type == "group":
                items = []
                for i in range(min(e.max_items, max(GROUP_ROWS, e.min_items))):
                    item = {f.name: self._value(f, f"{e.name}-{i}-{f.name}") for f in e.fields}
                    if any(v not in (None, "", False) for v in item.values()):
                        items.append({k: v for k, v in item.items() if v is not None})
                out[e.name] = items
                continue
            value = self._value(e, e.name)
            if value is not None:
                out[e.name] = value
        return out

    def _refresh_shown(self) -> None:
        answers = self.raw_answers()
        for e in self.session.form.elements:
            if e.type == "group":
                continue
            visible = shown(e, answers)
            for prefix in ("label", "f", "help", "error"):
                for widget in self.query(f"#{prefix}-{e.name}"):
                    widget.display = visible

    def on_input_changed(self, _event: Input.Changed) -> None:
        """Conditions follow the answers; an edited form must be previewed again."""
        self._changed()

    def on_select_changed(self, _event: Select.Changed) -> None:
        """See on_input_changed."""
        self._changed()

    def on_checkbox_changed(self, _event: Checkbox.Changed) -> None:
        """See on_input_changed."""
        self._changed()

    def _changed(self) -> None:
        if self.ready:
            self._refresh_shown()
            self.preview_result = None
            self.query_one("#submit", Button).disabled = True

    # -- actions -----------------------------------------------------------------------------------------
    def action_preview(self) -> None:
        """Check the answers; show errors inline, or the plan."""
        for widget in self.query(".error"):
            if isinstance(widget, Static):
                widget.update("")
        checked = self.session.check(self.raw_answers())
        plan = self.query_one("#plan", Static)
        if not checked.ok:
            for key, message in checked.errors.items():
                target = key.replace("[", "-").replace("].", "-").replace("]", "")
                text = self.session.text.error(message)
                found = self.query(f"#error-{_group_key(target)}") if " " not in key else None
                if found:
                    found.first(Static).update(text)
                else:
                    plan.update(f"{key}: {text}")
            return
        try:
            self.preview_result = self.session.preview(checked.answers)
        except StratumError as err:
            plan.update(err.render())
            return
        plan.update(self.preview_result.plan)
        self.query_one("#submit", Button).disabled = False

    def on_button_pressed(self, event: Button.Pressed) -> None:
        """Preview or submit."""
        if event.button.id == "preview":
            self.action_preview()
        elif event.button.id == "submit" and self.preview_result is not None:
            checked = self.session.check(self.raw_answers())
            try:
                sub = self.session.submit(checked.answers, self.principal, self.preview_result)
            except StratumError as err:
                self.query_one("#plan", Static).update(err.render())
                return
            self.exit(sub)


def _group_key(target: str) -> str:
    """`ports-2-port` for `ports[2].port` (1-based in messages, 0-based in widget ids)."""
    parts = target.split("-")
    if len(parts) >= 3 and parts[-2].isdigit():
        parts[-2] = str(int(parts[-2]) - 1)
    return "-".join(parts)
