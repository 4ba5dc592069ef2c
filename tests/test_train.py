"""harness.train: the schedule, validation, run directories, exact resume, divergence, and a
tiny CIFAR-10 (JPEG copy) run that must beat chance under attack."""

from __future__ import annotations

import json

import pytest
import torch

from curvtools.errors import BadInput
from curvtools.runfiles import read_metrics
from harness.checkpoint import load_checkpoint
from harness.config import TrainConfig
from harness.run_data import load_run_data
from harness.runtime import cpu_has_native_bf16
from harness.step import piecewise_lr
from harness.train import TrainingDiverged, run_training

TIMING_KEYS = ("train_seconds", "eval_seconds")


def _digits_cfg(**over) -> TrainConfig:
    base = dict(dataset="digits", width=0.0625, epochs=3, batch_size=50, train_subset=100,
                val_subset=20, test_subset=20, train_steps=1, eval_steps=1, eps_255=24,
                alpha_255=8, lr=0.05, lr_milestones=[2.0], eval_batch_size=64)
    return TrainConfig.from_dict(base | over)


def _without_timings(rows):
    return [{k: v for k, v in r.items() if k not in TIMING_KEYS} for r in rows]


def test_lr_schedule_matches_rice_piecewise_rule_at_every_iteration():
    cfg = TrainConfig()  # 200 epochs, 0.1, milestones 100 and 150 (the paper)

    def rice(t):  # train_cifar.py, lr_schedule == 'piecewise'
        if t / 200 < 0.5:
            return 0.1
        if t / 200 < 0.75:
            return 0.1 / 10.0
        return 0.1 / 100.0

    n_batches = 352  # ceil(45000 / 128)
    for epoch in (0, 98, 99, 100, 148, 149, 150, 199):
        for i in range(n_batches):
            t = epoch + (i + 1) / n_batches
            assert piecewise_lr(t, cfg) == rice(t), (epoch, i)
    # Rice's rule at fractional epochs: the last iteration of epoch 100 already runs at 0.01
    assert piecewise_lr(99 + 351 / 352, cfg) == 0.1 and piecewise_lr(100.0, cfg) == 0.01
    short = TrainConfig(epochs=30, lr_milestones=None)
    assert short.milestones() == [15.0, 22.5]


@pytest.mark.parametrize("field,value", [
    ("eps_255", -1.0), ("train_steps", 0), ("eval_restarts", 0), ("arch", "vgg16"),
    ("act", "swishy"), ("beta", -1.0), ("val_fraction", 1.5), ("lr", 0.0),
    ("lr_milestones", [150, 100]), ("precision", "fp8"), ("attack_bn", "frozen"),
    ("norm", "l1"), ("epochs", 0), ("device", "tpu:9"), ("width", 0.0), ("batch_size", 1),
    ("compile_mode", "reduce-overhead"), ("not_a_setting", 3),
    ("seed", -1), ("seed", 2**63), ("seed", 10**23), ("split_seed", 2**63), ("device", "meta"),
])
def test_from_dict_rejects_bad_values_with_one_line_bad_input(field, value):
    d = {"act": "pswish"} if field == "beta" else {}
    with pytest.raises(BadInput) as err:
        TrainConfig.from_dict(d | {field: value})
    assert "\n" not in str(err.value)


@pytest.mark.parametrize("native", [True, False])
def test_auto_precision_is_fp16_on_cuda_and_bf16_on_cpus_with_bf16_units(monkeypatch, native):
    import harness.runtime as train

    monkeypatch.setattr(train, "cpu_has_native_bf16", lambda: native)
    cpu = torch.device("cpu")
    assert train.autocast_dtype_for("auto", cpu) == (torch.bfloat16 if native else None)
    assert train.autocast_dtype_for("fp32", cpu) is None
    assert train.autocast_dtype_for("bf16", cpu) == torch.bfloat16
    assert train.autocast_dtype_for("fp16", cpu) == torch.float16
    # CUDA: fp16 for auto (cuDNN's BatchNorm) whatever the CPU has (no device needed to decide)
    assert train.autocast_dtype_for("auto", torch.device("cuda")) == torch.float16
    assert train.autocast_dtype_for("bf16", torch.device("cuda")) == torch.bfloat16
    assert train.autocast_dtype_for("fp32", torch.device("cuda")) is None


