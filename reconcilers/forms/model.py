"""The form model: `forms/*.toml` read with tomllib into frozen dataclasses, every problem located at file:line.

    [form]            name, title, description, target (a path with {element} placeholders), template,
                      locales
    [[elements]]      name, type, prompt, placeholder, help, default, default_env, default_nickel, required,
                      when, min/max/step (number), min_length/max_length/pattern (text), options /
                      options_from / min_selected / max_selected (select, multiselect), min/max (date as
                      YYYY-MM-DD), fields / min_items / max_items / unique (group)
    [constraints]     name = { check = "<expression>", message = "..." }   (across elements)

tomllib gives no positions, so `Locator` finds the line of a table or key in the text (the n-th
`[[elements]]`, then `key =` inside it).
"""

from __future__ import annotations

import re
import tomllib
from dataclasses import dataclass
from typing import Any

from reconcilers.forms import expr

MAX_FORM_BYTES = 256 * 1024
MAX_ELEMENTS = 200
MAX_OPTIONS = 1000
TYPES = ("text", "password", "number", "confirm", "select", "multiselect", "date", "group")
NAME = re.compile(r"^[a-z][a-z0-9_]{0,63}$")
_ELEMENT_KEYS = {"name", "type", "prompt", "placeholder", "help", "default", "default_env", "default_nickel",
                 "required", "when", "min", "max", "step", "min_length", "max_length", "pattern", "options",
                 "options_from", "min_selected", "max_selected", "fields", "min_items", "max_items", "unique"}
_FORM_KEYS = {"name", "title", "description", "target", "template", "locales"}


@dataclass(frozen=True, slots=True)
class Option:
    """One choice of a select or multiselect."""

    value: str
    label: str


@dataclass(frozen=True, slots=True)
class Element:
    """One question of a form (a group's `fields` are elements too)."""

    name: str
    type: str
    line: int
    prompt: str = ""
    placeholder: str = ""
    help: str = ""
    default: Any = None
    default_env: str = ""
    default_nickel: str = ""
    required: bool = True
    when: str = ""
    when_line: int = 0
    minimum: Any = None
    maximum: Any = None
    step: float | None = None
    min_length: int | None = None
    max_length: int | None = None
    pattern: str = ""
    options: tuple[Option, ...] = ()
    options_from: str = ""
    min_selected: int | None = None
    max_selected: int | None = None
    fields: tuple[Element, ...] = ()
    min_items: int = 0
    max_items: int = 20
    unique: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class Constraint:
    """A check across elements: `check` must hold for the answers, else `message`."""

    name: str
    check: str
    message: str
    line: int


@dataclass(frozen=True, slots=True)
class Form:
    """One form file."""

    path: str
    name: str
    title: str
    description: str
    target: str
    template: str
    locales: tuple[str, ...]
    elements: tuple[Element, ...]
    constraints: tuple[Constraint, ...]

    def element(self, name: str) -> Element | None:
        """The top-level element called `name`."""
        return next((e for e in self.elements if e.name == name), None)


class FormError(ValueError):
    """A form file that cannot be read: `line` is where (0: the file as a whole)."""

    def __init__(self, message: str, line: int = 0) -> None:
        self.line = line
        super().__init__(message)


class Locator:
    """Lines of tables and keys in a TOML text (tomllib keeps none)."""

    _HEADER = re.compile(r"^\s*\[\[?\s*([A-Za-z0-9_.\"-]+)\s*\]\]?")

    def __init__(self, text: str) -> None:
        self.lines = text.splitlines()
        self.headers = [(i + 1, m.group(1)) for i, ln in enumerate(self.lines) if (m := self._HEADER.match(ln))]

    def table(self, name: str, nth: int = 0, after: int = 0, before: int | None = None) -> int:
        """The line of the `nth` header `name` between lines `after` and `before` (0 when absent)."""
        found = [ln for ln, h in self.headers if h == name and ln > after and (before is None or ln < before)]
        return found[nth] if nth < len(found) else 0

    def key(self, key: str, start: int) -> int:
        """The line of `key =` in the table starting at line `start` (the table's line when not found)."""
        pattern = re.compile(rf"^\s*\"?{re.escape(key)}\"?\s*=")
        for i in range(start, len(self.lines)):
            if i >= start and self._HEADER.match(self.lines[i]):
                break
            if pattern.match(self.lines[i]):
                return i + 1
        return start

    def end_of(self, line: int) -> int | None:
        """The line of the next `[[elements]]` after `line` (None: the end of the file)."""
        nxt = [ln for ln, h in self.headers if h == "elements" and ln > line]
        return nxt[0] if nxt else None


