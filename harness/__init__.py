"""harness: PGD adversarial training and evaluation per the paper's protocol.

The public API is exported lazily (PEP 562): ``import harness`` loads no torch; each name
imports its module on first use (guide: ``docs/api.md``).

Example::

    >>> import harness
    >>> cfg = harness.TrainConfig(dataset="digits", width=0.0625, epochs=1)
    >>> rows = harness.run_training(cfg, "runs/tiny", progress=False)
"""

from __future__ import annotations

__version__ = "0.1.0"

from curvtools.lazy import lazy_exports

# public name -> (module, attribute). ``fit`` lives in harness.fitting: a submodule named
# ``fit`` would replace the function on the package once imported.
_EXPORTS: dict[str, tuple[str, str]] = {
    "TrainConfig": ("harness.config", "TrainConfig"),
    "run_training": ("harness.train", "run_training"),
    "fit": ("harness.fitting", "fit"),
    "ThreatModel": ("harness.attacks", "ThreatModel"),
    "make_attack": ("harness.attacks", "make_attack"),
    "attack_names": ("harness.attacks", "names"),
    "evaluate_robust": ("harness.evaluate", "evaluate_robust"),
    "evaluate_checkpoint": ("harness.eval_checkpoint", "evaluate_checkpoint"),
    "build_model": ("harness.models", "build_model"),
    "model_config": ("harness.models", "model_config"),
    "load_model": ("harness.checkpoint", "load_model"),
    "open_source": ("harness.datasets", "open_source"),
}

__all__ = sorted(_EXPORTS)


__getattr__, __dir__ = lazy_exports("harness", _EXPORTS, globals())
