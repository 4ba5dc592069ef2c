"""The one activation registry of the project.

Every activation is a :class:`ActivationSpec`: its parameters (with validation), its sympy
expression in ``x`` and a factory for the torch module used in training. Everything else in the
project (symbolic curvature, the two-layer Hessian, model building, the CLIs) goes through
:func:`resolve`, so no other module switches on activation names.

Importing this module imports neither torch nor sympy; they are loaded on first use, which keeps
``curvtools curvature`` fast to start.

Example::

    >>> act = resolve("leakyrelu", k=0.3)
    >>> act.label
    'leakyrelu(k=0.3)'
    >>> act.config()
    {'name': 'leakyrelu', 'params': {'k': 0.3}}
    >>> module = act.module()          # torch.nn.LeakyReLU(negative_slope=0.3)
    >>> expr = act.expr()              # sympy Piecewise((x, x >= 0), (0.3*x, True))
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from curvtools.checks import is_number
from curvtools.errors import BadInput, shown
from curvtools.plugins import ACTIVATION_GROUP, from_entry_points, is_reference, load_reference
from curvtools.user_expr import check_user_expr, parse_user_expression, symbol_x

__all__ = ["Activation", "ActivationSpec", "BadInput", "ParamSpec", "REGISTRY", "builtin_names",
           "from_config", "names", "parse_user_expression", "register", "resolve", "symbol_x"]


@dataclass(frozen=True)
class ParamSpec:
    """One numeric (or, for ``expr``, string) parameter of an activation."""

    name: str
    default: Any
    help: str
    check: Callable[[Any], str | None] = lambda v: None  # returns an error text or None
    kind: type = float


def _positive(v: float) -> str | None:
    return None if v > 0 else "must be > 0"


def _finite(v: float) -> str | None:
    return None if math.isfinite(v) else "must be a finite number"


def _positive_finite(v: float) -> str | None:
    return _finite(v) or _positive(v)


@dataclass(frozen=True)
class ActivationSpec:
    """A registered activation.

    ``sympy_expr(x, **params)`` returns the sympy expression; ``torch_module(**params)`` returns a
    fresh ``torch.nn.Module`` (one per use in a network). ``smooth`` declares f twice
    differentiable everywhere (it changes no number); ``approx_curvature``, when given, is the
    number that ranks the activation instead of sup f'' (the paper's |1 - k| for LeakyReLU's
    kink). What each means in full: docs/architecture.md, "An activation".
    """

    name: str
    description: str
    sympy_expr: Callable[..., Any]
    torch_module: Callable[..., Any]
    params: tuple[ParamSpec, ...] = ()
    smooth: bool = True
    approx_curvature: Callable[..., float] | None = None
    aliases: tuple[str, ...] = field(default=())


@dataclass(frozen=True)
class Activation:
    """A registered activation with resolved, validated parameters."""

    spec: ActivationSpec
    params: Mapping[str, Any]
    # a plugin's name as the user gave it ("mypkg.acts:SQUAREPLUS" or an entry-point name):
    # what config() records, so that the run is rebuilt from the same plugin
    source: str | None = None

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def label(self) -> str:
        """Human-readable name with parameters, e.g. ``pswish(beta=4)``."""
        if not self.params:
            return self.name
        inner = ", ".join(f"{k}={format_value(v)}" for k, v in self.params.items())
        return f"{self.name}({inner})"

    @property
    def smooth(self) -> bool:
        return self.spec.smooth

    def config(self) -> dict[str, Any]:
        """JSON-able dict that :func:`from_config` turns back into this activation."""
        return {"name": self.source or self.name, "params": dict(self.params)}

    def expr(self):
        """The sympy expression f(x) (x is ``sympy.Symbol('x', real=True)``)."""
        return self.spec.sympy_expr(symbol_x(), **self.params)

    def module(self):
        """A fresh torch module computing f elementwise."""
        return self.spec.torch_module(**self.params)

    def approx_curvature(self) -> float | None:
        """The paper's approximate curvature for a non-smooth activation, else None."""
        if self.spec.approx_curvature is None:
            return None
        return float(self.spec.approx_curvature(**self.params))


def format_value(v: Any) -> str:
    """A parameter value as the user would write it: ``4.0 -> "4"``, ``0.3 -> "0.3"``."""
    if isinstance(v, float) and math.isfinite(v) and v == int(v) and abs(v) < 1e15:
        return str(int(v))
    return str(v)


