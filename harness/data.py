"""Image data for adversarial training: sources, the train/val split, and on-device batches.

Sources (:func:`open_source`), all giving uint8 images ``[n, C, H, W]`` and int64 labels:

- ``cifar10`` / ``cifar100``: torchvision's datasets in ``data_dir`` (the python-version tarball,
  downloaded when missing). Mean/std are the published per-channel values of the training set.
- ``imagefolder:PATH``: any ImageFolder tree with ``train/`` and ``test/`` (class folders sorted
  alphabetically give the labels, as torchvision's ImageFolder). Labels come from the file list
  without decoding; decoded images are cached in ``~/.cache/lowcurv``
  (see :class:`ImageFolderSource`).
- ``digits``: scikit-learn's 1,797 8x8 handwritten digits (shipped inside the package, no
  download), upsampled to 16x16 by pixel repetition, split 80/20 per class with a fixed seed.

Then :func:`split_train_val` fixes the validation split, :func:`stratified_subset` draws balanced
subsets, and :class:`DeviceBatches` keeps a set of images on the device and yields shuffled,
augmented float batches with no host synchronization.

Example::

    >>> source = open_source("imagefolder:../shared/data/cifar10-jpg", "data")
    >>> train_idx, val_idx = split_train_val(len(source.labels("train")))      # 45,000 / 5,000
    >>> batches = DeviceBatches(source.images("train", train_idx),
    ...                         source.labels("train")[train_idx], "cuda", batch_size=128)
    >>> for x, y in batches.epoch(epoch_index=0, seed=0, augment=True):
    ...     ...                   # x float32 [128, 3, 32, 32] in [0, 1], y int64 [128]
"""

from __future__ import annotations

import hashlib
import os
import tempfile
import warnings
from collections.abc import Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import torch

from curvtools.errors import BadInput

PARTS = ("train", "test")
INV_255 = float(np.float32(1.0) / np.float32(255.0))
SPEC_HELP = "cifar10, cifar100, imagefolder:PATH (with train/ and test/) or digits"

# Published per-channel statistics of the CIFAR training sets (the values Rice et al. use).
CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2471, 0.2435, 0.2616)
CIFAR100_MEAN = (0.5071, 0.4865, 0.4409)
CIFAR100_STD = (0.2673, 0.2564, 0.2762)

DIGITS_SCALE = 2  # 8x8 -> 16x16 (pixel repetition): leaves room for the 4-pixel crop jitter
DIGITS_TEST_FRACTION = 0.2
DIGITS_SPLIT_SEED = 0

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp")
JPEG_SUFFIXES = (".jpg", ".jpeg")


def _check_part(part: str) -> str:
    if part not in PARTS:
        raise BadInput(f"data part {part!r} is not one of {', '.join(PARTS)}")
    return part


def _as_index_array(indices, n: int) -> np.ndarray:
    """Indices as int64 numpy, range-checked against n (BadInput when out of range)."""
    if isinstance(indices, torch.Tensor):
        indices = indices.cpu().numpy()
    idx = np.asarray(indices, dtype=np.int64).reshape(-1)
    if idx.size and (idx.min() < 0 or idx.max() >= n):
        raise BadInput(f"image index out of range: got {idx.min()}..{idx.max()}, "
                       f"allowed 0..{n - 1}")
    return idx


def _channel_stats(images: np.ndarray, chunk: int = 2048) -> tuple[tuple[float, ...], ...]:
    """Per-channel mean and (population) std of uint8 images [n, C, H, W], in [0, 1] units.

    Sums are exact integers (uint64), so the result does not depend on the chunking.
    """
    channels = images.shape[1]
    total = np.zeros(channels, dtype=np.uint64)
    total_sq = np.zeros(channels, dtype=np.uint64)
    for start in range(0, len(images), chunk):
        block = np.asarray(images[start:start + chunk]).astype(np.uint32)
        block = block.transpose(1, 0, 2, 3).reshape(channels, -1)
        total += block.sum(axis=1, dtype=np.uint64)
        total_sq += (block * block).sum(axis=1, dtype=np.uint64)
    count = images.shape[0] * images.shape[2] * images.shape[3]
    mean = total.astype(np.float64) / count
    var = total_sq.astype(np.float64) / count - mean * mean
    mean, std = mean / 255.0, np.sqrt(np.maximum(var, 0.0)) / 255.0
    return tuple(round(float(m), 6) for m in mean), tuple(round(float(s), 6) for s in std)


