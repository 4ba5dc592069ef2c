"""curvtools: activation curvature, the two-layer input Hessian, Lemma 1 and input-Hessian spectra."""

__version__ = "0.1.0"