def _str(raw: dict[str, Any], key: str, line: int, default: str = "") -> str:
    value = raw.get(key, default)
    if not isinstance(value, str):
        raise FormError(f"`{key}` must be a string", line)
    return value


def _int(raw: dict[str, Any], key: str, line: int) -> int | None:
    value = raw.get(key)
    if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < 0):
        raise FormError(f"`{key}` must be a whole number of at least 0", line)
    return value


def _element(raw: Any, loc: Locator, start: int, line_of_key: Any, depth: int = 0) -> Element:
    if not isinstance(raw, dict):
        raise FormError("an element must be a table", start)
    unknown = sorted(set(raw) - _ELEMENT_KEYS)
    if unknown:
        raise FormError(f"unknown key `{unknown[0]}` in an element (known: {', '.join(sorted(_ELEMENT_KEYS))})",
                        line_of_key(unknown[0]))
    name = _str(raw, "name", start)
    if not NAME.match(name):
        raise FormError(f"element name {name!r} must be lower case letters, digits and _ (starting with a letter)",
                        line_of_key("name"))
    type_ = _str(raw, "type", start, "text")
    if type_ not in TYPES:
        raise FormError(f"element {name}: unknown type {type_!r} (one of {', '.join(TYPES)})", line_of_key("type"))
    options: list[Option] = []
    raw_options = raw.get("options", [])
    if not isinstance(raw_options, list) or len(raw_options) > MAX_OPTIONS:
        raise FormError(f"element {name}: `options` must be a list of at most {MAX_OPTIONS}", line_of_key("options"))
    for opt in raw_options:
        if isinstance(opt, str):
            options.append(Option(opt, opt))
        elif isinstance(opt, dict) and isinstance(opt.get("value"), str):
            options.append(Option(opt["value"], str(opt.get("label", opt["value"]))))
        else:
            raise FormError(f"element {name}: an option is a string or {{ value, label }}", line_of_key("options"))
    fields: list[Element] = []
    if type_ == "group":
        if depth > 0:
            raise FormError(f"element {name}: groups do not nest", start)
        raw_fields = raw.get("fields", [])
        if not isinstance(raw_fields, list) or not raw_fields:
            raise FormError(f"element {name}: a group needs `[[elements.fields]]`", start)
        end = loc.end_of(start)
        for j, sub in enumerate(raw_fields):
            sub_start = loc.table("elements.fields", j, after=start, before=end) or start
            fields.append(_element(sub, loc, sub_start, lambda k, s=sub_start: loc.key(k, s), depth + 1))
    unique = raw.get("unique", [])
    if not isinstance(unique, list) or not all(isinstance(u, str) for u in unique):
        raise FormError(f"element {name}: `unique` must be a list of field names", line_of_key("unique"))
    for number_key in ("min", "max", "step"):
        value = raw.get(number_key)
        if value is not None and type_ == "number" and (not isinstance(value, (int, float)) or isinstance(value, bool)):
            raise FormError(f"element {name}: `{number_key}` must be a number", line_of_key(number_key))
    required = raw.get("required", True)
    if not isinstance(required, bool):
        raise FormError(f"element {name}: `required` must be true or false", line_of_key("required"))
    step = raw.get("step")
    return Element(
        name=name, type=type_, line=start, prompt=_str(raw, "prompt", start, name),
        placeholder=_str(raw, "placeholder", start), help=_str(raw, "help", start), default=raw.get("default"),
        default_env=_str(raw, "default_env", start), default_nickel=_str(raw, "default_nickel", start),
        required=required, when=_str(raw, "when", start), when_line=line_of_key("when"),
        minimum=raw.get("min"), maximum=raw.get("max"), step=float(step) if step is not None else None,
        min_length=_int(raw, "min_length", start), max_length=_int(raw, "max_length", start),
        pattern=_str(raw, "pattern", start), options=tuple(options), options_from=_str(raw, "options_from", start),
        min_selected=_int(raw, "min_selected", start), max_selected=_int(raw, "max_selected", start),
        fields=tuple(fields), min_items=_int(raw, "min_items", start) or 0,
        max_items=_int(raw, "max_items", start) or 20, unique=tuple(unique))


