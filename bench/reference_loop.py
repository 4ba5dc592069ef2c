"""A faithful re-implementation of the reference training loop, for speed comparisons only.

The paper's authors forked Rice et al.'s ``train_cifar.py`` (``locuslab/robust_overfitting``,
with its ``utils.py`` taken from the "cifar10-fast" code). This module reproduces, step for
step, what that loop *costs*, so that our fast path can be timed against it on the same machine,
model, batch and images (see ``../shared/PROTOCOL.md``):

* data: the uint8 images are reflect-padded by 4 on the host, divided by 255 (float64 numpy),
  transposed to NCHW and kept as a Python list of (image, label) pairs; every epoch draws one
  crop offset and one flip per image (their ``Transform.set_random_choices``), a
  ``torch.utils.data.DataLoader`` (``num_workers=2``, ``pin_memory``, shuffled) crops and flips
  each image in numpy and collates float64 batches, which are copied to the device and cast to
  float32 per step;
* model: the bare network (no normalization inside); ``normalize`` is applied outside, in every
  forward, as their code does; fp32 (no autocast), default memory format;
* attack: their ``attack_pgd``: ``delta`` is a leaf tensor, the mean cross-entropy is
  back-propagated with ``loss.backward()`` (so every attack step also computes, and accumulates,
  weight gradients), the step reads ``delta.grad``, writes ``delta.data[index]`` and zeroes
  ``delta.grad``; with ``early_stop`` the indices of still-correct examples are taken with
  ``torch.where`` (a host sync) and the attack breaks when none is left; after the steps one more
  forward computes the per-example loss for restart selection (even with one restart). The model
  stays in train mode during the training attack (BatchNorm statistics move);
* step: robust forward, ``opt.zero_grad()``, backward, ``opt.step()``, clean forward, and four
  ``.item()`` calls (host syncs) for the running sums; the learning rate is set per iteration.

Only the l_inf attack is reproduced (the paper's threat model). The model is not wrapped in
``nn.DataParallel`` (on one device it only adds a scatter per call). None of this is used by the
project's training: it exists to be measured against.

Example::

    >>> model = reference_model(width=0.25).to(device)
    >>> batches = ReferenceBatches(images_u8, labels, batch_size=128, device=device)
    >>> stats = reference_train(model, batches, steps=50)
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from harness.sources import CIFAR10_MEAN, CIFAR10_STD

UPPER_LIMIT, LOWER_LIMIT = 1.0, 0.0


def reference_model(width: float = 1.0, num_classes: int = 10, in_channels: int = 3,
                    act: str = "relu") -> nn.Module:
    """The bare PreActResNet-18 (same architecture as ours), taking *normalized* inputs."""
    from curvtools.activations import resolve
    from harness.models import build_model, model_config

    config = model_config("preactresnet18", resolve(act).config(), num_classes, in_channels,
                          width)
    return build_model(config).core


class Normalizer:
    """Their module-level ``normalize(X) = (X - mu) / std`` with mu/std on the device."""

    def __init__(self, device: torch.device | str, mean: Sequence[float] = CIFAR10_MEAN,
                 std: Sequence[float] = CIFAR10_STD):
        self.mu = torch.tensor(list(mean), device=device).view(-1, 1, 1)
        self.std = torch.tensor(list(std), device=device).view(-1, 1, 1)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mu) / self.std


def clamp(x: torch.Tensor, lower, upper) -> torch.Tensor:
    """Their elementwise clamp with tensor bounds."""
    return torch.max(torch.min(x, upper), lower)


# --- data: host-side augmentation through a DataLoader --------------------------------------


class _CropFlipDataset(torch.utils.data.Dataset):
    """Their ``Transform(train_set, [Crop(32, 32), FlipLR()])``: numpy crop and flip per item."""

    def __init__(self, items: list[tuple[np.ndarray, int]], size: int, augment: bool):
        self.items, self.size, self.augment = items, size, augment
        self.choices: dict[str, np.ndarray] | None = None

    def __len__(self) -> int:
        return len(self.items)

    def set_random_choices(self) -> None:
        """One crop offset and one flip per image for the coming epoch (numpy's global RNG)."""
        n = len(self.items)
        _, height, width = self.items[0][0].shape
        self.choices = {"x0": np.random.choice(range(width + 1 - self.size), size=n),
                        "y0": np.random.choice(range(height + 1 - self.size), size=n),
                        "flip": np.random.choice([True, False], size=n)}

    def __getitem__(self, index: int) -> tuple[np.ndarray, int]:
        image, label = self.items[index]
        if not self.augment:
            return image, label
        x0, y0 = self.choices["x0"][index], self.choices["y0"][index]
        image = image[:, y0:y0 + self.size, x0:x0 + self.size]
        if self.choices["flip"][index]:
            image = image[:, :, ::-1].copy()
        return image, label


class ReferenceBatches:
    """Their ``Batches``: a DataLoader over host-side float64 images, cast on the device.

    ``images_u8``: uint8 [N, C, H, W] (tensor or array); ``augment=True`` pads by 4 (reflect)
    and crops/flips per epoch as their training set; ``augment=False`` is their test set.
    Iterating yields (X float32 [B, C, H, W] on ``device``, y int64 [B]).
    """

    def __init__(self, images_u8, labels, batch_size: int = 128, device: str = "cpu",
                 augment: bool = True, shuffle: bool = True, num_workers: int = 2,
                 drop_last: bool = False):
        images = np.asarray(torch.as_tensor(images_u8).numpy()).transpose(0, 2, 3, 1)  # NHWC
        size = images.shape[1]
        if augment:  # their utils.pad: numpy reflect padding of the whole set, up front
            images = np.pad(images, [(0, 0), (4, 4), (4, 4), (0, 0)], mode="reflect")
        data = images.transpose(0, 3, 1, 2) / 255.0  # float64 NCHW, as their transpose(x / 255.)
        items = list(zip(data, np.asarray(labels).tolist(), strict=True))
        self.dataset = _CropFlipDataset(items, size, augment)
        self.device = torch.device(device)
        self.loader = torch.utils.data.DataLoader(
            self.dataset, batch_size=batch_size, shuffle=shuffle, drop_last=drop_last,
            num_workers=num_workers, pin_memory=self.device.type == "cuda")

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        if self.dataset.augment:
            self.dataset.set_random_choices()
        return ((x.to(self.device).float(), y.to(self.device).long()) for x, y in self.loader)


# --- attack and loops ------------------------------------------------------------------------


def attack_pgd(model: nn.Module, normalize: Normalizer, X: torch.Tensor, y: torch.Tensor,
               epsilon: float, alpha: float, attack_iters: int, restarts: int,
               early_stop: bool = False) -> torch.Tensor:
    """Their l_inf ``attack_pgd``: weight gradients via ``loss.backward()``, ``delta.grad``."""
    max_loss = torch.zeros(y.shape[0], device=X.device)
    max_delta = torch.zeros_like(X)
    for _ in range(restarts):
        delta = torch.zeros_like(X)
        delta.uniform_(-epsilon, epsilon)
        delta = clamp(delta, LOWER_LIMIT - X, UPPER_LIMIT - X)
        delta.requires_grad = True
        for _ in range(attack_iters):
            output = model(normalize(X + delta))
            if early_stop:
                index = torch.where(output.max(1)[1] == y)[0]
                if len(index) == 0:
                    break
            else:
                index = slice(None, None, None)
            loss = F.cross_entropy(output, y)
            loss.backward()
            grad = delta.grad.detach()
            d, g, x = delta[index, :, :, :], grad[index, :, :, :], X[index, :, :, :]
            d = torch.clamp(d + alpha * torch.sign(g), min=-epsilon, max=epsilon)
            d = clamp(d, LOWER_LIMIT - x, UPPER_LIMIT - x)
            delta.data[index, :, :, :] = d
            delta.grad.zero_()
        all_loss = F.cross_entropy(model(normalize(X + delta)), y, reduction="none")
        max_delta[all_loss >= max_loss] = delta.detach()[all_loss >= max_loss]
        max_loss = torch.max(max_loss, all_loss)
    return max_delta


def _piecewise(t: float, epochs: int, lr_max: float) -> float:
    if t / epochs < 0.5:
        return lr_max
    if t / epochs < 0.75:
        return lr_max / 10.0
    return lr_max / 100.0


def reference_optimizer(model: nn.Module, lr: float = 0.1) -> torch.optim.Optimizer:
    """Their optimizer: SGD, momentum 0.9, weight decay 5e-4 on every parameter."""
    return torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9, weight_decay=5e-4)


