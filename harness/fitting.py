"""``harness.fit``: the paper's adversarial-training protocol on a user's model and data.

:func:`fit` trains any ``nn.Module`` that maps [0, 1] images ``[B, C, H, W]`` to logits
``[B, K]`` (normalization inside the module, as the registry's models) on the user's own train,
validation and test tensors, under exactly the protocol of ``harness train``: the same step
(PGD in train mode, robust step, clean forward), learning-rate schedule, per-epoch evaluation,
checkpoints, ``metrics.jsonl``, ``config.json`` and ``--resume`` (it runs the same code,
:func:`harness.train.train_with`). Only where the data and the model come from differs.

The checkpoint ``config`` of such a run is ``{"arch": "user-module", "class": "pkg.Net",
...}``: nothing can rebuild the model from the checkpoint alone, so ``harness eval`` and
``curvtools hessian`` refuse it; load ``last.pt``'s ``model`` state_dict into the module in
Python instead.

Example::

    >>> net = nn.Sequential(nn.Flatten(), nn.Linear(256, 10))
    >>> source = open_source("digits")
    >>> x, y = source.images("train", range(1000)), source.labels("train")[:1000]
    >>> rows = fit(net, train=(x[:900], y[:900]), val=(x[900:], y[900:]),
    ...            test=(x[900:], y[900:]), cfg=TrainConfig(epochs=2), out_dir="runs/mine")
    >>> rows[-1]["test_robust_acc"]
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from curvtools.errors import BadInput, shown
from harness.config import TrainConfig
from harness.distributed import DistContext
from harness.run_data import RunData, check_batch_size, device_batches
from harness.rundir import FIT, USER_MODULE_ARCH
from harness.train import RunInputs, train_with

# Settings that choose the data and the model of a registry run; fit takes both from its
# arguments, so it refuses a cfg that sets any of them away from its default.
FIT_UNUSED_SETTINGS = ("dataset", "data_dir", "download", "val_fraction", "split_seed",
                       "train_subset", "val_subset", "test_subset", "arch", "width", "act",
                       "act_params")

PARTS = ("train", "val", "test")


def fit(model: nn.Module, *, train: tuple[Any, Any], val: tuple[Any, Any],
        test: tuple[Any, Any], out_dir: str | Path, cfg: TrainConfig | None = None,
        resume: bool = False, overwrite: bool = False, progress: bool = False,
        log: Callable[[str], None] | None = None) -> list[dict]:
    """Adversarially train ``model`` in place on ``train``; returns the ``metrics.jsonl`` rows.

    ``model``: maps [0, 1] images ``[B, C, H, W]`` to logits ``[B, K]``; it is moved to the
    run's device and trained in place (its initial weights are the user's; the global RNG is
    then seeded from ``cfg.seed``, as in ``harness train``). ``train``/``val``/``test``:
    ``(images, labels)`` with images uint8 ``[N, C, H, W]`` in 0..255 or float in [0, 1] on the
    1/255 grid (``uint8 / 255``; other floats are refused: batches are held as uint8), square,
    and int labels ``[N]`` in ``0..K-1`` (tensors or numpy arrays). The best checkpoint is
    chosen on ``val``; ``test`` is only reported.

    ``cfg``: the protocol's settings (default :class:`TrainConfig`'s, the paper's: 200
    epochs). Used: optimization, attack, augmentation, seed, device, precision, checkpoint and
    Hessian settings. Not used, and refused when set away from their defaults:
    :data:`FIT_UNUSED_SETTINGS` (``dataset``, ``data_dir``, ``download``, ``val_fraction``,
    ``split_seed``, the subsets, ``arch``, ``width``, ``act``, ``act_params``).
    ``resume``/``overwrite``/``progress``/``log``: as :func:`harness.train.run_training`;
    ``resume=True`` needs a module of the same class (its weights are replaced by
    ``last.pt``'s) and the same data, and continues bit for bit on CPU.

    Writes the run directory of ``harness train`` (``config.json`` records
    ``model_config.arch = "user-module"`` and the module's class). Raises :class:`BadInput`
    (one line) for bad arguments before anything is written.
    """
    cfg = TrainConfig() if cfg is None else cfg
    check_fit_config(cfg)
    if not isinstance(model, nn.Module):
        raise BadInput(f"fit() needs a torch.nn.Module, got {type(model).__name__}")
    if not any(p.requires_grad for p in model.parameters()):
        raise BadInput("fit(): the model has no trainable parameter")
    parts = {name: _part(name, value) for name, value in zip(PARTS, (train, val, test),
                                                             strict=True)}
    shapes = {name: tuple(x.shape[1:]) for name, (x, _) in parts.items()}
    if len(set(shapes.values())) != 1:
        raise BadInput(f"fit(): images of train, val and test differ in shape [C, H, W]: "
                       f"{shapes}")
    channels, height, width = shapes["train"]
    if height != width:
        raise BadInput(f"fit(): images are {height}x{width}; allowed: square images")
    check_batch_size(cfg, len(parts["train"][1]))
    num_classes = _num_classes(model, parts["val"][0])
    for name, (_, y) in parts.items():
        if len(y) and int(y.max()) >= num_classes:
            raise BadInput(f"fit(): {name} label {int(y.max())} is out of range for a model "
                           f"with {num_classes} outputs; allowed: 0..{num_classes - 1}")
    class_name = f"{type(model).__module__}.{type(model).__qualname__}"
    info = {"name": "harness.fit", "num_classes": num_classes, "in_channels": channels,
            "image_size": height,
            **{f"num_{name}": len(y) for name, (_, y) in parts.items()},
            **{f"{name}_sha256": _digest(x, y) for name, (x, y) in parts.items()}}
    model_config = {"arch": USER_MODULE_ARCH, "class": class_name, "num_classes": num_classes,
                    "in_channels": channels, "image_size": height}

    def load_data(cfg: TrainConfig, device: torch.device, channels_last: bool,
                  dist: DistContext) -> RunData:
        batches = device_batches(cfg, device, channels_last, dist, **parts)
        return RunData(source_info=info, num_classes=num_classes, in_channels=channels,
                       mean=(0.0,) * channels, std=(1.0,) * channels,
                       train=batches[0], val=batches[1], test=batches[2],
                       indices={name: np.arange(len(y), dtype=np.int64)
                                for name, (_, y) in parts.items()})

    inputs = RunInputs(load_data=load_data, model_config=lambda cfg, data: dict(model_config),
                       net=model,
                       record={"fit": {"model_class": class_name,
                                       "unused_settings": list(FIT_UNUSED_SETTINGS)}})
    return train_with(inputs, cfg, out_dir, resume=resume, overwrite=overwrite,
                      progress=progress, log=log, caller=FIT)


def check_fit_config(cfg: TrainConfig) -> None:
    """Validate ``cfg`` and refuse settings :func:`fit` does not use (one BadInput line)."""
    if not isinstance(cfg, TrainConfig):
        raise BadInput(f"fit(cfg=...) needs a harness.TrainConfig, got {type(cfg).__name__}")
    cfg.validate()
    defaults = TrainConfig()
    for key in FIT_UNUSED_SETTINGS:
        value, default = getattr(cfg, key), getattr(defaults, key)
        if value != default:
            raise BadInput(f"fit() takes its data and model from its arguments, so it does not "
                           f"use cfg.{key}={shown(value)}; leave it at its default {default!r}")


def _part(name: str, value: Any) -> tuple[torch.Tensor, torch.Tensor]:
    """``(uint8 images [N, C, H, W], int64 labels [N])`` of one ``(images, labels)`` pair."""
    if not isinstance(value, tuple | list) or len(value) != 2:
        raise BadInput(f"fit({name}=...) needs a pair (images, labels)")
    x, y = (torch.as_tensor(np.asarray(v)) if not isinstance(v, torch.Tensor) else v
            for v in value)
    x, y = x.detach().cpu(), y.detach().cpu()
    if x.dim() != 4 or x.shape[0] == 0:
        raise BadInput(f"fit(): {name} images have shape {tuple(x.shape)}; allowed: "
                       f"[N, C, H, W] with N >= 1")
    if x.dtype.is_floating_point:
        x = _float_to_uint8(name, x)
    elif x.dtype != torch.uint8:
        raise BadInput(f"fit(): {name} images are {x.dtype}; allowed: uint8 (0..255) or float "
                       f"in [0, 1]")
    if y.dtype.is_floating_point or y.dtype == torch.bool or y.dtype.is_complex:
        raise BadInput(f"fit(): {name} labels are {y.dtype}; allowed: integers")
    if y.shape != (x.shape[0],):
        raise BadInput(f"fit(): {name} labels have shape {tuple(y.shape)}; allowed: "
                       f"[{x.shape[0]}] (one per image)")
    if int(y.min()) < 0:
        raise BadInput(f"fit(): {name} label {int(y.min())} is negative; allowed: 0..K-1")
    return x.contiguous(), y.to(torch.int64)


def _float_to_uint8(name: str, x: torch.Tensor) -> torch.Tensor:
    """Float images in [0, 1] on the 1/255 grid as exact uint8 (others refused)."""
    x = x.to(torch.float64)
    if not bool(torch.isfinite(x).all()) or float(x.min()) < 0 or float(x.max()) > 1:
        raise BadInput(f"fit(): {name} images are float outside [0, 1]; allowed: [0, 1] "
                       f"(or uint8 0..255)")
    scaled = x * 255.0
    levels = scaled.round()
    if float((scaled - levels).abs().max()) > 1e-3:
        raise BadInput(f"fit(): {name} images are float but not multiples of 1/255; the "
                       f"protocol's batches hold uint8 images: pass (x * 255).round() as uint8")
    return levels.to(torch.uint8)


def _num_classes(model: nn.Module, images: torch.Tensor) -> int:
    """K of the model's logits [1, K], from an eval-mode forward of one image."""
    was_training = model.training
    param = next(model.parameters())
    x = images[:1].to(param.device, torch.float32) / 255.0
    model.eval()
    try:
        with torch.no_grad():
            out = model(x)
    except Exception as err:  # noqa: BLE001 - the user's module: report its error in one line
        raise BadInput(f"fit(): the model fails on one image of shape {tuple(x.shape)}: "
                       f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}"
                       ) from None
    finally:
        model.train(was_training)
    if not isinstance(out, torch.Tensor) or out.dim() != 2 or out.shape[0] != 1 or out.shape[1] < 2:
        found = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise BadInput(f"fit(): the model maps one image to {found}; allowed: logits [1, K] "
                       f"with K >= 2")
    return int(out.shape[1])


def _digest(x: torch.Tensor, y: torch.Tensor) -> str:
    """sha256 of the images' and labels' bytes (config.json records which data trained)."""
    h = hashlib.sha256(x.numpy().tobytes())
    h.update(y.numpy().astype(np.int64).tobytes())
    return h.hexdigest()


__all__ = ["FIT_UNUSED_SETTINGS", "check_fit_config", "fit"]
