"""harness.data: sources, splits, subsets and on-device batches with augmentation."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from curvtools.errors import BadInput
from harness.data import DeviceBatches, crop_flip, epoch_seed, split_train_val, stratified_subset
from harness.datasets import open_source
from harness.sources import ImageFolderSource

CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse",
                   "ship", "truck")


# --- splits and subsets --------------------------------------------------------------------------


def test_split_is_reproducible_disjoint_and_45000_5000():
    train, val = split_train_val(50_000)
    train2, val2 = split_train_val(50_000, 0.1, seed=0)
    assert len(train) == 45_000 and len(val) == 5_000
    assert np.array_equal(train, train2) and np.array_equal(val, val2)
    assert np.intersect1d(train, val).size == 0
    assert np.array_equal(np.sort(np.concatenate([train, val])), np.arange(50_000))
    assert train.dtype == np.int64 and val.dtype == np.int64


def test_split_is_pinned_across_machines():
    # numpy's PCG64 stream is fixed by specification: these values must never change, or runs
    # saved earlier would be evaluated on a different validation set.
    _, val = split_train_val(50_000, 0.1, seed=0)
    assert val[:8].tolist() == [24, 26, 28, 66, 72, 86, 87, 94]
    assert int(val.sum()) == 124_756_520


def test_split_depends_on_seed_and_rejects_bad_values():
    assert not np.array_equal(split_train_val(1000, seed=0)[1], split_train_val(1000, seed=1)[1])
    with pytest.raises(BadInput):
        split_train_val(1000, val_fraction=1.0)
    with pytest.raises(BadInput):
        split_train_val(1)


def _shuffled_labels(per_class: int, classes: int = 10) -> np.ndarray:
    return np.random.default_rng(5).permutation(np.repeat(np.arange(classes), per_class))


def test_stratified_subset_is_balanced_and_inside_the_indices():
    labels = _shuffled_labels(500)
    pool = np.arange(100, 5000)
    subset = stratified_subset(labels, pool, 105, seed=3)
    counts = np.bincount(labels[subset], minlength=10)
    assert counts.tolist() == [11] * 5 + [10] * 5  # remainder to the smallest labels
    assert len(np.unique(subset)) == 105 and np.isin(subset, pool).all()
    assert np.array_equal(subset, stratified_subset(labels, pool, 105, seed=3))
    assert not np.array_equal(subset, stratified_subset(labels, pool, 105, seed=4))


@pytest.mark.parametrize("n", [9, 5001])
def test_stratified_subset_rejects_too_small_or_too_large(n):
    labels = _shuffled_labels(500)
    with pytest.raises(BadInput):
        stratified_subset(labels, np.arange(5000), n, seed=0)


def test_stratified_subset_rejects_class_with_too_few_members():
    labels = np.array([0] * 10 + [1] * 2)
    with pytest.raises(BadInput, match="class 1"):
        stratified_subset(labels, np.arange(12), 8, seed=0)


# --- sources -------------------------------------------------------------------------------------


def test_imagefolder_reads_cifar10_labels_in_cifar_order(cifar10_jpg, tmp_path, monkeypatch):
    monkeypatch.setenv("LOWCURV_CACHE", str(tmp_path / "cache"))
    source = open_source(f"imagefolder:{cifar10_jpg}", tmp_path)
    assert source.classes == CIFAR10_CLASSES
    assert (source.num_classes, source.in_channels, source.image_size) == (10, 3, 32)
    train, test = source.labels("train"), source.labels("test")
    assert train.dtype == np.int64
    assert np.bincount(train).tolist() == [5000] * 10
    assert np.bincount(test).tolist() == [1000] * 10
    picks = [0, 4999, 5000, 23456, 49999]
    images = source.images("train", picks)
    assert images.shape == (5, 3, 32, 32) and images.dtype == torch.uint8
    assert train[picks].tolist() == [0, 0, 1, 4, 9]
    assert images.float().std() > 10  # real pictures, not blanks
    assert not (tmp_path / "cache").exists()  # a few images: decoded directly, no cache


def test_imagefolder_image_matches_pil_decode(cifar10_jpg, tmp_path, monkeypatch):
    from PIL import Image

    monkeypatch.setenv("LOWCURV_CACHE", str(tmp_path / "cache"))
    source = ImageFolderSource(cifar10_jpg)
    ours = source.images("test", [1234])[0].permute(1, 2, 0).numpy().astype(int)
    path = cifar10_jpg / "test" / CIFAR10_CLASSES[1] / sorted(
        os.listdir(cifar10_jpg / "test" / CIFAR10_CLASSES[1]))[234]
    pil = np.asarray(Image.open(path).convert("RGB")).astype(int)
    assert np.abs(ours - pil).mean() < 2.0  # decoders may round IDCT output differently


def _write_tiny_folder(root: Path, per_class: int = 3) -> None:
    from PIL import Image

    g = torch.Generator().manual_seed(0)
    for part in ("train", "test"):
        for c, cls in enumerate(("b_cat", "a_dog")):
            folder = root / part / cls
            folder.mkdir(parents=True)
            for i in range(per_class):
                image = torch.randint(0, 256, (3, 8, 8), generator=g, dtype=torch.uint8)
                picture = Image.fromarray(image.permute(1, 2, 0).numpy())
                if (i + c) % 2:
                    picture.save(folder / f"{i}.png")
                else:
                    picture.save(folder / f"{i}.jpg", quality=95)


def test_imagefolder_cache_is_written_reused_and_invalidated(tmp_path):
    _write_tiny_folder(tmp_path / "data")
    cache = tmp_path / "cache"
    source = ImageFolderSource(tmp_path / "data", cache_dir=cache)
    assert source.classes == ("a_dog", "b_cat")
    direct = source.images("train", [5, 0])  # under half the part: decoded directly
    assert not cache.exists()
    everything = source.images("train", np.arange(6))  # the whole part: decoded once, cached
    files = list(cache.iterdir())
    assert len(files) == 1 and files[0].suffix == ".npy"
    assert torch.equal(everything[[5, 0]], direct)
    again = ImageFolderSource(tmp_path / "data", cache_dir=cache)
    assert again._load_cache("train") is not None
    assert torch.equal(again.images("train", [5, 0]), direct)
    # Changing a file's content and mtime gives a new cache key: the old cache is not used.
    victim = sorted((tmp_path / "data" / "train" / "a_dog").iterdir())[0]
    os.utime(victim, ns=(1, 1))
    changed = ImageFolderSource(tmp_path / "data", cache_dir=cache)
    assert changed.cache_path("train") != source.cache_path("train")
    assert changed._load_cache("train") is None


def test_imagefolder_labels_decode_nothing_and_images_decode_only_what_is_asked(tmp_path,
                                                                              monkeypatch):
    import harness.sources as data

    _write_tiny_folder(tmp_path / "data", per_class=4)
    source = ImageFolderSource(tmp_path / "data", cache_dir=tmp_path / "cache")
    decoded: list[str] = []
    real = data._decode_files
    monkeypatch.setattr(data, "_decode_files",
                        lambda paths, threads: decoded.extend(paths) or real(paths, threads))
    assert source.labels("train").tolist() == [0, 0, 0, 0, 1, 1, 1, 1]
    assert decoded == []
    source.images("train", [6, 1])
    assert [Path(p).parent.name + "/" + Path(p).name for p in decoded] == ["b_cat/2.jpg",
                                                                           "a_dog/1.jpg"]


def test_imagefolder_mean_std_are_those_of_the_training_images(tmp_path):
    _write_tiny_folder(tmp_path / "data")
    source = ImageFolderSource(tmp_path / "data", cache_dir=tmp_path / "cache")
    pixels = source.images("train", np.arange(6)).double() / 255
    expected_mean = pixels.mean(dim=(0, 2, 3))
    expected_std = pixels.std(dim=(0, 2, 3), unbiased=False)
    assert source.mean == pytest.approx(expected_mean.tolist(), abs=1e-6)
    assert source.std == pytest.approx(expected_std.tolist(), abs=1e-6)


def test_imagefolder_broken_file_is_bad_input_naming_it(tmp_path):
    _write_tiny_folder(tmp_path / "data")
    broken = tmp_path / "data" / "test" / "a_dog" / "0.jpg"
    broken.write_bytes(b"not a picture")
    source = ImageFolderSource(tmp_path / "data", cache_dir=tmp_path / "cache")
    with pytest.raises(BadInput, match="0.jpg"):
        source.images("test", np.arange(6))


def test_imagefolder_without_train_and_test_is_bad_input(tmp_path):
    with pytest.raises(BadInput, match="train/"):
        open_source(f"imagefolder:{tmp_path}", tmp_path)


def test_digits_are_offline_real_images_with_10_classes():
    source = open_source("digits", "unused")
    assert (source.num_classes, source.in_channels, source.image_size) == (10, 1, 16)
    train, test = source.labels("train"), source.labels("test")
    assert len(train) + len(test) == 1797
    assert len(test) == pytest.approx(0.2 * 1797, abs=10)
    assert (np.bincount(test) >= 35).all()  # stratified: every class in the test part
    images = source.images("test", np.arange(len(test)))
    assert images.shape == (len(test), 1, 16, 16) and images.dtype == torch.uint8
    assert images.max() == 255 and images.min() == 0
    assert 0.2 < source.mean[0] < 0.4 and 0.3 < source.std[0] < 0.45
    assert np.array_equal(open_source("digits", "x").labels("test"), test)  # deterministic


class _FakeCifar:
    """Stands in for torchvision.datasets.CIFAR10/100: NHWC uint8 ``data``, list ``targets``."""

    classes = ["c0", "c1", "c2"]

    def __init__(self, root, train, download):
        n = 6 if train else 3
        self.data = np.arange(n * 4 * 4 * 3, dtype=np.uint8).reshape(n, 4, 4, 3)
        self.targets = [i % 3 for i in range(n)]


@pytest.mark.parametrize("spec,attr,mean", [("cifar10", "CIFAR10", 0.4914),
                                            ("cifar100", "CIFAR100", 0.5071)])
def test_cifar_arrays_become_nchw_with_published_statistics(spec, attr, mean, monkeypatch):
    import torchvision.datasets

    monkeypatch.setattr(torchvision.datasets, attr, _FakeCifar)
    source = open_source(spec, "unused", download=False)
    assert (source.name, source.num_classes, source.in_channels, source.image_size) == \
        (spec, 3, 3, 4)
    assert source.mean[0] == mean
    images = source.images("train", [4, 1])
    raw = _FakeCifar("", True, False).data
    assert torch.equal(images, torch.from_numpy(raw[[4, 1]]).permute(0, 3, 1, 2))
    assert source.labels("train").tolist() == [0, 1, 2, 0, 1, 2]
    assert source.labels("test").dtype == np.int64


@pytest.mark.parametrize("spec", ["cifar10", "cifar100"])
def test_missing_cifar_without_download_is_one_line_bad_input(spec, tmp_path):
    with pytest.raises(BadInput) as info:
        open_source(spec, tmp_path / "nothing", download=False)
    message = str(info.value)
    assert "\n" not in message
    assert "imagefolder:PATH" in message and "python-version" in message


def test_unknown_spec_is_bad_input():
    with pytest.raises(BadInput, match="cifar10, cifar100"):
        open_source("mnist", "data")


# --- augmentation --------------------------------------------------------------------------------


def _reference_crop_flip(image: torch.Tensor, dy: int, dx: int, flip: bool, pad: int):
    """The slow, obvious way: reflect-pad one image, slice the window, maybe flip it."""
    padded = F.pad(image[None].float(), (pad, pad, pad, pad), mode="reflect")[0]
    window = padded[:, dy:dy + image.shape[1], dx:dx + image.shape[2]]
    return window.flip(-1) if flip else window


@pytest.mark.parametrize("shape", [(3, 32, 32), (1, 8, 6)])
def test_crop_is_a_window_of_the_reflect_padded_image(shape):
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (6, *shape), generator=g, dtype=torch.uint8)
    offsets = [(0, 0), (8, 8), (3, 5), (0, 8), (8, 0), (4, 4)]
    dy = torch.tensor([o[0] for o in offsets])
    dx = torch.tensor([o[1] for o in offsets])
    for flip_all in (False, True):
        flip = torch.tensor([flip_all ^ (i % 2 == 1) for i in range(6)])
        out = crop_flip(images, dy, dx, flip, pad=4)
        assert out.dtype == torch.uint8 and out.shape == images.shape
        for b in range(6):
            expected = _reference_crop_flip(images[b], int(dy[b]), int(dx[b]), bool(flip[b]), 4)
            assert torch.equal(out[b].float(), expected), (b, offsets[b], bool(flip[b]))


def test_center_crop_is_identity_and_flip_is_a_mirror():
    images = torch.randint(0, 256, (2, 3, 5, 7), dtype=torch.uint8)
    four = torch.full((2,), 4)
    assert torch.equal(crop_flip(images, four, four, torch.tensor([False, False]), 4), images)
    flipped = crop_flip(images, four, four, torch.tensor([True, True]), 4)
    assert torch.equal(flipped, images.flip(-1))


# --- device batches ------------------------------------------------------------------------------


def _toy_batches(n: int = 50, **kwargs) -> DeviceBatches:
    g = torch.Generator().manual_seed(1)
    images = torch.randint(0, 256, (n, 3, 12, 12), generator=g, dtype=torch.uint8)
    kwargs.setdefault("batch_size", 16)
    return DeviceBatches(images, np.arange(n), "cpu", **kwargs)  # label = image id


def test_epoch_batches_have_shape_range_and_cover_every_image_once():
    batches = _toy_batches()
    got = list(batches.epoch(epoch_index=0, seed=0, augment=True))
    assert [x.shape[0] for x, _ in got] == [16, 16, 16, 2] and len(batches) == 4
    for x, y in got:
        assert x.dtype == torch.float32 and y.dtype == torch.int64
        assert x.shape[1:] == (3, 12, 12) and 0 <= x.min() and x.max() <= 1
    ids = torch.cat([y for _, y in got])
    assert sorted(ids.tolist()) == list(range(50)) and ids.tolist() != list(range(50))


def test_augmented_batch_equals_reference_augmentation_of_the_planned_images():
    batches = _toy_batches()
    order, dy, dx, flip = batches.epoch_plan(epoch_index=2, seed=7)
    x, y = next(iter(batches.epoch(epoch_index=2, seed=7, augment=True)))
    assert torch.equal(y, order[:16])
    for b in range(16):
        expected = _reference_crop_flip(batches.images[y[b]], int(dy[b]), int(dx[b]),
                                        bool(flip[b]), 4) / 255
        torch.testing.assert_close(x[b], expected, rtol=0, atol=6e-8)  # x * fl(1/255): 1 ulp
    assert len(set(zip(dy.tolist(), dx.tolist(), strict=True))) > 10  # offsets really vary
    assert 0 < int(flip.sum()) < 50


def test_same_seed_and_epoch_give_identical_batches_different_epochs_differ():
    batches = _toy_batches()
    first = list(batches.epoch(3, seed=11, augment=True))
    second = list(batches.epoch(3, seed=11, augment=True))
    for (x1, y1), (x2, y2) in zip(first, second, strict=True):
        assert torch.equal(x1, x2) and torch.equal(y1, y2)
    other_epoch = torch.cat([y for _, y in batches.epoch(4, seed=11, augment=True)])
    other_seed = torch.cat([y for _, y in batches.epoch(3, seed=12, augment=True)])
    ids = torch.cat([y for _, y in first])
    assert not torch.equal(ids, other_epoch) and not torch.equal(ids, other_seed)


def test_epoch_seeds_are_pinned_and_distinct():
    # numpy's SeedSequence is specified exactly, so these never change across machines.
    assert epoch_seed(0, 0) == 6375474604893067239
    assert epoch_seed(0, 1) == 8514611595815388268
    assert epoch_seed(1, 0, stream=101) == 8806519204393401060
    seeds = {epoch_seed(s, e, k) for s in range(3) for e in range(3) for k in (0, 101)}
    assert len(seeds) == 18 and max(seeds) < 2**63
    with pytest.raises(BadInput):
        epoch_seed(-1, 0)


def test_epochs_do_not_touch_the_global_rng():
    batches = _toy_batches()
    state = torch.get_rng_state()
    for _ in batches.epoch(0, seed=0, augment=True):
        pass
    assert torch.equal(state, torch.get_rng_state())


def test_no_augmentation_and_in_order_yield_the_stored_images():
    batches = _toy_batches(drop_last=True)
    x, y = next(iter(batches.epoch(1, seed=0, augment=False)))
    torch.testing.assert_close(x, batches.images[y].float() / 255, rtol=0, atol=6e-8)
    assert x.max() <= 1.0
    ordered = list(batches.in_order())  # evaluation never drops the last partial batch
    assert [len(y) for _, y in ordered] == [16, 16, 16, 2]
    assert torch.cat([y for _, y in ordered]).tolist() == list(range(50))
    assert len(batches) == 3 and len(list(batches.epoch(1, 0))) == 3


def test_channels_last_option():
    x, _ = next(iter(_toy_batches(channels_last=True).epoch(0, 0)))
    assert x.is_contiguous(memory_format=torch.channels_last)


@pytest.mark.parametrize("n,world", [(48, 3), (50, 4)])
def test_shards_are_disjoint_equal_size_and_cover_the_epoch(n, world):
    shards = []
    for rank in range(world):
        batches = _toy_batches(n, batch_size=5, rank=rank, world_size=world)
        ids = torch.cat([y for _, y in batches.epoch(2, seed=1, augment=True)])
        assert len(ids) == batches.num_examples == n // world
        shards.append(set(ids.tolist()))
    union = set().union(*shards)
    assert sum(len(s) for s in shards) == len(union) == (n // world) * world
    if n % world == 0:
        assert union == set(range(n))


def test_device_batches_reject_bad_input():
    with pytest.raises(BadInput):
        DeviceBatches(torch.zeros(4, 3, 8, 8), np.arange(4), "cpu", 2)  # float, not uint8
    with pytest.raises(BadInput):
        DeviceBatches(torch.zeros(4, 3, 8, 8, dtype=torch.uint8), np.arange(3), "cpu", 2)
    with pytest.raises(BadInput):
        DeviceBatches(torch.zeros(4, 3, 4, 4, dtype=torch.uint8), np.arange(4), "cpu", 2, pad=4)


# --- CUDA (skipped without a GPU) ----------------------------------------------------------------

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


@needs_cuda
def test_cuda_batches_equal_cpu_batches_and_never_sync_the_host():
    g = torch.Generator().manual_seed(3)
    images = torch.randint(0, 256, (1000, 3, 32, 32), generator=g, dtype=torch.uint8)
    cpu = DeviceBatches(images, np.arange(1000), "cpu", 128)
    gpu = DeviceBatches(images, np.arange(1000), "cuda", 128, channels_last=True)
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")  # any host synchronization raises
    try:
        got = list(gpu.epoch(3, seed=5, augment=True))
        got_eval = list(gpu.in_order())
    finally:
        torch.cuda.set_sync_debug_mode(0)
    expected = list(cpu.epoch(3, seed=5, augment=True))
    assert len(got) == len(expected) == 8
    for (xc, yc), (xg, yg) in zip(expected, got, strict=True):
        assert xg.is_cuda and xg.is_contiguous(memory_format=torch.channels_last)
        torch.testing.assert_close(xg.cpu(), xc, rtol=0, atol=0)
        assert torch.equal(yc, yg.cpu())
    for (xc, yc), (xg, yg) in zip(cpu.in_order(), got_eval, strict=True):
        assert torch.equal(xc, xg.cpu()) and torch.equal(yc, yg.cpu())


def test_relative_data_paths_are_recorded_absolute(tmp_path, monkeypatch):
    from harness.datasets import absolute_data_settings

    monkeypatch.chdir(tmp_path)
    out = absolute_data_settings({"dataset": "imagefolder:../data/cifar10-jpg",
                                  "data_dir": "data", "lr": 0.1})
    assert out == {"dataset": f"imagefolder:{(tmp_path.parent / 'data' / 'cifar10-jpg')}",
                   "data_dir": str(tmp_path / "data"), "lr": 0.1}
    assert absolute_data_settings({"dataset": "digits"}) == {"dataset": "digits"}
