"""Users' own registry entries (activations, architectures) without editing the package.

Two ways to name a plugin, both recorded in a run's config.json and checkpoints so that resume,
``harness eval`` and ``curvtools hessian`` rebuild the model:

* ``module:ATTRIBUTE``: an object in an importable module, e.g.
  ``--act mypkg.acts:SQUAREPLUS`` or ``--arch mypkg.nets:TINY_NET``;
* a name that a Python package declares in an entry-point group (the packaging convention of
  plugins): ``lowcurv.activations`` or ``lowcurv.architectures``, e.g. in its pyproject.toml::

      [project.entry-points."lowcurv.activations"]
      squareplus = "mypkg.acts:SQUAREPLUS"

The object must be a registry entry of the expected kind (an ``ActivationSpec``, an
``ArchSpec``); it is never called. Loading a plugin imports its module, i.e. runs code that is
installed here: a checkpoint can name a plugin but cannot bring one (``docs/trust.md``).
"""

from __future__ import annotations

import importlib
import re
from importlib.metadata import entry_points
from typing import Any

from curvtools.errors import BadInput

ACTIVATION_GROUP = "lowcurv.activations"
ARCHITECTURE_GROUP = "lowcurv.architectures"
_REFERENCE = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_]\w*(\.[A-Za-z_]\w*)*$")


def is_reference(name: str) -> bool:
    """``"mypkg.acts:SQUAREPLUS"`` is a ``module:ATTRIBUTE`` reference; ``"relu"`` is not."""
    return bool(_REFERENCE.match(str(name).strip()))


def load_reference(reference: str, expected: type, what: str) -> Any:
    """The object ``module:ATTRIBUTE`` names, checked to be an ``expected`` instance.

    Raises :class:`BadInput` with one line when the module is not installed here, lacks the
    attribute, or the attribute is something else.
    """
    module_name, _, attribute = str(reference).strip().partition(":")
    try:
        obj: Any = importlib.import_module(module_name)
    except ImportError as err:
        raise BadInput(f"{what} {reference!r} comes from a plugin that is not installed here "
                       f"({err}); install its package or put it on PYTHONPATH") from None
    for part in attribute.split("."):
        if not hasattr(obj, part):
            raise BadInput(f"{what} {reference!r}: module {module_name!r} has no {attribute!r}")
        obj = getattr(obj, part)
    if not isinstance(obj, expected):
        kind = expected.__name__
        article = "an" if kind[:1].lower() in "aeiou" else "a"
        raise BadInput(f"{what} {reference!r} is a {type(obj).__name__}, not {article} {kind} "
                       f"(a plugin names a registry entry, never a function to call)")
    return obj


def from_entry_points(group: str, name: str, expected: type, what: str) -> Any | None:
    """The entry ``name`` of the installed entry-point ``group`` (None if no package declares
    it), checked like :func:`load_reference`."""
    found = [ep for ep in entry_points(group=group) if ep.name == name]
    if not found:
        return None
    return load_reference(found[0].value, expected, what)
