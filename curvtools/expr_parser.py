"""The whitelist parser of user expressions (``--act expr --expr TEXT``): text -> tree -> sympy.

A user expression may come from a downloaded checkpoint, a ``config.json`` or a sweep spec, so
it is data, never code: the text is tokenized here, parsed by a small recursive-descent parser
into a tree of :class:`Node` and only then turned into a sympy expression by calling the sympy
functions of a fixed table. Nothing is ever evaluated as Python (no ``eval``, no ``sympify`` of a
string, no ``parse_expr``), and the work is bounded: at most :data:`MAX_CHARS` characters,
:data:`MAX_NODES` tree nodes and :data:`MAX_DEPTH` levels of nesting, and no number larger than
about 10**:data:`MAX_DIGITS` is ever computed. Every refusal is one :class:`BadInput` line.

What a user expression may contain:

* numbers: ``2``, ``0.3``, ``.5``, ``1e-3`` (an integer stays exact, a decimal is a sympy Float,
  as sympy's own parser made them);
* ``x``, the names in ``symbols`` (an activation's own parameters) and the constants ``pi``, ``E``;
* ``+ - * / **``, ``^`` as power, unary ``+``/``-``, parentheses; juxtaposition multiplies
  (``2x``, ``2(x + 1)``, ``(x + 1)(x - 1)``, ``x sin(x)``), as sympy's
  ``implicit_multiplication`` did; precedence and associativity are Python's;
* the functions of :data:`FUNCTIONS` (``exp``, ``log``/``ln``, ``sqrt``, ``tanh``, ...,
  ``Abs``/``abs``, ``Max``, ``Min``, ``sign``, ``Heaviside``, ``sigmoid``, ``softplus``,
  ``Piecewise``);
* inside ``Piecewise((value, condition), ...)`` only: a condition is one comparison
  (``x > 0``, ``x <= 1``; ``<``, ``<=``, ``>``, ``>=``) or ``True``/``False``.

Imports nothing of curvtools except the error type and its quoting; sympy on first use.

Example::

    >>> parse_expression("2x^2 + sigmoid(x)")
    2*x**2 + 1/(1 + exp(-x))
    >>> parse_expression("x.__class__")      # BadInput: unexpected '.' at position 2
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from curvtools.errors import BadInput, shown

MAX_CHARS = 500  # longer text is refused before it is read
MAX_NODES = 300  # tree nodes (numbers, names, operators, calls)
MAX_DEPTH = 40  # nesting of parentheses, calls, signs and powers
MAX_DIGITS = 300  # a power of numbers alone (9**9**9) stays below 10**MAX_DIGITS (floats: 1e308)
MAX_NUMBER_CHARS = 60  # one number literal

# --- tokens -----------------------------------------------------------------------------------

_TOKEN = re.compile(r"""
    (?P<space>\s+)
  | (?P<number>(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?)
  | (?P<name>[A-Za-z][A-Za-z0-9_]*)
  | (?P<op>\*\*|<=|>=|[-+*/^(),<>])
""", re.VERBOSE)


@dataclass(frozen=True)
class Token:
    """One token: ``kind`` is ``number``, ``name``, ``op`` or ``end``; ``at`` its offset."""

    kind: str
    text: str
    at: int


def tokenize(text: str) -> list[Token]:
    """The tokens of ``text`` (spaces dropped), ending with an ``end`` token.

    Raises :class:`BadInput` at the first character that starts no token (``.``, ``_``, quotes,
    brackets, ``=``, ...), naming it and its position.
    """
    tokens: list[Token] = []
    at = 0
    while at < len(text):
        match = _TOKEN.match(text, at)
        if match is None:
            raise _refuse(text, f"unexpected {shown(text[at])} at position {at}")
        kind = match.lastgroup
        if kind != "space":
            if kind == "number" and len(match.group()) > MAX_NUMBER_CHARS:
                raise _refuse(text, f"the number at position {at} has more than "
                                    f"{MAX_NUMBER_CHARS} characters")
            tokens.append(Token(kind, match.group(), at))
        at = match.end()
    tokens.append(Token("end", "", len(text)))
    return tokens


# --- the tree -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Node:
    """A node of a parsed expression.

    ``kind``: ``number`` (``value`` its text), ``name`` (``value`` the name), ``call`` (``value``
    the function, ``args``), ``binary`` (``value`` one of ``+ - * / **``, ``args`` = two),
    ``negate`` (one arg), ``compare`` (``value`` one of ``< <= > >=``, two args) or ``tuple``.
    """

    kind: str
    value: str = ""
    args: tuple[Node, ...] = ()


def parse_tree(text: str, known: frozenset[str] | set[str] = frozenset()) -> Node:
    """Parse ``text`` into a :class:`Node` tree (no sympy involved).

    ``known``: the names allowed besides ``x``, the constants and the functions (an activation's
    parameters). Raises :class:`BadInput` (one line naming the text and the problem) for text
    that is empty, too long, too deep or too large, that does not parse, or that names anything
    unknown.
    """
    if not isinstance(text, str) or not text.strip():
        raise BadInput("--expr must be a non-empty expression in x, e.g. 'x*tanh(x)'")
    if len(text) > MAX_CHARS:
        raise _refuse(text, f"is longer than {MAX_CHARS} characters")
    return _Parser(text, tokenize(text), frozenset(known)).parse()


class _Parser:
    """Recursive descent over the grammar (Python's precedence, ``^`` = ``**``)::

        expr    := sum [('<' | '<=' | '>' | '>=') sum]
        sum     := product {('+' | '-') product}
        product := unary {('*' | '/') unary | power}      # juxtaposition multiplies
        unary   := ('+' | '-') unary | power
        power   := atom [('**' | '^') unary]              # right-associative
        atom    := NUMBER | NAME | FUNCTION '(' expr {',' expr} ')' | '(' expr {',' expr} ')'
    """

    def __init__(self, text: str, tokens: list[Token], known: frozenset[str]):
        self.text, self.tokens, self.known = text, tokens, known
        self.i = 0
        self.depth = 0
        self.nodes = 0

    # helpers
    @property
    def token(self) -> Token:
        return self.tokens[self.i]

    def take(self) -> Token:
        token = self.tokens[self.i]
        self.i += 1
        return token

    def at_op(self, *ops: str) -> bool:
        return self.token.kind == "op" and self.token.text in ops

    def node(self, kind: str, value: str = "", args: tuple[Node, ...] = ()) -> Node:
        self.nodes += 1
        if self.nodes > MAX_NODES:
            raise _refuse(self.text, f"has more than {MAX_NODES} parts; keep it shorter")
        return Node(kind, value, args)

    def enter(self) -> None:
        self.depth += 1
        if self.depth > MAX_DEPTH:
            raise _refuse(self.text, f"nests deeper than {MAX_DEPTH} levels")

    def unexpected(self) -> BadInput:
        token = self.token
        if token.kind == "end":
            return _refuse(self.text, "ends too early (an operand or ')' is missing)")
        return _refuse(self.text, f"unexpected {shown(token.text)} at position {token.at}")

    def expect(self, op: str) -> None:
        if not self.at_op(op):
            raise self.unexpected()
        self.take()

    # grammar
    def parse(self) -> Node:
        tree = self.expr()
        if self.token.kind != "end":
            raise self.unexpected()
        return tree

    def expr(self) -> Node:
        left = self.sum()
        if self.at_op("<", "<=", ">", ">="):
            op = self.take().text
            left = self.node("compare", op, (left, self.sum()))
            if self.at_op("<", "<=", ">", ">="):
                raise _refuse(self.text, "chains comparisons; a condition is one comparison")
        return left

    def sum(self) -> Node:
        left = self.product()
        while self.at_op("+", "-"):
            op = self.take().text
            left = self.node("binary", op, (left, self.product()))
        return left

    def product(self) -> Node:
        left = self.unary()
        while True:
            if self.at_op("*", "/"):
                op = self.take().text
                left = self.node("binary", op, (left, self.unary()))
            elif self.token.kind in ("number", "name") or self.at_op("("):
                left = self.node("binary", "*", (left, self.power()))  # 2x, 2(x+1), x sin(x)
            else:
                return left

    def unary(self) -> Node:
        if self.at_op("+", "-"):
            op = self.take().text
            self.enter()
            operand = self.unary()
            self.depth -= 1
            return operand if op == "+" else self.node("negate", "-", (operand,))
        return self.power()

    def power(self) -> Node:
        base = self.atom()
        if self.at_op("**", "^"):
            self.take()
            self.enter()
            exponent = self.unary()
            self.depth -= 1
            return self.node("binary", "**", (base, exponent))
        return base

    def atom(self) -> Node:
        token = self.token
        if token.kind == "number":
            self.take()
            return self.node("number", token.text)
        if token.kind == "name":
            self.take()
            if token.text in FUNCTIONS:
                if not self.at_op("("):
                    raise _refuse(self.text, f"uses the function {token.text} without "
                                             f"'(': write {token.text}(...)")
                return self.node("call", token.text, self.group())
            if token.text not in ("x", *CONSTANTS, *self.known):
                raise self.unknown(token)
            return self.node("name", token.text)
        if self.at_op("("):
            items = self.group()
            return items[0] if len(items) == 1 else self.node("tuple", "", items)
        raise self.unexpected()

    def group(self) -> tuple[Node, ...]:
        """``'(' expr {',' expr} ')'`` -> the expressions."""
        self.expect("(")
        self.enter()
        items = [self.expr()]
        while self.at_op(","):
            self.take()
            items.append(self.expr())
        self.expect(")")
        self.depth -= 1
        return tuple(items)

    def unknown(self, token: Token) -> BadInput:
        if self.at_op("("):
            return _refuse(self.text, f"uses unknown function {shown(token.text)}; allowed: "
                                      f"{', '.join(FUNCTIONS)}")
        allowed = ", ".join(["x", *sorted(self.known - set(_BOOLEANS)), *CONSTANTS])
        return _refuse(self.text, f"must be a function of x only, found {shown(token.text)} "
                                  f"(names allowed: {allowed})")


def _refuse(text: str, problem: str) -> BadInput:
    return BadInput(f"--expr {shown(text)} {problem}")


# --- the tree as a sympy expression -------------------------------------------------------------


def _sp():
    import sympy

    return sympy


def _sigmoid(z):
    return 1 / (1 + _sp().exp(-z))


def _softplus(z):
    sp = _sp()
    return sp.log(1 + sp.exp(z))


def _piecewise(*pairs):
    return _sp().Piecewise(*pairs)


def _table() -> dict[str, tuple[Callable[..., Any], int, int]]:
    """name -> (sympy function, fewest arguments, most arguments)."""
    sp = _sp()
    many = MAX_NODES
    return {
        "exp": (sp.exp, 1, 1), "log": (sp.log, 1, 2), "ln": (sp.log, 1, 2),
        "sqrt": (sp.sqrt, 1, 1), "tanh": (sp.tanh, 1, 1), "sinh": (sp.sinh, 1, 1),
        "cosh": (sp.cosh, 1, 1), "sin": (sp.sin, 1, 1), "cos": (sp.cos, 1, 1),
        "atan": (sp.atan, 1, 1), "erf": (sp.erf, 1, 1), "erfc": (sp.erfc, 1, 1),
        "Abs": (sp.Abs, 1, 1), "abs": (sp.Abs, 1, 1), "Max": (sp.Max, 1, many),
        "Min": (sp.Min, 1, many), "sign": (sp.sign, 1, 1), "Heaviside": (sp.Heaviside, 1, 2),
        "sigmoid": (_sigmoid, 1, 1), "softplus": (_softplus, 1, 1),
        "Piecewise": (_piecewise, 1, many),
    }


# The names a user expression may call: the historical list (curvtools.user_expr) plus sigmoid,
# softplus, ln and abs. Only the names live here; _table() maps them to sympy on first use.
FUNCTIONS = ("exp", "log", "ln", "sqrt", "tanh", "sinh", "cosh", "sin", "cos", "atan", "erf",
             "erfc", "Abs", "abs", "Max", "Min", "sign", "Heaviside", "sigmoid", "softplus",
             "Piecewise")
CONSTANTS = ("pi", "E")
_BOOLEANS = ("True", "False")


def to_sympy(tree: Node, text: str, x: Any, symbols: Mapping[str, Any] | None = None) -> Any:
    """The sympy expression of a parsed ``tree`` (``text``: for messages), ``x`` the symbol.

    ``symbols`` maps the extra names the tree may use to sympy values. Raises
    :class:`BadInput` for a condition or tuple where a number belongs (and the reverse), a wrong
    number of arguments, or a number too large to compute.
    """
    return _Builder(text, x, dict(symbols or {}), _table()).build(tree)


class _Builder:
    def __init__(self, text: str, x: Any, symbols: dict[str, Any], table: dict):
        sp = _sp()
        self.sp, self.text, self.table = sp, text, table
        self.names = {"x": x, "pi": sp.pi, "E": sp.E, "True": sp.true, "False": sp.false,
                      **symbols}

    def refuse(self, problem: str) -> BadInput:
        return _refuse(self.text, problem)

    def value(self, node: Node) -> Any:
        """A node that must be a number-valued expression."""
        out = self.build(node)
        if not isinstance(out, self.sp.Expr):
            raise self.refuse("uses a comparison or a tuple where a value belongs "
                              "(comparisons only as Piecewise conditions)")
        return out

    def build(self, node: Node) -> Any:
        sp = self.sp
        kind = node.kind
        if kind == "number":
            text = node.value
            return sp.Integer(int(text)) if text.isdigit() else sp.Float(text)
        if kind == "name":
            return self.names[node.value]
        if kind == "negate":
            return -self.value(node.args[0])
        if kind == "binary":
            a, b = (self.value(arg) for arg in node.args)
            op = node.value
            if op == "**":
                self.check_power(a, b)
                return a**b
            if op == "/":
                return a / b
            if op == "*":
                return a * b
            return a + b if op == "+" else a - b
        if kind == "compare":
            a, b = (self.value(arg) for arg in node.args)
            return {"<": sp.Lt, "<=": sp.Le, ">": sp.Gt, ">=": sp.Ge}[node.value](a, b)
        if kind == "call":
            return self.call(node)
        raise self.refuse("uses a tuple (a, b) outside Piecewise((value, condition), ...)")

    def call(self, node: Node) -> Any:
        fn, fewest, most = self.table[node.value]
        n = len(node.args)
        if not fewest <= n <= most:
            want = str(fewest) if fewest == most else f"{fewest} to {most}"
            if most >= MAX_NODES:
                want = f"at least {fewest}"
            raise self.refuse(f"calls {node.value} with {n} argument{'s' * (n != 1)}; "
                              f"it takes {want}")
        if node.value == "Piecewise":
            return fn(*(self.branch(arg) for arg in node.args))
        return fn(*(self.value(arg) for arg in node.args))

    def branch(self, node: Node) -> tuple[Any, Any]:
        """``(value, condition)`` of a Piecewise."""
        if node.kind != "tuple" or len(node.args) != 2:
            raise self.refuse("gives Piecewise something other than (value, condition) pairs")
        value_node, cond_node = node.args
        condition = self.build(cond_node) if cond_node.kind in ("compare", "name") else None
        if not isinstance(condition, self.sp.logic.boolalg.Boolean):
            raise self.refuse("has a Piecewise condition that is not one comparison, True or "
                              "False")
        return self.value(value_node), condition

    def check_power(self, base: Any, exponent: Any) -> None:
        """Refuse a power of two numbers whose exact value would have more than MAX_DIGITS
        digits (sympy would compute it, e.g. 9**9**9, for minutes)."""
        sp = self.sp
        if not (isinstance(base, sp.Rational) and isinstance(exponent, sp.Number)):
            return
        size = max(abs(base.p), abs(base.q))
        if size <= 1:
            return
        digits = abs(float(exponent)) * math.log10(size) if math.isfinite(float(exponent)) \
            else math.inf
        if digits > MAX_DIGITS:
            raise self.refuse(f"computes a number with more than {MAX_DIGITS} digits")


def parse_expression(text: str, x: Any = None, symbols: Mapping[str, Any] | None = None) -> Any:
    """``text`` -> its sympy expression (:func:`parse_tree`, then :func:`to_sympy`).

    ``x``: the symbol ``x`` stands for (default ``sympy.Symbol("x", real=True)``);
    ``symbols``: extra names and their sympy values. Does not check where the expression is
    defined (:func:`curvtools.user_expr.parse_user_expression` does). Raises :class:`BadInput`.
    """
    sp = _sp()
    x = sp.Symbol("x", real=True) if x is None else x
    symbols = dict(symbols or {})
    tree = parse_tree(text, frozenset(symbols) | frozenset(_BOOLEANS))
    try:
        return to_sympy(tree, text, x, symbols)
    except BadInput:
        raise
    except Exception as err:  # sympy refusing a combination (Max of zoo, ...): still one line
        raise _refuse(text, f"cannot be built: {type(err).__name__}") from None
