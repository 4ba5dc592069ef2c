"""The whitelist parser of user expressions (curvtools.expr_parser): text is data, never code.

Property-based: random token soups are a clean BadInput or a sympy expression (never another
exception, never a side effect); random expression trees rendered to text (fully parenthesized,
or with the fewest parentheses Python's precedence allows, with ``^``/``**`` and implicit
multiplication) parse to the expression sympy builds from the same tree directly; every
expression the tests and docs use parses to the sympy expression sympy's own parser gave.
"""

from __future__ import annotations

import time
from datetime import timedelta

import pytest
import sympy as sp
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

import curvtools.expr_parser as expr_parser
import curvtools.user_expr as user_expr
from curvtools.errors import BadInput
from curvtools.expr_parser import MAX_CHARS, parse_expression, parse_tree
from curvtools.user_expr import parse_user_expression

X = sp.Symbol("x", real=True)
FUZZ = settings(max_examples=150, deadline=timedelta(seconds=5),
                suppress_health_check=[HealthCheck.too_slow])


def _sigmoid(z):
    return 1 / (1 + sp.exp(-z))


# what sympy.parsing.sympy_parser.parse_expr (with the old transformations: standard,
# convert_xor, implicit_multiplication) gave for the expressions of the tests and docs
SAME_AS_BEFORE = [
    ("x*tanh(x)", X * sp.tanh(X)),
    ("x*sigmoid(x)", X * _sigmoid(X)),
    ("x*sigmoid(2*x)", X * _sigmoid(2 * X)),
    ("softplus(x) - log(2)", sp.log(1 + sp.exp(X)) - sp.log(2)),
    ("x*atan(x)", X * sp.atan(X)),
    ("x**3", X**3),
    ("x*abs(x)", X * sp.Abs(X)),
    ("Abs(x)**1.5", sp.Abs(X) ** sp.Float("1.5")),
    ("sqrt(x**2+1)", sp.sqrt(X**2 + 1)),
    ("sqrt(x**2 + 1)", sp.sqrt(X**2 + 1)),
    ("Max(x, 0.3*x)", sp.Max(X, sp.Float("0.3") * X)),
    ("Max(x - 100, 0)", sp.Max(X - 100, 0)),
    ("1/(1 + x**2)", 1 / (1 + X**2)),
    ("exp(x**2)", sp.exp(X**2)),
    ("x**2.0", X ** sp.Float("2.0")),
    ("log(cosh(x))", sp.log(sp.cosh(X))),
    ("1/(sign(x) + 1/2)", 1 / (sp.sign(X) + sp.Rational(1, 2))),
    ("Piecewise((log(x), x > 0), (0, True))", sp.Piecewise((sp.log(X), X > 0), (0, True))),
    ("Piecewise((1/x, x > -1), (0, True))", sp.Piecewise((1 / X, X > -1), (0, True))),
    ("Piecewise((1/(x - cos(x)), x < 0), (0, True))",
     sp.Piecewise((1 / (X - sp.cos(X)), X < 0), (0, True))),
    ("x**(1/3)", X ** sp.Rational(1, 3)),
    ("x + log(-1)", X + sp.log(-1)),
    # implicit multiplication and ^ as power (convert_xor, implicit_multiplication)
    ("2x", 2 * X), ("2 x", 2 * X), ("2(x + 1)", 2 * (X + 1)), ("(x + 1)(x - 1)", (X + 1) * (X - 1)),
    ("x sin(x)", X * sp.sin(X)), ("x^2", X**2), ("2x^2", 2 * X**2), ("x/2x", X**2 / 2),
    ("-x**2", -(X**2)), ("2**-x", 2 ** (-X)), ("x**2**3", X ** (2**3)), ("-2x", -2 * X),
    ("1e-3*x", sp.Float("1e-3") * X), (".5x", sp.Float(".5") * X), ("E**x", sp.exp(X)),
    ("pi*x", sp.pi * X), ("ln(1 + x**2)", sp.log(1 + X**2)),
    ("Heaviside(x)*x", sp.Heaviside(X) * X), ("erfc(x) + erf(x)*x", sp.erfc(X) + sp.erf(X) * X),
]