def reference_train(model: nn.Module, batches: ReferenceBatches, opt: torch.optim.Optimizer,
                    steps: int, *, epsilon: float = 8 / 255, alpha: float = 2 / 255,
                    attack_iters: int = 10, restarts: int = 1, epochs: int = 200,
                    epoch: int = 0, mark: list[float] | None = None) -> dict[str, float]:
    """Run ``steps`` training steps of their loop (fewer if an epoch of ``batches`` ends first).

    ``mark``: when given, ``time.perf_counter()`` is appended after every step (their loop
    syncs four times per step through ``.item()``, so the host clock is exact here).
    Returns their running sums: train loss/acc, robust loss/acc, n.
    """
    normalize = Normalizer(batches.device)
    criterion = nn.CrossEntropyLoss()
    model.train()
    sums = {"train_loss": 0.0, "train_acc": 0.0, "train_robust_loss": 0.0,
            "train_robust_acc": 0.0, "n": 0}
    for i, (X, y) in enumerate(batches):
        if i >= steps:
            break
        lr = _piecewise(epoch + (i + 1) / len(batches), epochs, 0.1)
        opt.param_groups[0].update(lr=lr)
        delta = attack_pgd(model, normalize, X, y, epsilon, alpha, attack_iters, restarts)
        delta = delta.detach()
        robust_output = model(normalize(torch.clamp(X + delta[:X.size(0)], min=LOWER_LIMIT,
                                                     max=UPPER_LIMIT)))
        robust_loss = criterion(robust_output, y)
        opt.zero_grad()
        robust_loss.backward()
        opt.step()
        output = model(normalize(X))
        loss = criterion(output, y)
        sums["train_robust_loss"] += robust_loss.item() * y.size(0)
        sums["train_robust_acc"] += (robust_output.max(1)[1] == y).sum().item()
        sums["train_loss"] += loss.item() * y.size(0)
        sums["train_acc"] += (output.max(1)[1] == y).sum().item()
        sums["n"] += y.size(0)
        if mark is not None:
            mark.append(time.perf_counter())
    return sums


