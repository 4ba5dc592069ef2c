"""Shared test settings: CPU only, few threads, deterministic."""

import os
from pathlib import Path

import pytest

os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")

# ../shared/data/cifar10-jpg beside the checkout (CI lays shared/ out the same way).
CIFAR10_JPG = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "cifar10-jpg"


@pytest.fixture(autouse=True)
def _torch_threads():
    try:
        import torch
    except ImportError:  # pragma: no cover
        yield
        return
    torch.set_num_threads(1)
    torch.manual_seed(0)
    yield


@pytest.fixture
def cifar10_jpg() -> Path:
    if not (CIFAR10_JPG / "train").is_dir():
        pytest.fail(f"CIFAR-10 JPEG copy not found at {CIFAR10_JPG}; it must lie in ../shared/data")
    return CIFAR10_JPG