# --- sources -------------------------------------------------------------------------------------


class ImageSource:
    """A labelled image dataset with a train and a test part.

    Attributes: ``name`` (e.g. ``cifar10``), ``num_classes``, ``in_channels``, ``image_size``
    (H = W), ``mean`` / ``std`` (per-channel tuples in [0, 1] units, of the training images),
    ``classes`` (class names in label order).
    """

    name: str
    num_classes: int
    in_channels: int
    image_size: int
    classes: tuple[str, ...]

    @property
    def mean(self) -> tuple[float, ...]:
        raise NotImplementedError

    @property
    def std(self) -> tuple[float, ...]:
        raise NotImplementedError

    def labels(self, part: str) -> np.ndarray:
        """int64 labels [n] of ``part`` ("train" or "test"); decodes no image."""
        raise NotImplementedError

    def images(self, part: str, indices) -> torch.Tensor:
        """uint8 images [len(indices), C, H, W] of ``part`` at ``indices`` (in that order)."""
        raise NotImplementedError

    def num_examples(self, part: str) -> int:
        return len(self.labels(part))

    def info(self) -> dict:
        """JSON-able summary for a run's config.json."""
        return {"name": self.name, "num_classes": self.num_classes, "classes": list(self.classes),
                "in_channels": self.in_channels, "image_size": self.image_size,
                "num_train": self.num_examples("train"), "num_test": self.num_examples("test"),
                "mean": list(self.mean), "std": list(self.std)}


class ArraySource(ImageSource):
    """A source held in memory as uint8 arrays [n, C, H, W] per part (CIFAR, digits)."""

    def __init__(self, name: str, arrays: dict[str, np.ndarray], labels: dict[str, np.ndarray],
                 classes: Sequence[str], mean: Sequence[float] | None = None,
                 std: Sequence[float] | None = None):
        self.name = name
        self._arrays = {p: np.ascontiguousarray(arrays[p], dtype=np.uint8) for p in PARTS}
        self._labels = {p: np.asarray(labels[p], dtype=np.int64) for p in PARTS}
        self.classes = tuple(classes)
        self.num_classes = len(self.classes)
        _, self.in_channels, self.image_size, _ = self._arrays["train"].shape
        if mean is None or std is None:
            mean, std = _channel_stats(self._arrays["train"])
        self._mean, self._std = tuple(mean), tuple(std)

    @property
    def mean(self) -> tuple[float, ...]:
        return self._mean

    @property
    def std(self) -> tuple[float, ...]:
        return self._std

    def labels(self, part: str) -> np.ndarray:
        return self._labels[_check_part(part)].copy()

    def images(self, part: str, indices) -> torch.Tensor:
        array = self._arrays[_check_part(part)]
        return torch.from_numpy(array[_as_index_array(indices, len(array))])


def _open_cifar(name: str, data_dir: Path, download: bool) -> ArraySource:
    from torchvision import datasets

    cls, folder, mean, std = {
        "cifar10": (datasets.CIFAR10, "cifar-10-batches-py", CIFAR10_MEAN, CIFAR10_STD),
        "cifar100": (datasets.CIFAR100, "cifar-100-python", CIFAR100_MEAN, CIFAR100_STD),
    }[name]
    parts = {}
    try:
        for part in PARTS:
            parts[part] = cls(str(data_dir), train=part == "train", download=download)
    except Exception as err:  # torchvision raises RuntimeError, URLError, OSError, ...
        reason = " ".join(str(err).split())[:160] or type(err).__name__
        tried = "download failed" if download else "download disabled"
        raise BadInput(f"{name} not found in {data_dir} ({tried}: {reason}); put the extracted "
                       f"python-version tarball folder {folder}/ into {data_dir}, "
                       f"or use imagefolder:PATH") from None
    arrays = {p: parts[p].data.transpose(0, 3, 1, 2) for p in PARTS}  # NHWC -> NCHW
    labels = {p: np.asarray(parts[p].targets, dtype=np.int64) for p in PARTS}
    return ArraySource(name, arrays, labels, parts["train"].classes, mean, std)