def reference_eval(model: nn.Module, batches: ReferenceBatches, *, epsilon: float = 8 / 255,
                   alpha: float = 2 / 255, attack_iters: int = 20, restarts: int = 5,
                   early_stop: bool = False, max_batches: int | None = None) -> dict[str, float]:
    """Their test loop (model in eval mode): attack, robust and clean forward, ``.item()`` sums.

    Their ``--eval`` mode sets ``early_stop=True``; it is off by default because on an untrained
    net almost nothing is classified correctly and the attack would stop after a step, which
    times nothing.
    """
    normalize = Normalizer(batches.device)
    criterion = nn.CrossEntropyLoss()
    model.eval()
    sums = {"test_loss": 0.0, "test_acc": 0.0, "test_robust_loss": 0.0,
            "test_robust_acc": 0.0, "n": 0}
    for i, (X, y) in enumerate(batches):
        if max_batches is not None and i >= max_batches:
            break
        delta = attack_pgd(model, normalize, X, y, epsilon, alpha, attack_iters, restarts,
                           early_stop=early_stop).detach()
        robust_output = model(normalize(torch.clamp(X + delta[:X.size(0)], min=LOWER_LIMIT,
                                                     max=UPPER_LIMIT)))
        robust_loss = criterion(robust_output, y)
        output = model(normalize(X))
        loss = criterion(output, y)
        sums["test_robust_loss"] += robust_loss.item() * y.size(0)
        sums["test_robust_acc"] += (robust_output.max(1)[1] == y).sum().item()
        sums["test_loss"] += loss.item() * y.size(0)
        sums["test_acc"] += (output.max(1)[1] == y).sum().item()
        sums["n"] += y.size(0)
    return sums