@pytest.mark.parametrize("text,expected", SAME_AS_BEFORE, ids=[t for t, _ in SAME_AS_BEFORE])
def test_expressions_of_the_tests_and_docs_parse_to_the_same_sympy_expression(text, expected):
    assert parse_expression(text, X) == expected


PAYLOADS = [
    "x*tanh(x) + 0*sigmoid.__globals__['__builtins__']['__import__']('os').system('touch {m}')",
    "__import__('os').system('touch {m}')",
    "x + 0*(lambda: __import__('os').system('touch {m}'))()",
    "x + 0*sigmoid.__globals__.__setitem__('PWNED', 1)",
    "x + 0*softplus.__globals__['__builtins__']['setattr'](sigmoid, 'pwned', 1)",
    "x*tanh(x) + 0*Integer.__init__.__globals__['os'].system('touch {m}')",
    "x + 0*exp.__class__.__base__.__subclasses__()[0]",
    "import os",
]


@pytest.mark.parametrize("payload", PAYLOADS)
def test_a_code_payload_is_refused_with_one_line_and_never_runs(payload, tmp_path):
    marker = tmp_path / "PWNED"
    text = payload.format(m=marker)
    with pytest.raises(BadInput) as info:
        parse_user_expression(text)
    assert "\n" not in str(info.value) and str(info.value).startswith("--expr ")
    assert not marker.exists()
    for module in (user_expr, expr_parser):
        assert not hasattr(module, "PWNED")


@pytest.mark.parametrize("text", ["(" * 10**5, "x" + "**x" * 10**4, "x**x**" * 30 + "x",
                                  "-" * 100 + "x", "(" * 45 + "x" + ")" * 45,
                                  "x" + "+x" * 200, "1" * 61 + "*x"])
def test_huge_or_deep_text_is_a_fast_clean_refusal(text):
    started = time.perf_counter()
    with pytest.raises(BadInput) as info:
        parse_user_expression(text)
    assert time.perf_counter() - started < 1.0
    message = str(info.value)
    assert "\n" not in message and len(message) < 300, message


@pytest.mark.parametrize("text", ["9**9**9*x", "(2**1000)**10*x", "10**(10**5)*x", "x**10**400"])
def test_a_power_of_numbers_too_large_to_compute_is_refused(text):
    started = time.perf_counter()
    with pytest.raises(BadInput, match="digits|checked"):
        parse_user_expression(text)
    assert time.perf_counter() - started < 2.0


@pytest.mark.parametrize("text,problem", [
    ("y+1", "function of x only, found 'y'"), ("foo(x)", "unknown function 'foo'"),
    ("x +* 2", "unexpected '*'"), ("x+(", "ends too early"), ("sin x", "without '('"),
    ("x > 0", "not an expression"), ("(x > 0)*2", "comparison"), ("(x, 1)", "tuple"),
    ("Piecewise((x, 1), (0, True))", "condition"), ("Piecewise(x)", "pairs"),
    ("0 < x < 1", "chains"), ("exp(x, 2)", "takes 1"), ("True*x", "comparison"),
    ("x.real", "unexpected '.'"), ("x[0]", "unexpected '['"), ("3", "does not depend on x"),
    ("x == 1", "unexpected '='"), ("", "non-empty"), ("x" * (MAX_CHARS + 1), "longer than"),
])
def test_each_refusal_names_its_reason_in_one_line(text, problem):
    with pytest.raises(BadInput) as info:
        parse_user_expression(text)
    assert problem in str(info.value) and "\n" not in str(info.value), str(info.value)


def test_an_activation_parameter_name_is_an_exact_number():
    expr = parse_user_expression("(x + sqrt(x^2 + b))/2", {"b": 0.3})
    assert expr == (X + sp.sqrt(X**2 + sp.Rational(3, 10))) / 2
    with pytest.raises(BadInput, match="found 'b'"):
        parse_user_expression("(x + sqrt(x^2 + b))/2")


# --- random token soups --------------------------------------------------------------------