def _open_digits() -> ArraySource:
    """scikit-learn's digits as uint8 [n, 1, 16, 16], a seeded stratified 80/20 split."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    # Values are 0..16 counts of set pixels in 4x4 blocks; map them onto 0..255.
    pixels = np.rint(digits.images * (255.0 / 16.0)).astype(np.uint8)
    pixels = pixels.repeat(DIGITS_SCALE, axis=1).repeat(DIGITS_SCALE, axis=2)[:, None]
    labels = digits.target.astype(np.int64)
    rng = np.random.default_rng(DIGITS_SPLIT_SEED)
    test_mask = np.zeros(len(labels), dtype=bool)
    for c in range(10):
        members = np.flatnonzero(labels == c)
        test_mask[rng.permutation(members)[:int(round(DIGITS_TEST_FRACTION * len(members)))]] = True
    parts = {"train": ~test_mask, "test": test_mask}
    return ArraySource("digits", {p: pixels[m] for p, m in parts.items()},
                       {p: labels[m] for p, m in parts.items()}, [str(c) for c in range(10)])


def default_cache_dir() -> Path:
    """``$LOWCURV_CACHE``, else ``$XDG_CACHE_HOME/lowcurv``, else ``~/.cache/lowcurv``."""
    if os.environ.get("LOWCURV_CACHE"):
        return Path(os.environ["LOWCURV_CACHE"])
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "lowcurv"


def _decode_files(paths: Sequence[str], threads: int) -> list[torch.Tensor]:
    """Decode image files to uint8 RGB tensors [3, H, W]; JPEGs in batches, in threads."""
    from torchvision.io import ImageReadMode, decode_image, decode_jpeg, read_file

    def decode_one(path: str, data: torch.Tensor) -> torch.Tensor:
        try:
            return decode_image(data, mode=ImageReadMode.RGB)
        except RuntimeError as err:
            reason = " ".join(str(err).split())[:120]
            raise BadInput(f"cannot decode image {path}: {reason}") from None

    def decode_chunk(chunk: Sequence[str]) -> list[torch.Tensor]:
        data = [read_file(p) for p in chunk]
        if all(p.lower().endswith(JPEG_SUFFIXES) for p in chunk):
            try:  # the fast path: one call decodes the whole chunk
                return list(decode_jpeg(data, mode=ImageReadMode.RGB))
            except RuntimeError:
                pass  # a broken or mislabelled file: find it below
        return [decode_one(p, d) for p, d in zip(chunk, data, strict=True)]

    chunk_size = 2048
    chunks = [paths[i:i + chunk_size] for i in range(0, len(paths), chunk_size)]
    with warnings.catch_warnings():
        # torchvision 0.29 marks its decoders deprecated (in favour of torchcodec); they work.
        warnings.simplefilter("ignore", DeprecationWarning)
        if threads <= 1 or len(chunks) <= 1:
            decoded = [decode_chunk(c) for c in chunks]
        else:
            with ThreadPoolExecutor(threads) as pool:
                decoded = list(pool.map(decode_chunk, chunks))
    return [image for chunk in decoded for image in chunk]


class ImageFolderSource(ImageSource):
    """An ImageFolder tree ``ROOT/{train,test}/<class>/<image>``; RGB, all images one square size.

    ``labels`` reads only the file list. ``images`` decodes only the requested files, except that
    when a request covers at least half of a part (the training split, say) the whole part is
    decoded once and stored as a uint8 ``.npy`` in the cache folder (default ``~/.cache/lowcurv``,
    never next to the data), keyed by the absolute path and every file's name, size and mtime;
    later calls (and later processes) read that cache (memory-mapped) while it is valid. The cache
    is written to a temporary file and renamed into place, so a crash never leaves a torn one.
    Mean/std are computed from the training images on first use (this decodes the training part).
    """

    CACHE_FRACTION = 0.5

    def __init__(self, root: str | Path, cache_dir: str | Path | None = None,
                 threads: int | None = None):
        self.root = Path(root).expanduser().resolve()
        for part in PARTS:
            if not (self.root / part).is_dir():
                raise BadInput(f"imagefolder:{root} has no {part}/ folder; expected "
                               f"{self.root}/{{train,test}}/<class>/<image>")
        self.name = f"imagefolder:{self.root}"
        self.cache_dir = Path(cache_dir) if cache_dir is not None else default_cache_dir()
        self.threads = threads if threads is not None else min(8, os.cpu_count() or 1)
        self.classes = tuple(sorted(e.name for e in os.scandir(self.root / "train") if e.is_dir()))
        if not self.classes:
            raise BadInput(f"imagefolder:{root}: train/ has no class folders")
        test_classes = tuple(sorted(e.name for e in os.scandir(self.root / "test") if e.is_dir()))
        if test_classes != self.classes:
            raise BadInput(f"imagefolder:{root}: test/ class folders {list(test_classes)} differ "
                           f"from train/ {list(self.classes)}")
        self.num_classes = len(self.classes)
        self._files: dict[str, list[str]] = {}
        self._labels: dict[str, np.ndarray] = {}
        for part in PARTS:
            self._list_part(part)
        self._cached: dict[str, np.ndarray] = {}
        self._cache_paths: dict[str, str] = {}
        first = _decode_files([self._files["train"][0]], threads=1)[0]
        self.in_channels = int(first.shape[0])
        if first.shape[1] != first.shape[2]:
            raise BadInput(f"imagefolder:{root}: images must be square, got {tuple(first.shape)}")
        self.image_size = int(first.shape[1])
        self._mean_std: tuple[tuple[float, ...], tuple[float, ...]] | None = None

    def _list_part(self, part: str) -> None:
        files, labels = [], []
        for label, cls in enumerate(self.classes):
            folder = self.root / part / cls
            entries = sorted((e for e in os.scandir(folder)
                              if e.is_file() and e.name.lower().endswith(IMAGE_SUFFIXES)),
                             key=lambda e: e.name)
            files.extend(e.path for e in entries)
            labels.extend([label] * len(entries))
        if not files:
            raise BadInput(f"imagefolder:{self.root}: {part}/ holds no images "
                           f"({', '.join(IMAGE_SUFFIXES)})")
        self._files[part] = files
        self._labels[part] = np.asarray(labels, dtype=np.int64)

    def labels(self, part: str) -> np.ndarray:
        return self._labels[_check_part(part)].copy()

    def cache_path(self, part: str) -> Path:
        """Where the decoded cache of ``part`` lives; the name changes when any file changes."""
        if part not in self._cache_paths:
            digest = hashlib.sha256(str(self.root).encode())
            for path in self._files[part]:  # stat only here: listing for labels stays cheap
                st = os.stat(path)
                digest.update(f"\0{path}\0{st.st_size}\0{st.st_mtime_ns}".encode())
            self._cache_paths[part] = f"imagefolder-{part}-{digest.hexdigest()[:24]}.npy"
        return self.cache_dir / self._cache_paths[part]

    def _load_cache(self, part: str) -> np.ndarray | None:
        if part in self._cached:
            return self._cached[part]
        path = self.cache_path(part)
        expected = (len(self._files[part]), self.in_channels, self.image_size, self.image_size)
        try:
            array = np.load(path, mmap_mode="r")
        except (OSError, ValueError):
            return None
        if array.shape != expected or array.dtype != np.uint8:
            return None
        self._cached[part] = array
        return array

    def _decode(self, part: str, idx: np.ndarray) -> np.ndarray:
        size = self.image_size
        images = _decode_files([self._files[part][i] for i in idx], self.threads)
        out = np.empty((len(idx), self.in_channels, size, size), dtype=np.uint8)
        for j, image in enumerate(images):
            if tuple(image.shape) != out.shape[1:]:
                bad = self._files[part][idx[j]]
                raise BadInput(f"image {bad} has shape {tuple(image.shape)}, expected "
                               f"{out.shape[1:]} like the others")
            out[j] = image.numpy()
        return out

    def build_cache(self, part: str) -> np.ndarray:
        """Decode all of ``part`` and write the cache atomically; returns the uint8 array."""
        part = _check_part(part)
        cached = self._load_cache(part)
        if cached is not None:
            return cached
        array = self._decode(part, np.arange(len(self._files[part])))
        path = self.cache_path(part)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(prefix=path.name, suffix=".tmp", dir=path.parent)
            try:
                with os.fdopen(fd, "wb") as fh:
                    np.save(fh, array)
                    fh.flush()
                    os.fsync(fh.fileno())
                umask = os.umask(0)
                os.umask(umask)
                os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600; a cache file need not be
                os.replace(tmp, path)
            finally:
                if os.path.exists(tmp):
                    os.unlink(tmp)
        except OSError:
            pass  # an unwritable cache folder only costs speed
        self._cached[part] = array
        return array

    def images(self, part: str, indices) -> torch.Tensor:
        part = _check_part(part)
        idx = _as_index_array(indices, len(self._files[part]))
        cached = self._load_cache(part)
        if cached is None and len(idx) >= self.CACHE_FRACTION * len(self._files[part]):
            cached = self.build_cache(part)
        if cached is not None:
            return torch.from_numpy(np.ascontiguousarray(cached[idx]))
        return torch.from_numpy(self._decode(part, idx))

    def _compute_mean_std(self) -> tuple[tuple[float, ...], tuple[float, ...]]:
        if self._mean_std is None:
            self._mean_std = _channel_stats(self.build_cache("train"))
        return self._mean_std

    @property
    def mean(self) -> tuple[float, ...]:
        return self._compute_mean_std()[0]

    @property
    def std(self) -> tuple[float, ...]:
        return self._compute_mean_std()[1]


def check_spec(spec: str) -> str:
    """Check the form of a dataset spec without opening any data; returns it stripped.

    Raises BadInput for anything but ``cifar10``, ``cifar100``, ``digits`` or
    ``imagefolder:PATH`` (so a sweep's dry run or a config check catches a typo early).
    """
    text = str(spec).strip()
    key = text.lower()
    if key in ("cifar10", "cifar100", "digits"):
        return text
    if key.startswith("imagefolder:"):
        if not text.split(":", 1)[1]:
            raise BadInput("imagefolder:PATH needs a path, "
                           "e.g. imagefolder:../shared/data/cifar10-jpg")
        return text
    raise BadInput(f"unknown dataset {spec!r}; allowed: {SPEC_HELP}")


def open_source(spec: str, data_dir: str | Path = "data", download: bool = True) -> ImageSource:
    """Open the dataset ``spec``: ``cifar10``, ``cifar100``, ``imagefolder:PATH`` or ``digits``.

    ``data_dir`` is where torchvision keeps (and downloads) CIFAR; the other specs ignore it.
    Raises BadInput (one line) for an unknown spec or missing data, saying how to provide it.
    """
    text = str(spec).strip()
    key = text.lower()
    if key in ("cifar10", "cifar100"):
        return _open_cifar(key, Path(data_dir), download)
    if key == "digits":
        return _open_digits()
    if key.startswith("imagefolder:"):
        path = text.split(":", 1)[1]
        if not path:
            raise BadInput("imagefolder:PATH needs a path, "
                           "e.g. imagefolder:../shared/data/cifar10-jpg")
        return ImageFolderSource(path)
    raise BadInput(f"unknown dataset {spec!r}; allowed: {SPEC_HELP}")


def absolute_data_settings(settings: Mapping[str, Any]) -> dict[str, Any]:
    """``settings`` with a relative ``imagefolder:PATH`` (``dataset``) and ``data_dir`` made
    absolute, relative to the working directory: a run records where its data is, so it can be
    evaluated, inspected and resumed from any directory."""
    out = dict(settings)
    dataset = out.get("dataset")
    if isinstance(dataset, str) and dataset.strip().lower().startswith("imagefolder:"):
        path = dataset.strip().split(":", 1)[1]
        if path:
            out["dataset"] = f"imagefolder:{Path(path).expanduser().resolve()}"
    if isinstance(out.get("data_dir"), str) and out["data_dir"]:
        out["data_dir"] = str(Path(out["data_dir"]).expanduser().resolve())
    return out


# --- splits --------------------------------------------------------------------------------------


def split_train_val(num_train: int, val_fraction: float = 0.1,
                    seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Split ``range(num_train)`` into (train, val) index arrays (int64, each sorted ascending).

    A permutation from ``np.random.default_rng(seed)`` (PCG64: the same on every machine and
    numpy version); its first ``round(val_fraction * num_train)`` entries are the validation set.
    ``split_train_val(50000)`` gives 45,000 / 5,000.
    """
    if isinstance(num_train, bool) or int(num_train) != num_train or num_train < 2:
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
    indices = _as_index_array(indices, len(labels))
    if isinstance(n, bool) or int(n) != n:
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
