"""The one definition of "an integer" and "a number" for every settings check of the project.

JSON and numpy hand us ``True`` (a Python int), ``np.int64`` and ``nan``: a setting that must be
an integer accepts ints and numpy integers but not booleans; a number must also be finite.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np


def is_int(v: Any) -> bool:
    """An int or numpy integer, not a bool: ``is_int(3)``, not ``is_int(True)``."""
    return isinstance(v, int | np.integer) and not isinstance(v, bool)


def is_number(v: Any) -> bool:
    """A finite real number (int, float, numpy scalar), not a bool."""
    return (isinstance(v, int | float | np.integer | np.floating) and not isinstance(v, bool)
            and math.isfinite(float(v)))