TOKENS = ["x", "2", "0.5", "1e3", ".5", "pi", "E", "True", "+", "-", "*", "/", "**", "^", "(",
          ")", ",", "<", ">=", " ", "exp", "log", "sqrt", "tanh", "sigmoid", "softplus", "Max",
          "Piecewise", "abs", "y", "__import__", "os", "system", ".", "'", "[", "]", "=", "_",
          "__class__", "lambda", ":", "sigmoid.__globals__", "\n", "#", "0", "9" * 40]


@FUZZ
@given(st.lists(st.sampled_from(TOKENS), max_size=25))
def test_a_random_token_soup_is_a_clean_refusal_or_an_expression(tokens):
    text = "".join(tokens)
    try:
        out = parse_expression(text, X)
    except BadInput as err:
        assert "\n" not in str(err)
        return
    assert isinstance(out, sp.Basic)
    assert out.free_symbols <= {X}
    assert not hasattr(user_expr, "PWNED") and not hasattr(expr_parser, "PWNED")


# --- random trees, rendered to text and built directly -------------------------------------
# A tree is a tuple: ("num", text) | ("x",) | ("const", name) | ("neg", a) | (op, a, b) for op
# in + - * / ** | ("call", name, args...). build() makes its sympy expression from sympy
# objects; render() writes its text.

UNARY = {"exp": sp.exp, "tanh": sp.tanh, "sin": sp.sin, "cos": sp.cos, "atan": sp.atan,
         "erf": sp.erf, "sigmoid": _sigmoid, "softplus": lambda z: sp.log(1 + sp.exp(z)),
         "Abs": sp.Abs, "abs": sp.Abs, "ln": sp.log, "log": sp.log, "sqrt": sp.sqrt,
         "sign": sp.sign, "sinh": sp.sinh, "cosh": sp.cosh, "erfc": sp.erfc}
BINARY = {"Max": sp.Max, "Min": sp.Min}
NUMBERS = st.sampled_from(["0", "1", "2", "3", "7", "12", "0.5", "2.25", "1e-2", ".75"])
LEAVES = st.one_of(NUMBERS.map(lambda t: ("num", t)), st.just(("x",)),
                   st.sampled_from(["pi", "E"]).map(lambda c: ("const", c)))
# exponents stay small (a leaf, maybe negated): 12**(12**12) would be computed by sympy
EXPONENTS = st.one_of(st.just(("x",)), st.sampled_from(["0", "1", "2", "3", "0.5"]).map(
    lambda t: ("num", t))).flatmap(lambda e: st.sampled_from([e, ("neg", e)]))


def _extend(children):
    return st.one_of(
        st.tuples(st.sampled_from(["+", "-", "*", "/"]), children, children),
        st.tuples(st.just("**"), children, EXPONENTS),
        st.tuples(st.just("neg"), children),
        st.tuples(st.just("call"), st.sampled_from(sorted(UNARY)), children),
        st.tuples(st.just("call"), st.sampled_from(sorted(BINARY)), children, children),
    )


TREES = st.recursive(LEAVES, _extend, max_leaves=8)


def build(t):
    kind = t[0]
    if kind == "num":
        return sp.Integer(int(t[1])) if t[1].isdigit() else sp.Float(t[1])
    if kind == "x":
        return X
    if kind == "const":
        return {"pi": sp.pi, "E": sp.E}[t[1]]
    if kind == "neg":
        return -build(t[1])
    if kind == "call":
        fn = UNARY.get(t[1]) or BINARY[t[1]]
        return fn(*(build(a) for a in t[2:]))
    a, b = build(t[1]), build(t[2])
    return {"+": lambda: a + b, "-": lambda: a - b, "*": lambda: a * b, "/": lambda: a / b,
            "**": lambda: a**b}[kind]()


PREC = {"+": 1, "-": 1, "*": 2, "/": 2, "neg": 3, "**": 4}


def _prec(t) -> int:
    return PREC.get(t[0], 5)


