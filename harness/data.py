"""The train/val split, class-balanced subsets, and on-device batches with augmentation.

:func:`split_train_val` fixes the validation split, :func:`stratified_subset` draws balanced
subsets, and :class:`DeviceBatches` keeps a set of images on the device and yields shuffled,
augmented float batches with no host synchronization. Images come from a source of the dataset
registry (:func:`harness.datasets.open_source`).

Example::

    >>> source = open_source("imagefolder:../shared/data/cifar10-jpg", "data")
    >>> train_idx, val_idx = split_train_val(len(source.labels("train")))      # 45,000 / 5,000
    >>> batches = DeviceBatches(source.images("train", train_idx),
    ...                         source.labels("train")[train_idx], "cuda", batch_size=128)
    >>> for x, y in batches.epoch(epoch_index=0, seed=0, augment=True):
    ...     ...                   # x float32 [128, 3, 32, 32] in [0, 1], y int64 [128]
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import torch

from curvtools.checks import is_int
from curvtools.errors import BadInput
from harness.sources import INV_255, as_index_array

# --- splits --------------------------------------------------------------------------------------


def split_train_val(num_train: int, val_fraction: float = 0.1,
                    seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Split ``range(num_train)`` into (train, val) index arrays (int64, each sorted ascending).

    A permutation from ``np.random.default_rng(seed)`` (PCG64: the same on every machine and
    numpy version); its first ``round(val_fraction * num_train)`` entries are the validation set.
    ``split_train_val(50000)`` gives 45,000 / 5,000.
    """
    if not is_int(num_train) or num_train < 2:
        raise BadInput(f"number of training images {num_train!r} must be an integer >= 2")
    if not 0.0 <= val_fraction < 1.0:
        raise BadInput(f"validation fraction {val_fraction!r} must be in [0, 1)")
    num_train = int(num_train)
    perm = np.random.default_rng(seed).permutation(num_train)
    num_val = int(round(val_fraction * num_train))
    return np.sort(perm[num_val:]).astype(np.int64), np.sort(perm[:num_val]).astype(np.int64)


def stratified_subset(labels, indices, n: int, seed: int) -> np.ndarray:
    """``n`` of ``indices`` with an equal share per class (sorted int64).

    ``labels`` is the label array the indices point into; the classes are those present among
    ``labels[indices]``. Each class gets ``n // C``; the remainder goes one each to the classes
    with the smallest labels. Members of a class are drawn by a ``default_rng(seed)`` permutation.
    Raises BadInput when ``n > len(indices)``, ``n < C`` or a class has too few members.
    """
    labels = np.asarray(labels, dtype=np.int64)
    indices = as_index_array(indices, len(labels))
    if not is_int(n):
        raise BadInput(f"subset size {n!r} must be an integer")
    n = int(n)
    classes = np.unique(labels[indices])
    if n > len(indices):
        raise BadInput(f"subset size {n} is larger than the {len(indices)} images available")
    if n < len(classes):
        raise BadInput(f"subset size {n} is smaller than the number of classes ({len(classes)})")
    share, extra = divmod(n, len(classes))
    rng = np.random.default_rng(seed)
    chosen = []
    for rank, c in enumerate(classes):
        members = indices[labels[indices] == c]
        want = share + (1 if rank < extra else 0)
        if want > len(members):
            raise BadInput(f"subset size {n} needs {want} images of class {c}, "
                           f"only {len(members)} available")
        chosen.append(rng.permutation(members)[:want])
    return np.sort(np.concatenate(chosen)).astype(np.int64)


# --- device batches ------------------------------------------------------------------------------


def epoch_seed(seed: int, epoch_index: int, stream: int = 0) -> int:
    """A 63-bit torch seed derived from (seed, epoch, stream) by numpy's SeedSequence.

    Stream 0 is :class:`DeviceBatches`' shuffling and augmentation; other users (attack random
    starts, say) take other stream numbers so their randomness is independent of the data order.
    """
    if min(seed, epoch_index, stream) < 0:
        raise BadInput(f"seed {seed}, epoch {epoch_index} and stream {stream} must all be >= 0")
    state = np.random.SeedSequence([int(seed), int(epoch_index), int(stream)]).generate_state(2)
    return int(state[0]) << 31 ^ int(state[1])


