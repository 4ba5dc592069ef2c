"""A label and a colour for any activation name, without importing anything the name points to.

Built-in names get the paper's spelling and fixed colours; any other name (a plugin
``pkg.module:ATTRIBUTE`` recorded in config.json, an entry-point name) gets a label derived from
the text and a colour from a fixed palette. paper_figs never imports a module a run names: a
run directory is data, and ``python -m paper_figs`` must not run code found next to it.

Example::

    >>> act_label("silu"), act_label("mypkg.acts:SQUAREPLUS")
    ('SiLU', 'SQUAREPLUS')
    >>> colors_for(["relu", "mypkg.acts:SQUAREPLUS"])["relu"]
    'tab:red'
"""

from __future__ import annotations

import zlib
from collections.abc import Iterable, Mapping
from typing import Any

# Display names in the paper's spelling, and the colours the figures have always used.
PAPER_LABELS = {"relu": "ReLU", "lisht": "LiSHT", "gelu": "GeLU", "mish": "Mish", "silu": "SiLU",
                "pswish": "PSwish", "leakyrelu": "LeakyReLU", "softplus": "Softplus",
                "elu": "ELU", "tanh": "tanh", "expr": "expr"}
PAPER_COLORS = {"relu": "tab:red", "silu": "tab:blue", "lisht": "tab:purple",
                "gelu": "tab:orange", "mish": "tab:green"}
PALETTE = ("tab:brown", "tab:pink", "tab:olive", "tab:cyan", "tab:gray", "#393b79", "#637939",
           "#8c6d31", "#843c39", "#7b4173", "#3182bd", "#e6550d")
_MAX_LABEL = 40


def act_label(name: Any, params: Mapping[str, Any] | None = None) -> str:
    """``relu -> ReLU``; ``pkg.mod:ATTR -> ATTR``; any other text as written (at most 40
    characters); parameters appended as ``(beta=4)``."""
    text = " ".join(str(name).split())
    base = PAPER_LABELS.get(text.lower())
    if base is None:
        base = text.rpartition(":")[2].rpartition(".")[2] if ":" in text else text
        base = base or text
        if len(base) > _MAX_LABEL:
            base = base[: _MAX_LABEL - 3] + "..."
    if params:
        inner = ", ".join(f"{k}={v:g}" if isinstance(v, int | float) else f"{k}={v}"
                          for k, v in params.items())
        base += f"({inner})"
    return base


def act_color(name: Any) -> str:
    """The paper's colour of a built-in; another name gets a palette colour chosen by a stable
    hash of its text (the same name has the same colour in every figure)."""
    key = str(name).strip().lower()
    if key in PAPER_COLORS:
        return PAPER_COLORS[key]
    return PALETTE[zlib.crc32(key.encode()) % len(PALETTE)]


def colors_for(names: Iterable[Any]) -> dict[str, str]:
    """Distinct colours for the names of one figure: the paper's for built-ins, then the
    hashed palette colour, or the next unused palette colour when that one is taken."""
    names = list(dict.fromkeys(str(n) for n in names))
    out = {n: PAPER_COLORS[n.strip().lower()] for n in names
           if n.strip().lower() in PAPER_COLORS}
    for n in names:
        if n in out:
            continue
        taken = set(out.values())
        first = act_color(n)
        free = [c for c in (first, *PALETTE) if c not in taken]
        out[n] = free[0] if free else first
    return out
