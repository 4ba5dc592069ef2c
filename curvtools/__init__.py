"""curvtools: activation curvature, the two-layer input Hessian (Eq. 2), Lemma 1 and
input-Hessian spectra of trained nets.

The public API is exported lazily (PEP 562): ``import curvtools`` loads no torch, sympy or
harness; each name imports its module on first use.

Example::

    >>> import curvtools
    >>> act = curvtools.resolve("pswish", beta=4.0)
    >>> round(curvtools.curvature(act).max_value, 4)      # certified max f''
"""

from __future__ import annotations

__version__ = "0.1.0"

from curvtools.lazy import lazy_exports

# public name -> (module, attribute)
_EXPORTS: dict[str, tuple[str, str]] = {
    "resolve": ("curvtools.activations", "resolve"),
    "register": ("curvtools.activations", "register"),
    "names": ("curvtools.activations", "names"),
    "ActivationSpec": ("curvtools.activations", "ActivationSpec"),
    "ParamSpec": ("curvtools.activations", "ParamSpec"),
    "curvature": ("curvtools.certified", "curvature"),
    "input_hessian_eigenvalues": ("curvtools.spectra", "input_hessian_eigenvalues"),
}

__all__ = sorted(_EXPORTS)


__getattr__, __dir__ = lazy_exports("curvtools", _EXPORTS, globals())