def render(t, style) -> str:
    """``style``: (minimal parentheses?, '^' for powers?, implicit multiplication?, spaces?)."""
    minimal, caret, implicit, spaced = style
    sp_ = " " if spaced else ""
    kind = t[0]
    if kind in ("num", "const"):
        return t[1]
    if kind == "x":
        return "x"
    if kind == "call":
        return f"{t[1]}(" + f",{sp_}".join(render(a, style) for a in t[2:]) + ")"

    def wrap(child, needed: bool) -> str:
        text = render(child, style)
        return f"({text})" if needed or not minimal else text

    if kind == "neg":
        return "-" + wrap(t[1], _prec(t[1]) < 3)
    if kind == "**":
        base = wrap(t[1], _prec(t[1]) <= 4)
        return base + ("^" if caret else "**") + wrap(t[2], _prec(t[2]) < 3)
    left = wrap(t[1], _prec(t[1]) < PREC[kind])
    right = wrap(t[2], _prec(t[2]) <= PREC[kind])
    if kind == "*" and implicit and right.startswith("("):
        return f"{left}{sp_}{right}"  # juxtaposition: 2(x + 1), (x)(y)
    return f"{left}{sp_}{kind}{sp_}{right}"


def _value(e, point):
    try:
        value = sp.N(e.subs(X, point), 30)
    except (TypeError, ValueError) as err:  # sympy cannot even evaluate it (Max of zoo, ...)
        return f"{type(err).__name__}"
    try:
        return complex(value)
    except (TypeError, ValueError):  # zoo, nan, oo: compared by name
        return str(value)


def _agree(a, b) -> bool:
    """Equal, or equal values at four points (relative 1e-9; the same non-number)."""
    if a == b:
        return True
    for point in (sp.Rational(-7, 3), sp.Rational(-1, 2), sp.Rational(3, 10), sp.Integer(2)):
        va, vb = _value(a, point), _value(b, point)
        if isinstance(va, complex) and isinstance(vb, complex):
            if va != va and vb != vb:  # both nan
                continue
            if abs(va - vb) <= 1e-9 * max(1.0, abs(va)):
                continue
        if va != vb:
            return False
    return True


@FUZZ
@given(TREES, st.tuples(st.booleans(), st.booleans(), st.booleans(), st.booleans()))
def test_a_random_tree_rendered_to_text_parses_to_the_expression_built_from_it(tree, style):
    text = render(tree, style)
    assume(len(text) <= MAX_CHARS)
    try:
        expected = build(tree)
    except (ArithmeticError, TypeError, ValueError, NotImplementedError):
        with pytest.raises(BadInput):  # sympy refuses the combination either way
            parse_expression(text, X)
        return
    try:
        got = parse_expression(text, X)
    except BadInput as err:
        assert "digits" in str(err), (text, str(err))  # only a number too large to compute
        return
    assert _agree(got, expected), (text, got, expected)


@FUZZ
@given(TREES)
def test_the_printed_form_of_a_parsed_expression_parses_back_to_it(tree):
    text = render(tree, (False, False, False, True))
    try:
        first = parse_expression(text, X)
    except BadInput:
        return
    printed = sp.sstr(first)
    try:
        again = parse_expression(printed, X)
    except BadInput:  # sympy printed something outside the whitelist (zoo, I, nan, ...)
        assume(False)
    assert _agree(again, first), (printed, again, first)


def test_the_parser_never_calls_eval_or_sympy_string_parsers(monkeypatch):
    import builtins

    def forbidden(*args, **kwargs):
        raise AssertionError("a string was evaluated")

    import sympy.parsing.sympy_parser as sympy_parser

    monkeypatch.setattr(builtins, "eval", forbidden)
    monkeypatch.setattr(builtins, "exec", forbidden)
    # sympify of a string (anywhere in sympy) goes through these
    monkeypatch.setattr(sympy_parser, "parse_expr", forbidden)
    monkeypatch.setattr(sympy_parser, "eval_expr", forbidden)
    assert parse_expression("2x^2 + Piecewise((sigmoid(x), x > 0), (0, True))", X) == \
        2 * X**2 + sp.Piecewise((_sigmoid(X), X > 0), (0, True))
    assert parse_tree("x*tanh(x)").kind == "binary"