def test_native_bf16_probe_follows_torch_cpu_capabilities(monkeypatch):
    import harness.runtime as train

    for avx512_bf16, amx, expected in ((True, False, True), (False, True, True),
                                       (False, False, False)):
        monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda v=avx512_bf16: v)
        monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda v=amx: v)
        assert train.cpu_has_native_bf16() is expected
    monkeypatch.delattr(torch.cpu, "_is_avx512_bf16_supported")  # an older or other build
    monkeypatch.delattr(torch.cpu, "_is_amx_tile_supported")
    assert train.cpu_has_native_bf16() is False


def test_compile_mode_reaches_torch_compile(monkeypatch):
    import harness.step as train

    seen = []
    monkeypatch.setattr(torch, "compile", lambda module, mode=None: seen.append(mode) or module)
    cfg = _digits_cfg(compile=True, compile_mode="max-autotune-no-cudagraphs")
    config = {"arch": "preactresnet18", "act": {"name": "relu"}, "num_classes": 10,
              "in_channels": 1, "width": 0.0625, "mean": [0.0], "std": [1.0]}
    train.build_engine(cfg, config, torch.device("cpu"), None, False)
    assert seen == ["max-autotune-no-cudagraphs"]
    seen.clear()
    train.build_engine(_digits_cfg(compile=True), config, torch.device("cpu"), None, False)
    assert seen == [None]  # torch.compile's own default mode


def test_config_round_trips_through_dict():
    cfg = TrainConfig.from_dict({"act": "pswish", "beta": 4, "epochs": 7})
    assert TrainConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg


def test_batch_larger_than_training_set_is_bad_input_and_writes_nothing(tmp_path):
    cfg = _digits_cfg(batch_size=256)
    with pytest.raises(BadInput, match="larger than the training set"):
        run_training(cfg, tmp_path / "run", progress=False)
    assert not (tmp_path / "run").exists()


def test_a_validation_fraction_that_rounds_to_no_image_is_bad_input_and_writes_nothing(tmp_path):
    with pytest.raises(BadInput, match=r"val_fraction=0.0001 of 1438 training images leaves no "
                                       r"validation image; allowed: more than 0.5/1438"):
        run_training(_digits_cfg(val_fraction=1e-4, val_subset=None), tmp_path / "run",
                     progress=False)
    assert not (tmp_path / "run").exists()


def test_split_is_reproducible_and_recorded(tmp_path):
    cfg = _digits_cfg()
    a = load_run_data(cfg, torch.device("cpu"), False)
    b = load_run_data(cfg, torch.device("cpu"), False)
    for part in ("train", "val", "test"):
        assert (a.indices[part] == b.indices[part]).all()
    assert set(a.indices["train"]).isdisjoint(a.indices["val"])
    other = load_run_data(_digits_cfg(split_seed=1), torch.device("cpu"), False)
    assert set(other.indices["val"]) != set(a.indices["val"])


@pytest.fixture(scope="module")
def straight_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("straight")
    rows = run_training(_digits_cfg(save_every=2), out, progress=False)
    return out, rows


