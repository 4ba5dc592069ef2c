"""The one error type for bad user input.

Raised anywhere (library or CLI) when a value given by the user is wrong; the CLIs turn it into
one line on stderr and exit code 2, with no traceback.
"""


class BadInput(ValueError):
    """A user-supplied value is invalid. The message names the value and what is allowed."""
