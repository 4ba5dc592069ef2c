"""Smoke tests of the benchmark code (bench/) at tiny sizes: it runs and reports its keys.

The numbers themselves are measured by ``python -m bench.run_all`` and ``bench/gpu_run.sh``;
here only the machinery is checked, plus the one property the comparison rests on: the
reference attack computes weight gradients and ours does not.
"""

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # bench/ is a folder of scripts, not an installed package
    sys.path.insert(0, str(ROOT))

from bench import cold_start, gpu_speed, reference_loop, run_all  # noqa: E402
from bench.eval_throughput import ours_eval_throughput, reference_eval_throughput  # noqa: E402
from bench.train_throughput import bench_images, compare_train_throughput  # noqa: E402

WIDTH = 1 / 16


@pytest.fixture(autouse=True)
def _one_thread():
    # The machine is shared: two OpenMP threads spinning against other jobs make these tiny
    # convolutions ten times slower than one thread.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def images():
    return bench_images(12, synthetic=True)


def test_reference_attack_computes_weight_gradients_and_ours_does_not(images):
    from harness.attacks import pgd

    x_u8, y, _ = images
    x = x_u8[:4].float() / 255
    y = torch.as_tensor(y[:4])
    model = reference_loop.reference_model(WIDTH)
    normalize = reference_loop.Normalizer("cpu")
    delta = reference_loop.attack_pgd(model, normalize, x, y, 8 / 255, 2 / 255, 2, 1)
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in model.parameters())
    assert delta.abs().max() <= 8 / 255 + 1e-7
    assert ((x + delta) >= 0).all() and ((x + delta) <= 1).all()

    from harness.models import build_model, model_config
    ours = build_model(model_config(width=WIDTH))
    pgd(ours, x, y, eps=8 / 255, alpha=2 / 255, steps=2, bn_mode="train")
    assert all(p.grad is None for p in ours.parameters())


def test_reference_batches_pad_crop_flip_keep_images_in_range(images):
    x_u8, y, _ = images
    batches = reference_loop.ReferenceBatches(x_u8, y, batch_size=4, num_workers=0)
    x, labels = next(iter(batches))
    assert x.shape == (4, 3, 32, 32) and x.dtype == torch.float32
    assert labels.dtype == torch.int64 and 0 <= x.min() and x.max() <= 1


def test_train_throughput_reports_both_loops_and_their_ratio(images):
    x_u8, y, _ = images
    result = compare_train_throughput(x_u8, y, width=WIDTH, batch_size=4, steps=1, repeats=2,
                                      warmup_steps=1, num_workers=0)
    for side in ("ours", "reference"):
        rate = result[side]["images_per_s"]
        assert rate["repeats"] == 2 and rate["median"] > 0 and rate["min"] <= rate["max"]
    assert result["ratio"] == pytest.approx(result["ours"]["images_per_s"]["median"]
                                            / result["reference"]["images_per_s"]["median"])
    assert result["ours"]["settings"]["loop"] == "harness.step.train_one_epoch"


def test_selection_fold_bench_times_both_variants(images):
    from bench.train_throughput import compare_selection_fold

    x_u8, y, _ = images
    result = compare_selection_fold(x_u8, y, width=WIDTH, batch_size=4, steps=1, repeats=2)
    assert result["folded"]["images_per_s"]["repeats"] == 2
    assert result["unfolded"]["images_per_s"]["repeats"] == 2
    assert result["ratio"] == pytest.approx(result["folded"]["images_per_s"]["median"]
                                            / result["unfolded"]["images_per_s"]["median"])
    assert len(result["ratio_per_pair"]) == 2


def test_eval_throughput_reports_images_per_second(images):
    x_u8, y, _ = images
    ours = ours_eval_throughput(x_u8[:2], y[:2], width=WIDTH, steps=2, restarts=1, repeats=1)
    ref = reference_eval_throughput(x_u8[:2], y[:2], width=WIDTH, steps=2, restarts=1,
                                    repeats=1, num_workers=0)
    assert ours["images_per_s"]["median"] > 0 and ref["images_per_s"]["median"] > 0
    assert 0 <= ours["robust_acc"] <= 1


def test_time_command_takes_the_median_and_raises_on_a_failing_command():
    out = cold_start.time_command([sys.executable, "-c", "pass"], repeats=2)
    assert out["seconds"]["repeats"] == 2 and out["seconds"]["median"] > 0
    with pytest.raises(RuntimeError, match="exited 3"):
        cold_start.time_command([sys.executable, "-c", "import sys; sys.exit(3)"], repeats=1)


def test_a_failing_part_is_recorded_and_the_json_keeps_earlier_parts(tmp_path):
    path = tmp_path / "bench.json"
    results = {"parts": {}}
    run_all.run_part(results, "first", lambda: {"value": 1}, path)

    def broken():
        raise ValueError("boom")

    run_all.run_part(results, "second", broken, path)
    saved = json.loads(path.read_text())
    assert saved["parts"]["first"]["value"] == 1
    assert "ValueError: boom" in saved["parts"]["second"]["error"]


def test_gpu_speed_skips_a_part_when_the_budget_is_spent_and_still_prints_a_table(tmp_path):
    results = gpu_speed.Results(tmp_path / "gpu_speed.json")
    budget = gpu_speed.Budget(5.0)
    results.run("env", 0.0, budget, lambda: gpu_speed.env_part(torch.device("cpu"),
                                                                gpu_speed.Sizes.tiny()))
    results.run("reference", 1e9, budget, lambda: {"never": "run"})
    saved = json.loads((tmp_path / "gpu_speed.json").read_text())
    assert saved["parts"]["env"]["matmul_flops_measured"] > 0
    assert "time budget" in saved["parts"]["reference"]["skipped"]
    assert "GPU speed summary" in gpu_speed.table(results)