def test_run_directory_has_config_metrics_checkpoints_and_done(straight_run):
    out, rows = straight_run
    names = sorted(p.name for p in out.iterdir())
    assert names == [".lock", "DONE", "best.pt", "config.json", "epoch_0002.pt", "last.pt",
                     "metrics.jsonl"]  # .lock: the (released) lock of the training process
    record = json.loads((out / "config.json").read_text())
    assert record["train_config"]["act"] == "relu" and record["train_config"]["epochs"] == 3
    assert record["resolved"]["device"] == "cpu"
    assert record["resolved"]["precision"] == ("bf16" if cpu_has_native_bf16() else "fp32")
    assert len(record["data"]["val_indices_sha256"]) == 64
    assert {"torch", "python", "lowcurv"} <= set(record["versions"])
    expected = {"epoch", "lr", "train_seconds", "eval_seconds"} | {
        f"{p}_{s}_{m}" for p in ("train", "val", "test") for s in ("clean", "robust")
        for m in ("loss", "acc")}
    assert [r["epoch"] for r in read_metrics(out / "metrics.jsonl")] == [1, 2, 3]
    assert set(rows[0]) == expected
    assert [r["lr"] for r in rows] == [0.05, pytest.approx(0.005), pytest.approx(0.005)]
    best = load_checkpoint(out / "best.pt")
    assert best["metrics"]["val_robust_acc"] == max(r["val_robust_acc"] for r in rows)
    last = load_checkpoint(out / "last.pt")
    assert last["epoch"] == 3 and last["metrics"] == rows[-1]


def test_resume_reproduces_an_uninterrupted_run_exactly(straight_run, tmp_path):
    _, straight = straight_run
    out = tmp_path / "resumed"

    def crash_after_epoch_2(line):
        if line.startswith("epoch   2/"):
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run_training(_digits_cfg(save_every=2), out, progress=False, log=crash_after_epoch_2)
    assert load_checkpoint(out / "last.pt")["epoch"] == 2
    assert not (out / "DONE").exists()
    # a row written past the checkpoint (crash between the row and last.pt) is truncated
    with open(out / "metrics.jsonl", "a") as handle:
        handle.write(json.dumps({"epoch": 3, "lr": 9.0}) + "\n")
    with pytest.raises(BadInput, match="not empty"):
        run_training(_digits_cfg(save_every=2), out, progress=False)
    with pytest.raises(BadInput, match="differs"):
        run_training(_digits_cfg(save_every=2, lr=0.1), out, resume=True, progress=False)
    resumed = run_training(_digits_cfg(save_every=2), out, resume=True, progress=False)
    on_disk = read_metrics(out / "metrics.jsonl")
    assert [r["epoch"] for r in on_disk] == [1, 2, 3]
    assert _without_timings(on_disk) == _without_timings(straight)
    assert _without_timings(resumed) == _without_timings(straight)
    assert (out / "DONE").exists()


def test_nan_run_stops_with_message_and_keeps_last_good_checkpoints(tmp_path):
    # epoch 1 at lr 0.05, then the milestone multiplies it by 2e7: lr 1e6 diverges in epoch 2
    cfg = _digits_cfg(lr_milestones=[1.0], lr_gamma=2e7, epochs=3, train_subset=200)
    out = tmp_path / "nan"
    with pytest.raises(TrainingDiverged, match="non-finite training loss in epoch 2") as err:
        run_training(cfg, out, progress=False)
    assert "\n" not in str(err.value)
    assert [r["epoch"] for r in read_metrics(out / "metrics.jsonl")] == [1]
    assert load_checkpoint(out / "last.pt")["epoch"] == 1
    assert load_checkpoint(out / "best.pt")["epoch"] == 1
    assert not (out / "DONE").exists()
    model_state = load_checkpoint(out / "last.pt")["model"]
    assert all(torch.isfinite(v).all() for v in model_state.values() if v.is_floating_point())


def test_overwrite_starts_over(straight_run, tmp_path):
    out = tmp_path / "over"
    run_training(_digits_cfg(epochs=1), out, progress=False)
    (out / "epoch_0009.pt").write_bytes(b"stale")
    rows = run_training(_digits_cfg(epochs=1), out, overwrite=True, progress=False)
    assert len(rows) == 1 and not (out / "epoch_0009.pt").exists()


