"""The small language of `when` conditions and `[constraints]`: parsed by hand, evaluated by walking the tree.

Form files are repo content, so a condition is never handed to `eval`: this grammar is all there is.

    expr     := or
    or       := and ("or" and)*
    and      := not ("and" not)*
    not      := "not" not | compare
    compare  := operand (OP operand)?      OP: == != > < >= <= contains startswith endswith in
    operand  := NAME | STRING | NUMBER | true | false | "[" [operand ("," operand)*] "]" | "(" expr ")"
                | "len" "(" NAME ")"

A NAME is an element's name; a hidden or unanswered element reads as `null`, and any comparison with `null`
is false (so `not` of it is true). Expressions are bounded: 2,000 characters, 64 levels of nesting, 128
operators (a long `or` chain builds a tree as deep as it is long).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

MAX_EXPR = 2000
MAX_DEPTH = 64
MAX_OPERATORS = 128       # `a or a or ...` builds a tree as deep as it is long: evaluation recurses that deep
OPERATORS = ("==", "!=", ">=", "<=", ">", "<", "contains", "startswith", "endswith", "in")
_TOKEN = re.compile(r"""\s*(?:(?P<num>-?\d+(?:\.\d+)?)|(?P<str>"(?:[^"\\]|\\.)*"|'(?:[^'\\]|\\.)*')|"""
                    r"""(?P<op>==|!=|>=|<=|>|<)|(?P<punct>[()\[\],])|(?P<name>[A-Za-z_][A-Za-z0-9_]*))""")
_WORDS = {"and", "or", "not", "true", "false", "null", "contains", "startswith", "endswith", "in", "len"}


class ExprError(ValueError):
    """A condition that does not parse; `column` is 1-based within the expression."""

    def __init__(self, message: str, column: int) -> None:
        self.column = column
        super().__init__(f"{message} (column {column})")


@dataclass(frozen=True, slots=True)
class Node:
    """One node of a parsed expression: `op` is the operator, `args` its operands (a literal's value)."""

    op: str
    args: tuple[Any, ...]


def _tokens(text: str) -> list[tuple[str, str, int]]:
    out: list[tuple[str, str, int]] = []
    pos = 0
    while pos < len(text):
        if text[pos:].strip() == "":
            break
        m = _TOKEN.match(text, pos)
        if m is None or m.end() == pos:
            raise ExprError(f"unexpected {text[pos:].strip()[:1]!r}", len(text[:pos]) + 1 + (
                len(text[pos:]) - len(text[pos:].lstrip())))
        kind = m.lastgroup or ""
        value = m.group(kind)
        column = m.start(kind) + 1
        if kind == "name" and value in _WORDS:
            kind = "word"
        out.append((kind, value, column))
        pos = m.end()
    return out


