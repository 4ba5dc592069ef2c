"""bench/full_test_hessian.py at a tiny size on CPU (digits, width 1/16): per-image values with
bounds and flags, the timing fields, and the same numbers as the library."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench import full_test_hessian  # noqa: E402
from curvtools.spectra import input_hessian_eigenvalues  # noqa: E402


def test_full_test_hessian_writes_every_image_with_bounds_and_matches_the_library(tmp_path):
    out = tmp_path / "full.json"
    args = ["--data", "digits", "--n", "10", "--width", "0.0625", "--train-steps", "3",
            "--train-images", "300", "--batch", "4", "--device", "cpu", "--json", str(out)]
    body = full_test_hessian.main(args)
    assert json.loads(out.read_text())["images_per_second"] == body["images_per_second"]
    assert body["images"] and len(body["images"]) == 10 and body["complete"]
    assert body["settings"]["dtype"] == "float64" and body["device"] == "cpu"
    assert body["images_per_second"] > 0 and body["hvps_computed"] > 0
    for key in ("date_utc", "device_name", "net", "summary"):
        assert body[key]
    for rec in body["images"]:
        assert rec["lambda_min"] <= rec["lambda_max"] <= rec["lambda_max_upper"]
        assert rec["lambda_max_bound"] >= 0 and rec["lambda_min_bound"] >= 0
        assert rec["lambda_min_lower"] <= rec["lambda_min"]
        assert isinstance(rec["converged"], bool) and isinstance(rec["limited"], bool)
    assert body["summary"]["n"] == 10
    assert body["summary"]["share_converged"] == np.mean([r["converged"] for r in body["images"]])
    # the same numbers as one library call on the first batch (same seed, same images)
    ns = full_test_hessian.argparse.Namespace(
        data="digits", data_dir=None, n=10, width=0.0625, act="silu", train_steps=3,
        train_images=300, seed=0)
    model, x, y, _, _ = full_test_hessian.fresh_model(ns, torch.device("cpu"))
    direct = input_hessian_eigenvalues(model, x[:4], y[:4], which=("max", "min"), tol=1e-3,
                                       max_iter=100, seed=0)
    got = np.array([r["lambda_max"] for r in body["images"][:4]])
    np.testing.assert_allclose(got, direct.lambda_max.numpy(), rtol=1e-12)


def test_full_test_hessian_stops_starting_batches_at_its_time_limit(tmp_path):
    body = full_test_hessian.main(["--data", "digits", "--n", "8", "--width", "0.0625",
                                   "--train-steps", "0", "--batch", "2", "--device", "cpu",
                                   "--limit-s", "1e-9"])
    # the first batch always runs (nothing measured yet); the second would not fit
    assert not body["complete"] and len(body["images"]) == 2
