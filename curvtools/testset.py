"""The test images a checkpoint is evaluated on (``curvtools hessian`` / ``lemma``, benches).

harness's data module is imported inside :func:`load_test_images` (it imports torch).
"""

from __future__ import annotations

from typing import Any

from curvtools.errors import BadInput


def load_test_images(ckpt: dict[str, Any], n: int, seed: int, data_dir: str | None):
    """``(x float [n, C, H, W] in [0, 1], y int64 [n], indices)`` from the checkpoint's test set.

    A class-stratified subset (``harness.data.stratified_subset``, seeded) when n is smaller than
    the test set and at least the number of classes; a seeded random subset when n is smaller
    than the number of classes; the whole test set when n is at least its size.

    Example::

        >>> model, ckpt = load_model("runs/silu/last.pt")
        >>> x, y, idx = load_test_images(ckpt, 100, 0, None)   # x: [100, 3, 32, 32]
    """
    import numpy as np
    import torch

    from harness.data import stratified_subset
    from harness.datasets import open_source
    from harness.eval_checkpoint import run_data_settings

    train_config = ckpt.get("train_config") or {}
    if "dataset" not in train_config:
        raise BadInput("the checkpoint has no train_config['dataset']: cannot tell which test "
                       "images to use")
    run = run_data_settings(train_config)  # the one check of a file's data settings
    source = open_source(run["dataset"], data_dir or run["data_dir"], run["download"])
    labels = source.labels("test")
    everything = np.arange(len(labels), dtype=np.int64)
    if n >= len(labels):
        indices = everything
    elif n >= source.num_classes:
        indices = stratified_subset(labels, everything, n, seed)
    else:
        indices = np.sort(np.random.default_rng(seed).permutation(len(labels))[:n])
    x = source.images("test", indices).float() / 255.0
    y = torch.as_tensor(labels[indices], dtype=torch.long)
    return x, y, indices


def activation_label(ckpt: dict[str, Any]) -> str:
    """The label of the checkpoint's activation (``pswish(beta=4)``), or ``"?"`` if unknown."""
    from curvtools.activations import from_config

    try:
        return from_config((ckpt.get("config") or {}).get("act") or {}).label
    except (ValueError, TypeError, AttributeError):  # BadInput is a ValueError
        return "?"