class _Parser:
    def __init__(self, text: str) -> None:
        if len(text) > MAX_EXPR:
            raise ExprError(f"the expression is over {MAX_EXPR} characters", MAX_EXPR)
        self.text = text
        self.toks = _tokens(text)
        self.i = 0
        self.depth = 0
        self.operators = 0

    def peek(self) -> tuple[str, str, int]:
        return self.toks[self.i] if self.i < len(self.toks) else ("end", "", len(self.text) + 1)

    def take(self, value: str | None = None) -> tuple[str, str, int]:
        tok = self.peek()
        if value is not None and tok[1] != value:
            raise ExprError(f"expected {value!r}, found {tok[1] or 'the end'!r}", tok[2])
        self.i += 1
        return tok

    def parse(self) -> Node:
        node = self.or_()
        kind, value, col = self.peek()
        if kind != "end":
            raise ExprError(f"unexpected {value!r}", col)
        return node

    def _count(self) -> None:
        self.operators += 1
        if self.operators > MAX_OPERATORS:
            raise ExprError(f"more than {MAX_OPERATORS} operators", self.peek()[2])

    def _nest(self) -> None:
        self.depth += 1
        if self.depth > MAX_DEPTH:
            raise ExprError(f"nested deeper than {MAX_DEPTH} levels", self.peek()[2])

    def or_(self) -> Node:
        self._nest()
        node = self.and_()
        while self.peek()[1] == "or" and self.peek()[0] == "word":
            self.take()
            self._count()
            node = Node("or", (node, self.and_()))
        self.depth -= 1
        return node

    def and_(self) -> Node:
        node = self.not_()
        while self.peek()[1] == "and" and self.peek()[0] == "word":
            self.take()
            self._count()
            node = Node("and", (node, self.not_()))
        return node

    def not_(self) -> Node:
        if self.peek()[1] == "not" and self.peek()[0] == "word":
            self.take()
            self._nest()
            inner = self.not_()
            self.depth -= 1
            return Node("not", (inner,))
        return self.compare()

    def compare(self) -> Node:
        left = self.operand()
        kind, value, _ = self.peek()
        if (kind == "op" or kind == "word") and value in OPERATORS:
            self.take()
            self._count()
            return Node(value, (left, self.operand()))
        return left

    def operand(self) -> Node:
        kind, value, col = self.take()
        if kind == "num":
            return Node("lit", (float(value) if "." in value else int(value),))
        if kind == "str":
            return Node("lit", (bytes(value[1:-1], "utf-8").decode("unicode_escape"),))
        if kind == "word" and value in ("true", "false", "null"):
            return Node("lit", ({"true": True, "false": False, "null": None}[value],))
        if kind == "word" and value == "len":
            self.take("(")
            name_kind, name, name_col = self.take()
            if name_kind != "name":
                raise ExprError("len() takes an element name", name_col)
            self.take(")")
            return Node("len", (name, name_col))
        if kind == "name":
            return Node("var", (value, col))
        if value == "(":
            node = self.or_()
            self.take(")")
            return node
        if value == "[":
            items: list[Node] = []
            while self.peek()[1] != "]":
                self._count()
                items.append(self.operand())
                if self.peek()[1] != ",":
                    break
                self.take(",")
            self.take("]")
            return Node("list", tuple(items))
        raise ExprError(f"expected a value, found {value or 'the end'!r}", col)


def parse(text: str) -> Node:
    """The tree of `text`; raises ExprError (with the column) when it does not parse."""
    return _Parser(text).parse()


def names(node: Node) -> list[tuple[str, int]]:
    """Every element name the expression reads, with its column."""
    if node.op in ("var", "len"):
        return [(str(node.args[0]), int(node.args[1]))]
    if node.op == "lit":
        return []
    return [n for arg in node.args if isinstance(arg, Node) for n in names(arg)]


def _compare(op: str, left: Any, right: Any) -> bool:
    if left is None or right is None:
        return op == "!=" and (left is None) != (right is None)
    try:
        if op == "==":
            return bool(left == right)
        if op == "!=":
            return bool(left != right)
        if op in ("contains", "in"):
            haystack, needle = (left, right) if op == "contains" else (right, left)
            return isinstance(haystack, (str, list)) and needle in haystack
        if op == "startswith":
            return isinstance(left, str) and isinstance(right, str) and left.startswith(right)
        if op == "endswith":
            return isinstance(left, str) and isinstance(right, str) and left.endswith(right)
        if isinstance(left, bool) or isinstance(right, bool):
            return False
        if op == ">":
            return bool(left > right)
        if op == "<":
            return bool(left < right)
        if op == ">=":
            return bool(left >= right)
        return bool(left <= right)
    except TypeError:
        return False                      # "a" > 3: unequal kinds never match


def evaluate(node: Node, answers: Mapping[str, Any]) -> Any:
    """The value of `node` with element values from `answers` (a missing name reads as None)."""
    op, args = node.op, node.args
    if op == "lit":
        return args[0]
    if op == "var":
        return answers.get(str(args[0]))
    if op == "len":
        value = answers.get(str(args[0]))
        return len(value) if isinstance(value, (str, list)) else 0
    if op == "list":
        return [evaluate(a, answers) for a in args]
    if op == "not":
        return not truthy(evaluate(args[0], answers))
    if op == "and":
        return truthy(evaluate(args[0], answers)) and truthy(evaluate(args[1], answers))
    if op == "or":
        return truthy(evaluate(args[0], answers)) or truthy(evaluate(args[1], answers))
    return _compare(op, evaluate(args[0], answers), evaluate(args[1], answers))


def truthy(value: Any) -> bool:
    """Truth as a form reads it: null, false, 0, "" and [] are false."""
    return bool(value) if value is not None else False


def holds(node: Node, answers: Mapping[str, Any]) -> bool:
    """Whether the condition is true for `answers`."""
    return truthy(evaluate(node, answers))
