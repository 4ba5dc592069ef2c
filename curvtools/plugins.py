"""Users' own registry entries (activations, architectures) without editing the package.

Two ways to name a plugin, both recorded in a run's config.json and checkpoints so that resume,
``harness eval`` and ``curvtools hessian`` rebuild the model:

* a name that an installed Python package declares in an entry-point group (the packaging
  convention of plugins): ``lowcurv.activations`` or ``lowcurv.architectures``, e.g. in its
  pyproject.toml::

      [project.entry-points."lowcurv.activations"]
      squareplus = "mypkg.acts:SQUAREPLUS"

* ``module:ATTRIBUTE``: an object in an importable module, e.g. ``--act mypkg.acts:SQUAREPLUS``
  or ``--arch mypkg.nets:TINY_NET``.

The object must be a registry entry of the expected kind (an ``ActivationSpec``, an
``ArchSpec``); it is never called. Importing a module runs its code, so a file (a downloaded
checkpoint, a config.json, a sweep spec) may name a plugin but never decides alone that a module
is imported. The rule (``docs/trust.md``):

* an entry-point name is trusted: an installed distribution declared it;
* a ``module:ATTRIBUTE`` is imported only when its module is allowed for this command: listed in
  the environment variable ``LOWCURV_PLUGINS`` (comma-separated module names; a package allows
  its submodules), or typed by the user on the command line (``--act``/``--arch``/``--set act=``:
  the CLIs call :func:`allow` for it). Anything else is one line naming the module and how to
  allow it;
* a plugin module is never imported from the current working folder implicitly (the folder
  Python puts first on ``sys.path`` for ``python -m`` or ``python -c``); ``PYTHONPATH`` and
  installed packages are where plugins come from.

Example::

    >>> allow("mypkg.acts:SQUAREPLUS")      # what `--act mypkg.acts:SQUAREPLUS` does
    >>> load_reference("mypkg.acts:SQUAREPLUS", ActivationSpec, "activation")
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import re
import sys
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any

from curvtools.errors import BadInput, shown

ACTIVATION_GROUP = "lowcurv.activations"
ARCHITECTURE_GROUP = "lowcurv.architectures"
ALLOW_ENV = "LOWCURV_PLUGINS"  # comma-separated module names this process may import plugins from
_REFERENCE = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_]\w*(\.[A-Za-z_]\w*)*$")
_MODULE = re.compile(r"^[A-Za-z_]\w*(\.[A-Za-z_]\w*)*$")


class PluginUnavailable(BadInput):
    """A plugin named by a file or a user cannot be used here: its module is not allowed for
    this command, not installed/importable, or does not hold the named registry entry."""


def is_reference(name: str) -> bool:
    """``"mypkg.acts:SQUAREPLUS"`` is a ``module:ATTRIBUTE`` reference; ``"relu"`` is not."""
    return bool(_REFERENCE.match(str(name).strip()))


def allowed_modules() -> tuple[str, ...]:
    """The module names plugins may be imported from in this process (``LOWCURV_PLUGINS``)."""
    text = os.environ.get(ALLOW_ENV, "")
    return tuple(dict.fromkeys(m.strip() for m in text.split(",") if m.strip()))


def allow(reference_or_module: str) -> None:
    """Allow the module of ``reference_or_module`` (``mypkg.acts:X`` or ``mypkg.acts``) for
    this process and the processes it starts (a sweep's workers): it is added to
    ``LOWCURV_PLUGINS``. The CLIs call it for a plugin the user typed on the command line; a
    Python caller names its own plugins with it. A name that is no module reference is ignored.
    """
    module = str(reference_or_module).strip().partition(":")[0]
    if not _MODULE.match(module) or module in allowed_modules():
        return
    os.environ[ALLOW_ENV] = ",".join((*allowed_modules(), module))


def is_allowed(module: str) -> bool:
    """``module`` or a package above it is listed in :func:`allowed_modules`."""
    return any(module == m or module.startswith(m + ".") for m in allowed_modules())


def load_reference(reference: str, expected: type, what: str) -> Any:
    """The object ``module:ATTRIBUTE`` names, checked to be an ``expected`` instance.

    The module must be allowed (:func:`is_allowed`). Raises :class:`PluginUnavailable` (a
    :class:`BadInput`, one line) when it is not, when the module is not installed/importable
    here, lacks the attribute, or the attribute is something else.
    """
    module_name = str(reference).strip().partition(":")[0]
    if not is_allowed(module_name):
        raise PluginUnavailable(
            f"{what} {shown(reference)} names the plugin module {shown(module_name)}, which "
            f"this command was not told to import; if you trust it, allow it with "
            f"{ALLOW_ENV}={module_name} (docs/trust.md)")
    return _load(reference, expected, what)


def _load(reference: str, expected: type, what: str) -> Any:
    module_name, _, attribute = str(reference).strip().partition(":")
    try:
        obj: Any = _import_module(module_name)
    except ImportError as err:
        raise PluginUnavailable(
            f"{what} {shown(reference)}: plugin module {shown(module_name)} is not "
            f"installed/importable here ({shown(str(err), 60)}); install its package or put it "
            f"on PYTHONPATH") from None
    for part in attribute.split("."):
        if not hasattr(obj, part):
            raise PluginUnavailable(f"{what} {shown(reference)}: module {shown(module_name)} "
                                    f"has no {shown(attribute)}")
        obj = getattr(obj, part)
    if not isinstance(obj, expected):
        kind = expected.__name__
        article = "an" if kind[:1].lower() in "aeiou" else "a"
        raise PluginUnavailable(
            f"{what} {shown(reference)} is a {type(obj).__name__}, not {article} {kind} "
            f"(a plugin names a registry entry, never a function to call)")
    return obj


def _import_module(name: str) -> Any:
    """``importlib.import_module(name)``, but never found in the current working folder through
    the entry Python adds implicitly (``''`` or the folder itself, first on ``sys.path`` under
    ``python -m``/``-c``); a folder also listed in ``PYTHONPATH`` stays."""
    if name in sys.modules:
        return sys.modules[name]
    explicit = {_resolved(p) for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p}
    here = _resolved(os.getcwd())
    implicit = [p for p in sys.path if _resolved(p) == here and _resolved(p) not in explicit]
    if not implicit:
        return importlib.import_module(name)
    saved = list(sys.path)
    sys.path[:] = [p for p in sys.path if p not in implicit]
    importlib.invalidate_caches()
    try:
        return importlib.import_module(name)
    finally:
        sys.path[:] = saved


def _resolved(path: str) -> str:
    try:
        return str(Path(path or ".").resolve())
    except (OSError, RuntimeError):
        return path


def from_entry_points(group: str, name: str, expected: type, what: str) -> Any | None:
    """The entry ``name`` of the installed entry-point ``group`` (None if no package declares
    it), checked like :func:`load_reference`. Trusted: an installed distribution declared it."""
    found = [ep for ep in entry_points(group=group) if ep.name == name]
    if not found:
        return None
    return _load(found[0].value, expected, what)