@pytest.mark.slow
def test_tiny_cifar10_jpeg_run_beats_chance_under_attack(cifar10_jpg, tmp_path):
    # 640 images, width 1/8, PGD-2 training at eps 8/255, 3 epochs of 20 steps: on this CPU
    # (seeds 0 and 1) test robust accuracy under PGD-3 reached 16% on 300 test images, where
    # chance is 10% +- 1.7% (one standard deviation).
    cfg = TrainConfig.from_dict(dict(
        dataset=f"imagefolder:{cifar10_jpg}", width=0.125, epochs=3, batch_size=32,
        train_subset=640, val_subset=50, test_subset=300, train_steps=2, eval_steps=3,
        eps_255=8, alpha_255=5, lr=0.05, lr_milestones=[2.5], eval_batch_size=350))
    rows = run_training(cfg, tmp_path / "cifar", progress=False)
    last = rows[-1]
    print("tiny cifar10-jpg run:", {k: round(v, 3) for k, v in last.items()})
    assert last["test_robust_acc"] > 0.13
    assert last["test_clean_acc"] >= last["test_robust_acc"]


def test_resume_says_when_auto_precision_resolves_differently(tmp_path, monkeypatch):
    import harness.runtime as train

    monkeypatch.setattr(train, "cpu_has_native_bf16", lambda: False)
    run_training(_digits_cfg(epochs=1), tmp_path, progress=False)
    assert load_checkpoint(tmp_path / "last.pt")["precision"] == "fp32"
    monkeypatch.setattr(train, "cpu_has_native_bf16", lambda: True)  # e.g. another node
    lines = []
    run_training(_digits_cfg(epochs=2), tmp_path, resume=True, progress=False, log=lines.append)
    change = [{"epoch": 1, "from": "fp32", "to": "bf16"}]
    resolved = json.loads((tmp_path / "config.json").read_text())["resolved"]
    assert resolved["precision"] == "bf16" and resolved["precision_changes"] == change
    assert any(line.startswith("note: epochs 1-1 ran in fp32; resumed in bf16") for line in lines)
    ckpt = load_checkpoint(tmp_path / "last.pt")
    assert ckpt["precision"] == "bf16" and ckpt["precision_changes"] == change
    # resumed again in the same precision: no new note, the history is kept
    lines.clear()
    run_training(_digits_cfg(epochs=3), tmp_path, resume=True, progress=False, log=lines.append)
    resolved = json.loads((tmp_path / "config.json").read_text())["resolved"]
    assert resolved["precision_changes"] == change
    assert not any(line.startswith("note:") for line in lines)


def test_a_run_in_one_precision_records_no_precision_changes(straight_run):
    out, _ = straight_run
    assert "precision_changes" not in json.loads((out / "config.json").read_text())["resolved"]
    assert load_checkpoint(out / "last.pt")["precision_changes"] == []


def test_resume_refuses_new_epochs_that_move_an_auto_milestone_already_passed(tmp_path):
    auto = dict(lr_milestones=None, precision="fp32")
    run_training(_digits_cfg(epochs=2, **auto), tmp_path / "a", progress=False)  # milestones 1, 1.5
    before = (tmp_path / "a" / "metrics.jsonl").read_bytes()
    with pytest.raises(BadInput, match=r"epochs=4 moves the auto learning-rate milestones to "
                                       r"\[2.0, 3.0\].*passed \[1.0, 1.5\]"):
        run_training(_digits_cfg(epochs=4, **auto), tmp_path / "a", resume=True, progress=False)
    assert (tmp_path / "a" / "metrics.jsonl").read_bytes() == before
    # one epoch of eight (milestones 4, 6) is before both old and new milestones (5, 7.5): fine

    def stop_after(epoch):
        def log(line):
            if line.startswith(f"epoch {epoch:3d}/"):
                raise KeyboardInterrupt
        return log

    with pytest.raises(KeyboardInterrupt):
        run_training(_digits_cfg(epochs=8, **auto), tmp_path / "b", progress=False,
                     log=stop_after(1))
    with pytest.raises(KeyboardInterrupt):
        run_training(_digits_cfg(epochs=10, **auto), tmp_path / "b", resume=True,
                     progress=False, log=stop_after(2))
    assert load_checkpoint(tmp_path / "b" / "last.pt")["epoch"] == 2
    resolved = json.loads((tmp_path / "b" / "config.json").read_text())["resolved"]
    assert resolved["lr_milestones"] == [5.0, 7.5]


