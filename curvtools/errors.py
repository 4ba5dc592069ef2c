"""The one error type for bad user input, and the one way a message quotes a value.

Raised anywhere (library or CLI) when a value given by the user is wrong; the CLIs turn it into
one line on stderr and exit code 2, with no traceback. A value that came from a file or a user
(a checkpoint entry, a config field, an option) is quoted with :func:`shown`, whose work and
length are bounded whatever the value holds.
"""

import reprlib

# Quoting limits: a message stays one readable line, and quoting a hostile value (a list nested
# 60 levels deep whose levels repeat one sub-list, a string of megabytes) costs microseconds.
SHOWN_LIMIT = 80
_REPR = reprlib.Repr()
_REPR.maxlevel = 2
_REPR.maxlist = _REPR.maxtuple = _REPR.maxset = _REPR.maxfrozenset = _REPR.maxdeque = 4
_REPR.maxdict = 4
_REPR.maxstring = _REPR.maxother = _REPR.maxlong = 40


def shown(value: object, limit: int = SHOWN_LIMIT) -> str:
    """``repr(value)`` for an error message, bounded: at most ``limit`` characters, containers
    cut at depth 2 and 4 items, long strings and numbers elided with ``...``.

    Never raises and never walks more than a few dozen items. A tensor or array is described by
    type, dtype and shape, not printed.

    >>> shown([[[[1]]]])
    '[[[...]]]'
    >>> shown("x" * 1000)[:12]
    "'xxxxxxxxxxx"
    """
    try:
        shape = getattr(value, "shape", None)
        if shape is not None and hasattr(value, "dtype") and not isinstance(value, str | bytes):
            text = f"<{type(value).__name__} {value.dtype} {tuple(shape)}>"
        else:
            text = _REPR.repr(value)
    except Exception:  # a value whose repr fails is still named
        text = f"<{type(value).__name__}>"
    text = " ".join(text.split())  # one line
    return text if len(text) <= limit else text[: limit - 3] + "..."


class BadInput(ValueError):
    """A user-supplied value is invalid. The message names the value and what is allowed."""


# numpy's and torch's generators take seeds in [0, 2**63) (signed 64-bit integers)
SEED_LIMIT = 2**63


def check_seed(option: str, value: int | None) -> None:
    """Refuse a seed that numpy/torch cannot take: require ``0 <= value < 2**63``.

    Example: ``check_seed("--seed", -1)`` raises :class:`BadInput`.
    """
    if value is not None and not 0 <= value < SEED_LIMIT:
        raise BadInput(f"{option} {value} must be an integer in [0, 2**63)")