def reflect_index(positions: torch.Tensor, size: int) -> torch.Tensor:
    """Map positions in a reflect-padded axis (``-pad .. size-1+pad``) to source indices.

    Same rule as ``F.pad(mode="reflect")``: -1 -> 1, size -> size-2 (pad must be < size).
    """
    positions = positions.abs()
    return torch.where(positions >= size, 2 * (size - 1) - positions, positions)


def crop_flip(images: torch.Tensor, dy: torch.Tensor, dx: torch.Tensor, flip: torch.Tensor,
              pad: int) -> torch.Tensor:
    """Random-crop-with-reflect-padding and horizontal flip, for a whole batch in one gather.

    ``images`` [B, C, H, W] (any dtype); ``dy``, ``dx`` [B] crop offsets in ``0..2*pad`` into the
    reflect-padded image; ``flip`` [B] bool. Output [B, C, H, W]:
    ``out[b] = hflip?(reflect_pad(images[b], pad)[:, dy:dy+H, dx:dx+W])``.
    """
    b, c, h, w = images.shape
    device = images.device
    rows = reflect_index(dy[:, None] - pad + torch.arange(h, device=device), h)  # [B, H]
    cols_range = torch.arange(w, device=device)
    cols_range = torch.where(flip[:, None], w - 1 - cols_range, cols_range)      # [B, W]
    cols = reflect_index(dx[:, None] - pad + cols_range, w)
    flat = (rows[:, :, None] * w + cols[:, None, :]).reshape(b, 1, h * w).expand(b, c, h * w)
    return images.reshape(b, c, h * w).gather(2, flat).reshape(b, c, h, w)