def test_gpu_speed_flop_count_shows_the_reference_step_costs_more(images):
    x_u8, y, _ = images
    sizes = gpu_speed.Sizes.tiny()
    sizes.batch = 4
    out = gpu_speed.flops_part(torch.device("cpu"), sizes, x_u8, np.asarray(y))
    # weight gradients in 10 attack steps: about 1.4x the FLOPs (PROTOCOL.md says ~45% more)
    assert 1.25 < out["reference_over_ours"] < 1.6


def test_equality_verdict_compares_precision_gap_with_seed_spread():
    runs = {"fp32_seed0": {"test_clean_acc": 0.50, "test_robust_acc": 0.30},
            "bf16_seed0": {"test_clean_acc": 0.51, "test_robust_acc": 0.20},
            "fp16_seed0": {"test_clean_acc": 0.49, "test_robust_acc": 0.31},
            "fp32_seed1": {"test_clean_acc": 0.53, "test_robust_acc": 0.31},
            "bf16_seed1": {"skipped": "time budget"},
            "fp16_seed1": {"test_clean_acc": 0.56, "test_robust_acc": 0.32}}
    verdict = gpu_speed._equality_verdict(runs, ("fp32", "bf16", "fp16"))
    assert verdict["test_clean_acc_bf16_within_spread"] is True
    assert verdict["test_robust_acc_bf16_within_spread"] is False
    assert verdict["test_robust_acc_fp32_vs_bf16"] == pytest.approx(0.10)
    # spread: the largest |seed0 - seed1| of any precision (fp16 clean: 0.07)
    assert verdict["test_clean_acc_seed_spread"] == pytest.approx(0.07)
    assert verdict["test_clean_acc_fp32_vs_fp16"] == pytest.approx(0.03)
    assert verdict["test_robust_acc_fp16_within_spread"] is True


def test_kernel_kinds_count_cudnn_batchnorm_as_batchnorm_not_convolution():
    # kernel names from the H200 profiles (docs/benchmarks.md)
    kind = gpu_speed.kernel_kind
    assert kind("void cudnn::batchnorm_bwtr_nhwc_semiPersist<__half, float, __half, 512>") == \
        "batchnorm"
    assert kind("void at::native::batch_norm_collect_statistics_channels_last_kernel") == \
        "batchnorm"
    assert kind("void cudnn::bn_fw_tr_1C11_kernel_NCHW<__half, float>") == "batchnorm"
    assert kind("sm90_xmma_fprop_implicit_gemm_f16f16_f16f32_f32_nhwckrsc_nhwc") == "convolution"
    assert kind("void cudnn::engines_precompiled::nhwcToNchwKernel<__half>") == "convolution"
    assert kind("aten::convolution_backward") == "convolution"
    assert kind("void at::native::vectorized_elementwise_kernel<8, CUDAFunctor_add>") == "other"


def test_gpu_speed_profile_part_accounts_for_the_step_time(images):
    """The profile part lists operators by time; conv + BatchNorm shares are fractions and the
    top entries are the convolution kernels a PreActResNet step is made of."""
    sizes = gpu_speed.Sizes.tiny()
    x, y, _ = images
    out = gpu_speed.profile_part(torch.device("cpu"), sizes, x, y, steps=2, top=5)
    assert out["total_ms_per_step"] > 0 and len(out["top"]) == 5
    assert 0 < out["share_convolution"] < 1 and 0 < out["share_batchnorm"] < 1
    assert any("conv" in t["op"] for t in out["top"][:3])
    results = gpu_speed.Results(Path("/nonexistent/never_written.json"))
    results.data["parts"]["profile"] = out
    assert "profile (eager step)" in gpu_speed.table(results)


def test_attack_precision_bench_reports_agreement_with_fp32_per_mode_and_variant():
    from bench.attack_precision import compare_attack_precisions

    out = compare_attack_precisions(n=16, width=0.0625, train_steps=2, steps=2)
    for mode in ("eval", "train"):
        assert set(out[mode]) == {"fp32", "bf16", "fp16", "fp16_per_example"}
        assert out[mode]["fp32"]["equal_to_fp32"] == 1.0
        assert all(0.0 <= v["robust_acc"] <= 1.0 for v in out[mode].values())
    # eval mode couples no examples: the per-example baseline is the same attack
    assert out["eval"]["fp16_per_example"] == out["eval"]["fp16"]


def test_attack_precision_short_runs_report_final_accuracies_and_restore_the_attack(
        tmp_path, monkeypatch):
    import harness.attacks.pgd_attack as attacks
    from bench import attack_precision

    monkeypatch.setattr(attack_precision, "RUN_SETTINGS", attack_precision.RUN_SETTINGS | {
        "epochs": 1, "train_subset": 64, "val_subset": 20, "test_subset": 20, "eval_steps": 1,
        "train_steps": 1})
    before = attacks.uses_batch_statistics
    rows = list(attack_precision.short_runs("fp16_per_example", tmp_path, seeds=(0,)))
    assert attacks.uses_batch_statistics is before
    assert [r["seed"] for r in rows] == [0]
    assert 0 <= rows[0]["test_robust_acc"] <= rows[0]["test_clean_acc"] <= 1
