"""Image sources: every dataset opens as an :class:`ImageSource` giving uint8 images
``[n, C, H, W]`` and int64 labels for the parts ``train`` and ``test``.

- CIFAR-10/100 (:func:`open_cifar`): torchvision's datasets in ``data_dir`` (the python-version
  tarball, downloaded when missing). Mean/std are the published per-channel values of the
  training set.
- Any ImageFolder tree with ``train/`` and ``test/`` (:class:`ImageFolderSource`): class folders
  sorted alphabetically give the labels, as torchvision's ImageFolder. Labels come from the file
  list without decoding; decoded images are cached in ``~/.cache/lowcurv``.
- scikit-learn's 1,797 8x8 handwritten digits (:func:`open_digits`, shipped inside scikit-learn,
  no download), upsampled to 16x16 by pixel repetition, split 80/20 per class with a fixed seed.

Which dataset name opens which source is :mod:`harness.datasets` (the registry).
"""

from __future__ import annotations

import hashlib
import os
import tempfile
import warnings
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch

from curvtools.errors import BadInput

PARTS = ("train", "test")
INV_255 = float(np.float32(1.0) / np.float32(255.0))

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


def as_index_array(indices, n: int) -> np.ndarray:
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
        return torch.from_numpy(array[as_index_array(indices, len(array))])


def open_cifar(name: str, data_dir: Path, download: bool) -> ArraySource:
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


def open_digits() -> ArraySource:
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
        idx = as_index_array(indices, len(self._files[part]))
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