class DeviceBatches:
    """A fixed set of images held on ``device`` as uint8, served as float batches in [0, 1].

    ``images`` uint8 [N, C, H, W] (tensor or array), ``labels`` int [N]. :meth:`epoch` shuffles
    with a permutation drawn from a CPU ``torch.Generator`` seeded from ``(seed, epoch_index)``
    (so resuming needs no data-RNG state, the global RNG is never touched, and CPU and CUDA runs
    see the same order and augmentation); augmentation (reflect pad ``pad``, random crop back to
    H x W, random horizontal flip) runs on the device for the whole batch, with no host sync.

    Data parallel: with ``world_size`` > 1, each epoch's permutation is cut to a multiple of
    ``world_size`` (the tail, which changes every epoch, is dropped) and rank ``r`` takes every
    ``world_size``-th entry starting at ``r``: disjoint, equal-size shards. ``batch_size`` is
    per rank.

    Example::

        >>> batches = DeviceBatches(images_u8, labels, "cuda", batch_size=128, channels_last=True)
        >>> for x, y in batches.epoch(epoch_index=3, seed=0, augment=True): ...
        >>> for x, y in batches.in_order(): ...           # evaluation: fixed order, no augmentation
    """

    def __init__(self, images, labels, device: str | torch.device = "cpu", batch_size: int = 128,
                 drop_last: bool = False, *, channels_last: bool = False, pad: int = 4,
                 rank: int = 0, world_size: int = 1):
        images = torch.as_tensor(images)
        labels = torch.as_tensor(np.asarray(labels) if not isinstance(labels, torch.Tensor)
                                 else labels)
        if images.dtype != torch.uint8 or images.dim() != 4:
            raise BadInput(f"DeviceBatches needs uint8 images [N, C, H, W], got {images.dtype} "
                           f"{tuple(images.shape)}")
        if labels.shape != (images.shape[0],):
            raise BadInput(f"labels shape {tuple(labels.shape)} does not match "
                           f"{images.shape[0]} images")
        if batch_size < 1:
            raise BadInput(f"batch size {batch_size} must be >= 1")
        if not 0 <= pad < min(images.shape[2:]):
            raise BadInput(f"crop padding {pad} must be in 0..{min(images.shape[2:]) - 1} "
                           f"(reflect padding needs pad < image size)")
        if world_size < 1 or not 0 <= rank < world_size:
            raise BadInput(f"rank {rank} / world size {world_size}: need 0 <= rank < world_size")
        self.device = torch.device(device)
        self.images = images.to(self.device)
        self.labels = labels.to(self.device, torch.int64)
        self.batch_size = int(batch_size)
        self.drop_last = bool(drop_last)
        self.channels_last = bool(channels_last)
        self.pad = int(pad)
        self.rank, self.world_size = int(rank), int(world_size)

    @property
    def num_total(self) -> int:
        """Images held (all ranks)."""
        return int(self.images.shape[0])

    @property
    def num_examples(self) -> int:
        """Images this rank sees per shuffled epoch."""
        return self.num_total // self.world_size

    def __len__(self) -> int:
        """Batches per shuffled epoch on this rank."""
        n = self.num_examples
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)

    def epoch_plan(self, epoch_index: int, seed: int,
                   shuffle: bool = True) -> tuple[torch.Tensor, ...]:
        """This rank's (order [n], dy [n], dx [n], flip [n]) for an epoch, as CPU tensors.

        Drawn for all ranks from one generator seeded from (seed, epoch_index), then sharded, so
        shards are disjoint. ``shuffle=False``: order is ``0..N-1`` (all images, no sharding).
        """
        g = torch.Generator().manual_seed(epoch_seed(seed, epoch_index))
        n = self.num_total
        order = torch.randperm(n, generator=g)
        dy = torch.randint(0, 2 * self.pad + 1, (n,), generator=g)
        dx = torch.randint(0, 2 * self.pad + 1, (n,), generator=g)
        flip = torch.randint(0, 2, (n,), generator=g).bool()
        if not shuffle:
            return torch.arange(n), dy, dx, flip
        keep = self.num_examples * self.world_size
        return tuple(t[:keep][self.rank::self.world_size] for t in (order, dy, dx, flip))

    def epoch(self, epoch_index: int, seed: int, augment: bool = True,
              shuffle: bool = True) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Yield (x float32 [B, C, H, W] in [0, 1], y int64 [B]) for one epoch on this rank.

        ``augment=False`` yields the images unchanged. ``shuffle=False`` serves all images in
        stored order (no sharding); see also :meth:`in_order`.
        """
        plan = [self._to_device(t) for t in self.epoch_plan(epoch_index, seed, shuffle)]
        return self._batches(*plan, augment=augment, drop_last=self.drop_last)

    def in_order(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Evaluation batches: every image once, stored order, no augmentation, no drop_last."""
        order = torch.arange(self.num_total, device=self.device)
        return self._batches(order, augment=False, drop_last=False)

    def _batches(self, order: torch.Tensor, dy: torch.Tensor | None = None,
                 dx: torch.Tensor | None = None, flip: torch.Tensor | None = None, *,
                 augment: bool, drop_last: bool) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        n, size = len(order), self.batch_size
        stop = n - n % size if drop_last else n
        for start in range(0, stop, size):  # host-side arithmetic only: no device sync
            batch = slice(start, start + size)
            idx = order[batch]
            x = self.images.index_select(0, idx)
            if augment:
                x = crop_flip(x, dy[batch], dx[batch], flip[batch], self.pad)
            yield self._to_float(x), self.labels.index_select(0, idx)

    def _to_device(self, t: torch.Tensor) -> torch.Tensor:
        # Pinned host memory makes the once-per-epoch copy truly asynchronous on CUDA.
        if self.device.type == "cuda":
            t = t.pin_memory()
        return t.to(self.device, non_blocking=True)

    def _to_float(self, x: torch.Tensor) -> torch.Tensor:
        memory_format = torch.channels_last if self.channels_last else torch.contiguous_format
        # Multiply by the float32 reciprocal (not divide): CUDA computes division by a scalar
        # that way anyway, so CPU and CUDA batches are bit-identical (values within 1 ulp of
        # x / 255, and 255 maps to exactly 1.0).
        return x.to(torch.float32).mul_(INV_255).contiguous(memory_format=memory_format)

