"""CLI options for activation parameters, derived from the registry's :class:`ParamSpec`s.

Every parameter name of every registered activation becomes one option ``--NAME`` with the
parameter's type (FLOAT for numbers) and a help text listing which activations take it, so a new
parameter is one registry entry. :func:`with_activation_options` adds them to a typer command.

Example::

    @with_activation_options
    def curvature_command(act: str = typer.Option(...), *, act_params: dict) -> None:
        acts = resolve(act, **act_params)
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable
from typing import Any

import typer

from curvtools.activations import REGISTRY, format_value
from curvtools.errors import BadInput, shown
from curvtools.plugins import allow, is_reference


def activation_parameters() -> dict[str, tuple[type, str]]:
    """``{name: (kind, help)}`` over the registry, in registration order.

    Example: ``activation_parameters()["beta"]`` is ``(float, "pswish: fixed (not learned) slope
    inside the sigmoid, > 0 (default 1); softplus: sharpness, > 0 (default 1)")``.
    """
    kinds: dict[str, type] = {}
    helps: dict[str, list[str]] = {}
    seen = set()
    for spec in REGISTRY.values():
        if spec.name in seen:  # aliases point at the same spec
            continue
        seen.add(spec.name)
        for p in spec.params:
            if kinds.setdefault(p.name, p.kind) is not p.kind:
                raise TypeError(f"parameter {p.name!r} has two types in the registry")
            default = f" (default {format_value(p.default)})" if p.kind is float else ""
            when = " (--act expr)" if spec.name == "expr" else ""
            helps.setdefault(p.name, []).append(f"{spec.name}: {p.help}{default}{when}")
    return {name: (kinds[name], "; ".join(helps[name])) for name in kinds}


def parse_act_params(pairs: list[str] | None) -> dict[str, Any]:
    """``["b=2", "mode=fast"]`` (``--act-param``, for a plugin's own parameters) ->
    ``{"b": 2.0, "mode": "fast"}``: numbers become floats, the rest stay strings."""
    out: dict[str, Any] = {}
    for pair in pairs or ():
        name, sep, value = pair.partition("=")
        if not sep or not name.strip():
            raise BadInput(f"--act-param {shown(pair)} must be NAME=VALUE, e.g. --act-param b=4")
        try:
            out[name.strip()] = float(value)
        except ValueError:
            out[name.strip()] = value
    return out


def trust_typed_plugins(*names: Any) -> None:
    """Allow the modules of the ``module:ATTRIBUTE`` plugins among ``names`` (values the user
    typed on the command line: ``--act``, ``--arch``), for this command and the processes it
    starts (:func:`curvtools.plugins.allow`). A plugin a file names (a checkpoint, config.json,
    spec) is not allowed by this; see ``docs/trust.md``."""
    for name in names:
        if isinstance(name, str) and is_reference(name):
            allow(name)


def with_activation_options(command: Callable[..., Any]) -> Callable[..., Any]:
    """Give ``command`` (which takes ``act_params: dict``, the given values, None where not
    given) one typer option per activation parameter, inserted after its ``act`` option, plus
    ``--act-param NAME=VALUE`` (repeatable) for parameters of plugin activations. A plugin typed
    as ``--act``/``--arch`` is allowed for the command (:func:`trust_typed_plugins`)."""
    params = activation_parameters()
    own = [p for p in inspect.signature(command, eval_str=True).parameters.values()
           if p.name != "act_params"]
    added = [inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY,
                               default=typer.Option(None, f"--{name}", help=help_text),
                               annotation=kind | None)
             for name, (kind, help_text) in params.items()]
    added.append(inspect.Parameter(
        "act_param", inspect.Parameter.KEYWORD_ONLY, annotation=list[str] | None,
        default=typer.Option(None, "--act-param", help="NAME=VALUE: a parameter of a plugin "
                                                       "activation (repeatable).")))
    at = next((i + 1 for i, p in enumerate(own) if p.name == "act"), 0)
    ordered = [p.replace(kind=inspect.Parameter.KEYWORD_ONLY) for p in own[:at]] + added + \
        [p.replace(kind=inspect.Parameter.KEYWORD_ONLY) for p in own[at:]]

    @functools.wraps(command)
    def wrapper(**kwargs: Any) -> Any:
        trust_typed_plugins(kwargs.get("act"), kwargs.get("arch"))
        act_params = {name: kwargs.pop(name) for name in params}
        extra = parse_act_params(kwargs.pop("act_param"))
        twice = sorted(k for k in extra if act_params.get(k) is not None)
        if twice:
            raise BadInput(f"--act-param {shown(twice[0])}=... repeats --{twice[0]}; give it "
                           f"once")
        return command(act_params=act_params | extra, **kwargs)

    del wrapper.__wrapped__  # typer must see the new signature, not the wrapped one
    wrapper.__signature__ = inspect.Signature(ordered)
    wrapper.__annotations__ = {p.name: p.annotation for p in ordered}
    return wrapper