def test_seeds_up_to_two_to_the_63_minus_one_are_accepted():
    cfg = TrainConfig.from_dict({"seed": 2**63 - 1, "split_seed": 2**63 - 1})
    torch.Generator().manual_seed(cfg.seed)  # what the run does with it: no overflow


@pytest.mark.parametrize("name", ["meta", "xla", "cuda:x"])
def test_devices_the_harness_cannot_run_on_are_refused_by_name(name):
    from harness.runtime import resolve_device

    with pytest.raises(BadInput, match=rf"device='{name}'.*allowed: auto, cpu, cuda, cuda:N"):
        resolve_device(name)


def test_a_validation_fraction_leaving_no_training_image_names_val_fraction(tmp_path):
    with pytest.raises(BadInput, match=r"val_fraction=0.9999 of 1438 training images leaves no "
                                       r"training image"):
        run_training(_digits_cfg(val_fraction=0.9999, val_subset=None, train_subset=None),
                     tmp_path / "run", progress=False)
    assert not (tmp_path / "run").exists()


def test_resume_refuses_fewer_epochs_than_the_run_has_trained(straight_run, tmp_path):
    import shutil

    out = tmp_path / "run"
    shutil.copytree(straight_run[0], out)
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    with pytest.raises(BadInput, match=r"epochs=2 is fewer than the 3 epochs the run has "
                                       r"trained; allowed: epochs >= 3"):
        run_training(_digits_cfg(epochs=2, save_every=2), out, resume=True, progress=False)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before  # DONE still says 3


def test_eval_every_skips_evaluation_but_not_a_bit_of_training(tmp_path):
    """--eval-every 2 over 3 epochs evaluates epochs 2 and 3 (the last always), picks best.pt
    among them, and trains the same weights as evaluating every epoch."""
    from harness.checkpoint import load_checkpoint
    from harness.train import run_training

    settings = dict(dataset="digits", width=0.0625, epochs=3, batch_size=50, train_subset=100,
                    val_subset=20, test_subset=20, train_steps=1, eval_steps=1, eps_255=16,
                    alpha_255=8, lr_milestones=[2.0], device="cpu", precision="fp32")
    every = run_training(TrainConfig.from_dict(settings), tmp_path / "every", progress=False)
    sparse = run_training(TrainConfig.from_dict(settings | {"eval_every": 2}),
                          tmp_path / "sparse", progress=False)
    assert [("val_robust_acc" in r, r.get("evaluated", True)) for r in sparse] == [
        (False, False), (True, True), (True, True)]
    for a, b in zip(every, sparse, strict=True):
        for key in ("train_robust_loss", "train_clean_loss", "train_robust_acc", "lr"):
            assert a[key] == b[key]
    for key in ("val_robust_acc", "test_robust_acc", "test_clean_loss"):
        assert every[1][key] == sparse[1][key] and every[2][key] == sparse[2][key]
    last_every = load_checkpoint(tmp_path / "every" / "last.pt")["model"]
    last_sparse = load_checkpoint(tmp_path / "sparse" / "last.pt")["model"]
    assert all(torch.equal(last_every[k], last_sparse[k]) for k in last_every)
    best = load_checkpoint(tmp_path / "sparse" / "best.pt")
    assert best["epoch"] in (2, 3)
    assert best["metrics"]["val_robust_acc"] == max(r["val_robust_acc"] for r in sparse[1:])
