"""Shared test settings: CPU only, few threads, deterministic."""

import os
from pathlib import Path

import pytest

os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")

# Property-based tests: the same examples on every run by default (CI must not flake on a new
# random draw); HYPOTHESIS_PROFILE=explore draws fresh, more numerous examples to hunt for bugs.
try:
    from hypothesis import settings

    settings.register_profile("default", derandomize=True, database=None)
    settings.register_profile("explore", max_examples=2000, derandomize=False)
    settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "default"))
except ImportError:  # pragma: no cover - hypothesis is in the test extra
    pass

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