# --- sympy expressions -------------------------------------------------------------------------


def _sp():
    import sympy

    return sympy


def _exact(value: float):
    """The parameter as an exact rational (0.3 -> 3/10); ``rational=True`` keeps tiny values
    such as 1e-100 (plain ``nsimplify`` rounds them to 0 and the activation collapses)."""
    return _sp().nsimplify(value, rational=True)


def _relu_expr(x):
    sp = _sp()
    return sp.Piecewise((x, x >= 0), (0, True))


def _leakyrelu_expr(x, k):
    sp = _sp()
    return sp.Piecewise((x, x >= 0), (_exact(k) * x, True))


def _sigmoid(z):
    sp = _sp()
    return 1 / (1 + sp.exp(-z))


def _silu_expr(x):
    return x * _sigmoid(x)


def _pswish_expr(x, beta):
    return x * _sigmoid(_exact(beta) * x)


def _gelu_expr(x):
    sp = _sp()
    return x * (1 + sp.erf(x / sp.sqrt(2))) / 2


def _mish_expr(x):
    sp = _sp()
    return x * sp.tanh(sp.log(1 + sp.exp(x)))


def _lisht_expr(x):
    return x * _sp().tanh(x)


def _softplus_expr(x, beta):
    sp = _sp()
    b = _exact(beta)
    return sp.log(1 + sp.exp(b * x)) / b


def _elu_expr(x, alpha):
    sp = _sp()
    return sp.Piecewise((x, x > 0), (_exact(alpha) * (sp.exp(x) - 1), True))


def _tanh_expr(x):
    return _sp().tanh(x)


def _user_expr(x, expr):
    return parse_user_expression(expr)


# --- torch modules (torch built-ins where they exist) ------------------------------------------


def _relu_module():
    import torch.nn as nn

    return nn.ReLU()


def _leakyrelu_module(k):
    import torch.nn as nn

    if k == 0:
        return nn.ReLU()
    return nn.LeakyReLU(negative_slope=k)


def _silu_module():
    import torch.nn as nn

    return nn.SiLU()


def _pswish_module(beta):
    from curvtools.torch_activations import PSwish

    return PSwish(beta)


def _gelu_module():
    import torch.nn as nn

    return nn.GELU(approximate="none")


def _mish_module():
    import torch.nn as nn

    return nn.Mish()


def _lisht_module():
    from curvtools.torch_activations import LiSHT

    return LiSHT()


def _softplus_module(beta):
    from curvtools.torch_activations import Softplus

    return Softplus(beta)


def _elu_module(alpha):
    import torch.nn as nn

    return nn.ELU(alpha=alpha)


def _tanh_module():
    import torch.nn as nn

    return nn.Tanh()


def _user_module(expr):
    from curvtools.torch_activations import SympyActivation

    return SympyActivation(expr)


REGISTRY: dict[str, ActivationSpec] = {}


def register(spec: ActivationSpec) -> ActivationSpec:
    """Add an activation to the registry (names and aliases must be new)."""
    for key in (spec.name, *spec.aliases):
        if key in REGISTRY:
            raise ValueError(f"activation name {key!r} is already registered")
        REGISTRY[key] = spec
    return spec


_K = ParamSpec("k", 0.01, "negative-side slope (any real; 0 is ReLU, negative allowed)", _finite)
_BETA_PSWISH = ParamSpec("beta", 1.0, "fixed (not learned) slope inside the sigmoid, > 0",
                         _positive_finite)
_BETA_SOFTPLUS = ParamSpec("beta", 1.0, "sharpness, > 0", _positive_finite)
_ALPHA_ELU = ParamSpec("alpha", 1.0, "negative saturation value, > 0", _positive_finite)
_EXPR = ParamSpec("expr", "x*tanh(x)", "sympy expression in x", check_user_expr, kind=str)

register(ActivationSpec("relu", "max(0, x)", _relu_expr, _relu_module, smooth=False,
                        approx_curvature=lambda: 1.0))
register(ActivationSpec("leakyrelu", "x for x >= 0, k*x for x < 0", _leakyrelu_expr,
                        _leakyrelu_module, (_K,), smooth=False,
                        approx_curvature=lambda k: abs(1.0 - k)))
register(ActivationSpec("silu", "x * sigmoid(x) (Swish-1)", _silu_expr, _silu_module,
                        aliases=("swish",)))
