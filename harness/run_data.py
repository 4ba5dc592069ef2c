"""A run's images on the device: the dataset opened, split 90/10, subsets taken, batched."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from curvtools.errors import BadInput
from harness.config import TrainConfig
from harness.distributed import SINGLE, DistContext, per_rank_batch


@dataclass
class RunData:
    """Images and split of a run, on the device."""

    source_info: dict
    num_classes: int
    in_channels: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    train: Any  # harness.data.DeviceBatches
    val: Any
    test: Any
    indices: dict[str, np.ndarray]


def indices_hash(idx: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(idx, dtype=np.int64).tobytes()).hexdigest()


def load_run_data(cfg: TrainConfig, device: torch.device, channels_last: bool,
                  dist: DistContext = SINGLE) -> RunData:
    """Open the dataset, split 90/10 (``split_seed``), take subsets, put everything on device.

    Data parallel (``dist``): this rank's training batches are ``batch_size / world_size``
    rows of each global batch (``DeviceBatches`` sharding); every rank holds val and test.
    """
    from harness.datasets import open_source

    source = open_source(cfg.dataset, cfg.data_dir, cfg.download)
    train_labels = source.labels("train")
    test_labels = source.labels("test")
    indices = split_indices(train_labels, test_labels, val_fraction=cfg.val_fraction,
                            split_seed=cfg.split_seed, train_subset=cfg.train_subset,
                            val_subset=cfg.val_subset, test_subset=cfg.test_subset)
    train_idx, val_idx, test_idx = indices["train"], indices["val"], indices["test"]
    check_batch_size(cfg, len(train_idx))
    train, val, test = device_batches(
        cfg, device, channels_last, dist,
        train=(source.images("train", train_idx), train_labels[train_idx]),
        val=(source.images("train", val_idx), train_labels[val_idx]),
        test=(source.images("test", test_idx), test_labels[test_idx]))
    return RunData(
        source_info=source.info(), num_classes=source.num_classes,
        in_channels=source.in_channels, mean=tuple(source.mean), std=tuple(source.std),
        train=train, val=val, test=test,
        indices=indices)


def split_indices(train_labels: Any, test_labels: Any, *, val_fraction: float, split_seed: int,
                  train_subset: int | None = None, val_subset: int | None = None,
                  test_subset: int | None = None) -> dict[str, np.ndarray]:
    """The images of a run: ``{"train", "val", "test"}`` index arrays (sorted int64).

    The 90/10 split of the training images (``val_fraction``, ``split_seed``), then the
    class-balanced subsets (``None``: the whole part). The one rule for training
    (:func:`load_run_data`) and for ``harness eval --split`` (the same images a run saw).
    """
    from harness.data import split_train_val, stratified_subset

    train_idx, val_idx = split_train_val(len(train_labels), val_fraction, split_seed)
    if len(val_idx) == 0:  # the best checkpoint is chosen on validation
        raise BadInput(f"val_fraction={val_fraction} of {len(train_labels)} training images "
                       f"leaves no validation image; allowed: more than "
                       f"0.5/{len(train_labels)}")
    if train_subset is not None:
        train_idx = stratified_subset(train_labels, train_idx, train_subset, split_seed)
    if val_subset is not None:
        val_idx = stratified_subset(train_labels, val_idx, val_subset, split_seed)
    test_idx = np.arange(len(test_labels), dtype=np.int64)
    if test_subset is not None:
        test_idx = stratified_subset(test_labels, test_idx, test_subset, split_seed)
    if len(train_idx) == 0:
        raise BadInput(f"val_fraction={val_fraction} of {len(train_labels)} training images "
                       f"leaves no training image; allowed: less than "
                       f"1 - 0.5/{len(train_labels)}")
    return {"train": train_idx, "val": val_idx, "test": test_idx}


def check_batch_size(cfg: TrainConfig, num_train: int) -> None:
    """BadInput when a training batch would be larger than the training set."""
    if cfg.batch_size > num_train:
        raise BadInput(f"batch_size={cfg.batch_size} is larger than the training set "
                       f"({num_train} images)")


Part = tuple[Any, Any]  # (uint8 images [N, C, H, W], int labels [N])


def device_batches(cfg: TrainConfig, device: torch.device, channels_last: bool,
                   dist: DistContext, *, train: Part, val: Part, test: Part) -> tuple[Any, ...]:
    """``(train, val, test)`` :class:`harness.data.DeviceBatches` of a run, batched per ``cfg``.

    Training batches are ``batch_size / world_size`` rows of each global batch on this rank
    (``drop_last`` only where the last batch would hold one image, which breaks train-mode
    BatchNorm); validation and test batches are ``eval_batch_size``, every rank all of them.
    """
    from harness.data import DeviceBatches

    rank_batch = per_rank_batch(cfg.batch_size, dist)
    # A last batch of one image breaks train-mode BatchNorm; drop it in that case only.
    drop_last = (len(train[1]) // dist.world_size) % rank_batch == 1

    def batches(part: Part, size: int, drop: bool, rank: int = 0, world_size: int = 1):
        return DeviceBatches(part[0], part[1], device, batch_size=size, drop_last=drop,
                             channels_last=channels_last, rank=rank, world_size=world_size)

    return (batches(train, rank_batch, drop_last, dist.rank, dist.world_size),
            batches(val, cfg.eval_batch_size, False),
            batches(test, cfg.eval_batch_size, False))


# --- run directory ---------------------------------------------------------------------------


