"""curvtools: activation curvature, the two-layer input Hessian (Eq. 2), Lemma 1 and
input-Hessian spectra of trained nets."""

__version__ = "0.1.0"
