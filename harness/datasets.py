"""The dataset registry: every dataset name the project accepts, and the one parser of them.

A dataset spec is ``NAME`` or, for datasets that live in a folder, ``NAME:PATH``:

- ``cifar10``, ``cifar100``: torchvision's datasets, kept in (and downloaded to) ``data_dir``;
- ``imagefolder:PATH``: any ImageFolder tree with ``train/`` and ``test/`` (e.g. the CIFAR-10
  JPEG copy, ``imagefolder:../shared/data/cifar10-jpg``);
- ``digits``: scikit-learn's digits, 8x8 scans upsampled to 16x16 images, offline.

Adding a dataset: an opener returning a :class:`harness.sources.ImageSource`, and one
:func:`register` call below (``docs/architecture.md``). Nothing else parses dataset names.

Example::

    >>> check_spec("imagefolder:../shared/data/cifar10-jpg")
    'imagefolder:../shared/data/cifar10-jpg'
    >>> source = open_source("digits")
    >>> source.num_classes, source.image_size
    (10, 16)
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from curvtools.errors import BadInput

# open(path, data_dir, download) -> harness.sources.ImageSource
Opener = Callable[[str | None, Path, bool], Any]


@dataclass(frozen=True)
class DatasetSpec:
    """One registered dataset: its name, a help text, whether it takes ``:PATH``, its opener,
    and its image size when fixed (checkpoints older than ``image_size`` records rely on it)."""

    name: str
    help: str
    open: Opener
    takes_path: bool = False
    image_size: int | None = None


REGISTRY: dict[str, DatasetSpec] = {}


def register(spec: DatasetSpec) -> DatasetSpec:
    """Add a dataset (new names only)."""
    if spec.name in REGISTRY:
        raise ValueError(f"dataset name {spec.name!r} is already registered")
    REGISTRY[spec.name] = spec
    return spec


def help_text() -> str:
    """``cifar10, cifar100, imagefolder:PATH or digits``: what ``--dataset`` accepts."""
    forms = [f"{s.name}:PATH" if s.takes_path else s.name for s in REGISTRY.values()]
    return ", ".join(forms[:-1]) + " or " + forms[-1]


def parse(spec: str) -> tuple[DatasetSpec, str | None]:
    """``"imagefolder:data/x"`` -> (its :class:`DatasetSpec`, ``"data/x"``); ``"cifar10"`` ->
    (spec, None). Raises :class:`BadInput` for an unknown name or a missing/unexpected path."""
    text = str(spec).strip()
    name, sep, path = text.partition(":")
    entry = REGISTRY.get(name.lower())
    if entry is None:
        raise BadInput(f"unknown dataset {spec!r}; allowed: {help_text()}")
    if entry.takes_path and not path:
        raise BadInput(f"{entry.name}:PATH needs a path, e.g. "
                       f"{entry.name}:../shared/data/cifar10-jpg")
    if sep and not entry.takes_path:
        raise BadInput(f"dataset {entry.name!r} takes no path; allowed: {help_text()}")
    return entry, (path or None)


def check_spec(spec: str) -> str:
    """Check the form of a dataset spec without opening any data; returns it stripped (so a
    sweep's dry run or a config check catches a typo early)."""
    parse(spec)
    return str(spec).strip()


def open_source(spec: str, data_dir: str | Path = "data", download: bool = True):
    """Open the dataset ``spec`` as a :class:`harness.sources.ImageSource`.

    ``data_dir`` is where torchvision keeps (and downloads) CIFAR; the other datasets ignore it.
    Raises BadInput (one line) for an unknown spec or missing data, saying how to provide it.
    """
    entry, path = parse(spec)
    return entry.open(path, Path(data_dir), download)


def known_image_size(spec: str) -> int | None:
    """The image side of a dataset whose images have a fixed size (None: look at the data)."""
    try:
        return parse(spec)[0].image_size
    except BadInput:
        return None


def absolute_data_settings(settings: Mapping[str, Any]) -> dict[str, Any]:
    """``settings`` with a relative dataset path (``dataset``) and ``data_dir`` made absolute,
    relative to the working directory: a run records where its data is, so it can be
    evaluated, inspected and resumed from any directory."""
    out = dict(settings)
    dataset = out.get("dataset")
    if isinstance(dataset, str):
        out["dataset"] = absolute_spec(dataset, Path.cwd())
    if isinstance(out.get("data_dir"), str) and out["data_dir"]:
        out["data_dir"] = str(Path(out["data_dir"]).expanduser().resolve())
    return out


def absolute_spec(spec: str, base: Path) -> str:
    """``spec`` with a relative ``:PATH`` made absolute against ``base`` (the working directory
    on the command line; the repository root for the bundled sweep specs). Other specs, and
    specs that do not parse, are returned unchanged (they are refused where they are used)."""
    try:
        entry, path = parse(spec)
    except BadInput:
        return spec
    if path is None:
        return spec
    return f"{entry.name}:{(base / Path(path).expanduser()).resolve()}"


def _open_cifar10(path: str | None, data_dir: Path, download: bool):
    from harness.sources import open_cifar

    return open_cifar("cifar10", data_dir, download)


def _open_cifar100(path: str | None, data_dir: Path, download: bool):
    from harness.sources import open_cifar

    return open_cifar("cifar100", data_dir, download)


def _open_imagefolder(path: str | None, data_dir: Path, download: bool):
    from harness.sources import ImageFolderSource

    return ImageFolderSource(path)


def _open_digits(path: str | None, data_dir: Path, download: bool):
    from harness.sources import open_digits

    return open_digits()


register(DatasetSpec("cifar10", "CIFAR-10 (torchvision, into --data-dir)", _open_cifar10,
                     image_size=32))
register(DatasetSpec("cifar100", "CIFAR-100 (torchvision, into --data-dir)", _open_cifar100,
                     image_size=32))
register(DatasetSpec("imagefolder", "any ImageFolder tree with train/ and test/ subfolders",
                     _open_imagefolder, takes_path=True))
register(DatasetSpec("digits", "scikit-learn's digits as 16x16 images (offline)", _open_digits,
                     image_size=16))
