"""The project's one set of number checks for user-given values.

``is_int`` / ``is_number`` answer the question (bool is never a number here: ``True`` in a JSON
config or a Python call is a mistake, not 1); the ``require_*`` helpers raise
:class:`~curvtools.errors.BadInput` with one line naming the option, the value and what is
allowed. No imports beyond numpy's types (checked by name, so numpy is not loaded here).

Example::

    >>> is_int(3), is_int(True), is_number(float("nan"))
    (True, False, False)
    >>> require_positive_int("--n", 0)    # BadInput: --n=0 is not allowed: need an integer >= 1
"""

from __future__ import annotations

import math
import numbers
from typing import Any

from curvtools.errors import BadInput, shown


def is_int(v: Any) -> bool:
    """An int or a numpy integer, not a bool."""
    return isinstance(v, numbers.Integral) and not isinstance(v, bool) and not _is_numpy_bool(v)


def is_number(v: Any) -> bool:
    """A finite real number (int, float, numpy scalar) that a float can hold, not a bool.

    Never raises: an integer beyond the float range (``10**400``) is no number here, since every
    use converts it to a float.
    """
    if isinstance(v, bool) or _is_numpy_bool(v) or not isinstance(v, numbers.Real):
        return False
    try:
        return math.isfinite(float(v))
    except (OverflowError, ValueError, TypeError):  # 10**400; a Real whose float() fails
        return False


def _is_numpy_bool(v: Any) -> bool:
    return type(v).__name__ == "bool_" and type(v).__module__ == "numpy"


def require_positive_int(option: str, value: Any) -> None:
    """``value`` is an integer >= 1."""
    if not is_int(value) or value < 1:
        raise BadInput(f"{option}={shown(value)} is not allowed: need an integer >= 1")


def require_int_in(option: str, value: Any, lo: int, hi: int) -> None:
    """``value`` is an integer in ``[lo, hi]``."""
    if not is_int(value) or not lo <= value <= hi:
        raise BadInput(f"{option} {shown(value)} must be an integer in [{lo}, {hi}]")


def require_positive_finite(option: str, value: Any) -> None:
    """``value`` is a finite number > 0."""
    if not is_number(value) or not value > 0:
        raise BadInput(f"{option} {shown(value)} is not allowed: need a finite number > 0")


def require_unit_open(option: str, value: Any) -> None:
    """``value`` is a number in the open interval (0, 1), e.g. a relative tolerance (tol >= 1
    or inf would report convergence falsely)."""
    if not is_number(value) or not 0 < value < 1:
        raise BadInput(f"{option} {shown(value)} is not allowed: need a number in (0, 1)")