def parse_form(path: str, text: str) -> Form:
    """The form in `text` (the file `path`); raises FormError with the line of the first problem."""
    if len(text.encode("utf-8")) > MAX_FORM_BYTES:
        raise FormError(f"the form file is over {MAX_FORM_BYTES} bytes")
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as err:
        match = re.search(r"line (\d+)", str(err))
        raise FormError(f"TOML: {err}", int(match.group(1)) if match else 0) from err
    except RecursionError as err:
        # tomllib parses nested arrays and inline tables recursively: `a = [[[[...` overflows the stack.
        raise FormError("TOML: arrays or tables nested too deeply") from err
    loc = Locator(text)
    head = data.get("form")
    form_line = loc.table("form")
    if not isinstance(head, dict):
        raise FormError("a form file needs a [form] table (name, title, target, template)")
    unknown = sorted(set(head) - _FORM_KEYS)
    if unknown:
        raise FormError(f"unknown key `{unknown[0]}` in [form]", loc.key(unknown[0], form_line))
    name = _str(head, "name", form_line)
    if not re.match(r"^[a-z][a-z0-9-]{0,63}$", name):
        raise FormError(f"form name {name!r} must be lower case letters, digits and - (starting with a letter)",
                        loc.key("name", form_line))
    for key in ("target", "template"):
        if not head.get(key):
            raise FormError(f"[form] needs `{key}`", form_line)
    raw_elements = data.get("elements", [])
    if not isinstance(raw_elements, list) or not raw_elements or len(raw_elements) > MAX_ELEMENTS:
        raise FormError(f"a form needs between 1 and {MAX_ELEMENTS} [[elements]]")
    elements: list[Element] = []
    for i, raw in enumerate(raw_elements):
        start = loc.table("elements", i)
        elements.append(_element(raw, loc, start, lambda k, s=start: loc.key(k, s)))
    constraints: list[Constraint] = []
    raw_constraints = data.get("constraints", {})
    if not isinstance(raw_constraints, dict):
        raise FormError("[constraints] must be a table of name = { check, message }", loc.table("constraints"))
    c_line = loc.table("constraints")
    for cname, body in raw_constraints.items():
        line = loc.key(cname, c_line) if c_line else 0
        if isinstance(body, str):
            body = {"check": body}
        if not isinstance(body, dict) or not isinstance(body.get("check"), str):
            raise FormError(f"constraint {cname}: needs `check = \"<expression>\"`", line)
        constraints.append(Constraint(cname, body["check"], str(body.get("message", f"{cname} does not hold")), line))
    extra = sorted(set(data) - {"form", "elements", "constraints"})
    if extra:
        raise FormError(f"unknown table [{extra[0]}] (a form has [form], [[elements]] and [constraints])",
                        loc.table(extra[0]))
    locales = head.get("locales", [])
    return Form(path=path, name=name, title=_str(head, "title", form_line, name),
                description=_str(head, "description", form_line), target=_str(head, "target", form_line),
                template=_str(head, "template", form_line),
                locales=tuple(str(x) for x in locales) if isinstance(locales, list) else (),
                elements=tuple(elements), constraints=tuple(constraints))


def parse_when(element: Element) -> expr.Node | None:
    """The parsed `when` of an element (None: always shown)."""
    return expr.parse(element.when) if element.when else None