register(ActivationSpec("pswish", "x * sigmoid(beta * x), beta fixed", _pswish_expr,
                        _pswish_module, (_BETA_PSWISH,)))
register(ActivationSpec("gelu", "x * Phi(x), exact erf form", _gelu_expr, _gelu_module))
register(ActivationSpec("mish", "x * tanh(softplus(x))", _mish_expr, _mish_module))
register(ActivationSpec("lisht", "x * tanh(x)", _lisht_expr, _lisht_module))
register(ActivationSpec("softplus", "log(1 + exp(beta * x)) / beta", _softplus_expr,
                        _softplus_module, (_BETA_SOFTPLUS,)))
register(ActivationSpec("elu", "x for x > 0, alpha*(exp(x) - 1) for x <= 0", _elu_expr,
                        _elu_module, (_ALPHA_ELU,), smooth=False))
register(ActivationSpec("tanh", "tanh(x)", _tanh_expr, _tanh_module))
register(ActivationSpec("expr", "user-defined f(x) from a sympy expression (--expr)",
                        _user_expr, _user_module, (_EXPR,)))


def names() -> list[str]:
    """Registered activation names (no aliases), in registration order."""
    seen: list[str] = []
    for spec in REGISTRY.values():
        if spec.name not in seen:
            seen.append(spec.name)
    return seen


def builtin_names() -> list[str]:
    """Registered names that need no user expression (what ``--act all`` covers)."""
    return [n for n in names() if n != "expr"]


def resolve(name: str, **given: Any) -> Activation:
    """Look up ``name`` and validate its parameters.

    Parameters that the activation does not take must be None (so a CLI can pass all of its
    options through); missing ones take their defaults. Raises :class:`BadInput` with one line
    naming the problem and what is allowed.
    """
    spec, source = _lookup(name)
    allowed = {p.name: p for p in spec.params}
    params: dict[str, Any] = {}
    for pname, value in given.items():
        if value is None:
            continue
        if pname not in allowed:
            takes = ", ".join(allowed) or "no parameters"
            raise BadInput(f"activation {spec.name!r} takes {takes}, not {shown(pname)}")
    for p in spec.params:
        value = given.get(p.name)
        if value is None:
            value = p.default
        if p.kind is float:
            # a bool is no number (float(True) would pass as 1.0); inf/nan are left to p.check
            if not (isinstance(value, str | float) or is_number(value)):
                raise BadInput(
                    f"{spec.name}: {p.name}={shown(value)} is not a number ({p.help})") from None
            try:
                value = float(value)
            except (TypeError, ValueError):
                raise BadInput(
                    f"{spec.name}: {p.name}={shown(value)} is not a number ({p.help})") from None
            if math.isfinite(value) and value == int(value) and abs(value) < 1e15:
                value = float(int(value))
        problem = p.check(value)
        if problem:
            raise BadInput(f"{spec.name}: {p.name}={format_value(value)} {problem} ({p.help})")
        params[p.name] = value
    return Activation(spec, params, source)


def _lookup(name: str) -> tuple[ActivationSpec, str | None]:
    """The spec of a registered name, a ``module:ATTRIBUTE`` plugin or an entry-point plugin
    (:mod:`curvtools.plugins`), and the plugin name to record (None for built-ins)."""
    text = str(name).strip()
    if text.lower() in REGISTRY:
        return REGISTRY[text.lower()], None
    if is_reference(text):
        return load_reference(text, ActivationSpec, "activation"), text
    plugin = from_entry_points(ACTIVATION_GROUP, text.lower(), ActivationSpec, "activation")
    if plugin is not None:
        return plugin, text.lower()
    raise BadInput(f"unknown activation {shown(name)}; known: {', '.join(names())}, or a plugin "
                   f"(module:ATTRIBUTE naming an ActivationSpec)")


def from_config(config: Mapping[str, Any]) -> Activation:
    """Inverse of :meth:`Activation.config` (validates again: configs may come from files)."""
    if not isinstance(config, Mapping) or "name" not in config:
        raise BadInput("activation config must be a mapping with a 'name'")
    if not isinstance(config["name"], str):
        raise BadInput(f"activation config 'name' {shown(config['name'])} must be text")
    params = config.get("params") or {}
    if not isinstance(params, Mapping):
        raise BadInput("activation config 'params' must be a mapping")
    return resolve(config["name"], **dict(params))
