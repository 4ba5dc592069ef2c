"""The one error type for bad user input.

Raised anywhere (library or CLI) when a value given by the user is wrong; the CLIs turn it into
one line on stderr and exit code 2, with no traceback.
"""


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
