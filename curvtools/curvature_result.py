"""The result of :func:`curvtools.certified.curvature`: max/min of f'' with arguments, enclosures
and how they were found. Plain data, no sympy: the certified table
(:mod:`curvtools.certified_table`) and the CLI build it without importing sympy.

Example::

    >>> c = Curvature.from_json(json.loads(text))   # the inverse of c.to_json()
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields
from typing import Any

WINDOW = 1024.0  # the branch and bound's default window [-WINDOW s, WINDOW s] (curvtools.symbolic)


@dataclass
class Curvature:
    """Curvature of one activation: max and min of f'' with arguments, and how they were found."""

    label: str
    smooth: bool
    f: str
    f1: str
    f2: str
    max_value: float
    max_lower: float
    max_upper: float
    argmax: float
    max_exact: str | None
    argmax_exact: str | None
    min_value: float
    min_lower: float
    min_upper: float
    argmin: float
    certified: bool
    curvature: float  # the number used for ranking (max f'', or the paper's approximation)
    kind: str  # "exact max f''", "sup over pieces", "approximate (slope difference)"
    notes: list[str]
    max_certified: bool = False  # [max_lower, max_upper] reached the tolerance
    min_certified: bool = False
    argmax_at_infinity: bool = False  # the max is approached as x -> argmax = +-inf, not attained
    argmin_at_infinity: bool = False
    window: float = WINDOW  # the branch and bound's window [-window, window]
    # An extremum approached as x -> +-inf, not attained: its exact finite limit there (sympy;
    # the enclosure's end on that side, so max_value/min_value equal it), as a float and in
    # closed form; None when attained, unknown or infinite (max_value/min_value: f'' at argmax/
    # argmin, or +-inf).
    max_limit: float | None = None
    min_limit: float | None = None
    min_exact: str | None = None  # closed form of min_limit (max_exact serves the max)

    def to_json(self) -> dict[str, Any]:
        """A JSON-able dict; non-finite floats as the strings "inf", "-inf", "nan"."""
        return {k: _jsonable(v) for k, v in self.__dict__.items()}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Curvature:
        """The inverse of :meth:`to_json` (float fields given as "inf"/"-inf"/"nan" strings)."""
        kinds = {f.name: f.type for f in fields(cls)}
        values = {k: (float(v) if kinds[k] == "float" and isinstance(v, str) else v)
                  for k, v in data.items()}
        values["notes"] = list(values["notes"])
        return cls(**values)


def _jsonable(v: Any) -> Any:
    if isinstance(v, float) and not math.isfinite(v):
        return str(v)
    return v


