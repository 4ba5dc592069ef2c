"""Per-example input-Hessian spectra of tiny nets against dense torch.func.hessian and scipy."""

import numpy as np
import pytest
import torch
import torch.nn as nn

from curvtools.activations import resolve
from curvtools.errors import BadInput
from curvtools.hvp import batched_input_hvp, per_example_objective
from curvtools.spectra import input_hessian_eigenvalues

F64 = torch.float64
SMOOTH = ["silu", "gelu", "mish", "lisht", "pswish", "softplus", "tanh"]
CLASSES = 5


def tiny_conv_net(act: str, channels: int = 2, size: int = 4, seed: int = 0) -> nn.Module:
    """conv -> BN -> act -> linear -> act -> linear, in eval mode, non-trivial BN statistics."""
    torch.manual_seed(seed)
    net = nn.Sequential(
        nn.Conv2d(channels, 4, 3, padding=1), nn.BatchNorm2d(4), resolve(act).module(),
        nn.Flatten(), nn.Linear(4 * size * size, 8), resolve(act).module(), nn.Linear(8, CLASSES),
    )
    with torch.no_grad():
        net[1].running_mean.uniform_(-0.5, 0.5)
        net[1].running_var.uniform_(0.5, 2.0)
    return net.eval()


def batch(n: int = 3, channels: int = 2, size: int = 4, dtype=F64, seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(n, channels, size, size, generator=g, dtype=dtype)
    y = torch.randint(0, CLASSES, (n,), generator=g)
    return x, y


def dense_hessian(model, x1, y1, function="ce") -> torch.Tensor:
    """The slow, obvious path: torch.func.hessian of one example's objective, [n, n]."""
    model = model.double()
    f = per_example_objective(model, x1[None].double(), y1[None], function)
    shape = x1.shape
    return torch.func.hessian(lambda z: f(z.reshape(1, *shape)).sum())(x1.double().reshape(-1))


@pytest.mark.parametrize(("act", "function"), [(a, "ce") for a in SMOOTH + ["relu"]]
                         + [("silu", "margin"), ("relu", "margin")])
def test_lanczos_matches_dense_eigvalsh_max_min_and_top3(act, function):
    model = tiny_conv_net(act)
    x, y = batch(2)
    res = input_hessian_eigenvalues(model, x, y, function=function, k=3, tol=1e-10, max_iter=32,
                                    dtype=F64)
    for i in range(x.shape[0]):
        ev = torch.linalg.eigvalsh(dense_hessian(model, x[i], y[i], function))
        # Distinct eigenvalues: a ReLU net's margin Hessian is 0 and its CE Hessian has repeated
        # zeros, so compare top-3 only where they are well separated.
        scale = float(ev.detach().abs().max().clamp_min(1e-12))
        torch.testing.assert_close(res.lambda_max[i], ev[-1], rtol=1e-4, atol=1e-10 * scale)
        torch.testing.assert_close(res.lambda_min[i], ev[0], rtol=1e-4, atol=1e-10 * scale)
        if act != "relu":
            torch.testing.assert_close(res.top_k[i], ev.flip(0)[:3], rtol=1e-4, atol=0)
    assert res.converged.all()
    assert not torch.isnan(res.top_k[:, 0]).any()


def test_relu_ce_hessian_is_gauss_newton_of_rank_below_classes_and_lanczos_handles_breakdown():
    model = tiny_conv_net("relu").double()
    x, y = batch(4)
    res = input_hessian_eigenvalues(model, x, y, k=CLASSES - 1, tol=1e-10, max_iter=32,
                                    dtype=F64, check_every=1)
    for i in range(4):
        h = dense_hessian(model, x[i], y[i])
        jac = torch.func.jacrev(lambda z: model(z.reshape(1, 2, 4, 4))[0])(x[i].reshape(-1))
        p = torch.softmax(model(x[i][None])[0], dim=0)
        gauss_newton = jac.T @ (torch.diag(p) - torch.outer(p, p)) @ jac
        torch.testing.assert_close(h, gauss_newton, rtol=1e-9, atol=1e-12)
        ev = torch.linalg.eigvalsh(h)
        assert int((ev.abs() > 1e-10 * ev.abs().max()).sum()) <= CLASSES - 1
        assert ev[0] > -1e-10 * ev[-1]  # positive semi-definite
        torch.testing.assert_close(res.top_k[i], ev.flip(0)[: CLASSES - 1], rtol=1e-4, atol=1e-12)
    assert not torch.isnan(res.top_k).any() and not torch.isnan(res.residual).any()
    # Rank <= classes - 1 plus the null component: breakdown by iteration `classes`.
    assert (res.iterations <= CLASSES).all() and res.converged.all()


def test_lanczos_agrees_with_scipy_eigsh_on_a_mid_sized_input():
    from scipy.sparse.linalg import LinearOperator, eigsh

    model = tiny_conv_net("gelu", channels=3, size=16, seed=2)
    x, y = batch(1, channels=3, size=16, seed=3)
    # Ritz values err by about residual^2 / gap, so tol 1e-6 gives far better than 1e-6.
    res = input_hessian_eigenvalues(model, x, y, tol=1e-6, max_iter=200, dtype=F64)
    n = 3 * 16 * 16
    hvp = batched_input_hvp(model, x, y, dtype=F64)

    def matvec(v):
        return hvp(torch.from_numpy(np.asarray(v, dtype=np.float64).reshape(1, n)))[0].numpy()

    op = LinearOperator((n, n), matvec=matvec, dtype=np.float64)
    v0 = np.random.default_rng(0).standard_normal(n)
    top = eigsh(op, k=1, which="LA", tol=1e-8, v0=v0)[0][0]
    bottom = eigsh(op, k=1, which="SA", tol=1e-8, v0=v0)[0][0]
    assert res.lambda_max[0].item() == pytest.approx(top, rel=1e-6)
    assert res.lambda_min[0].item() == pytest.approx(bottom, rel=1e-6)
    assert res.converged.all()


def test_batched_results_equal_one_example_at_a_time():
    model = tiny_conv_net("silu")
    x, y = batch(3)
    together = input_hessian_eigenvalues(model, x, y, k=2, tol=1e-10, max_iter=32, dtype=F64)
    for i in (0, 2):
        alone = input_hessian_eigenvalues(model, x[i : i + 1], y[i : i + 1], k=2, tol=1e-10,
                                          max_iter=32, dtype=F64)
        torch.testing.assert_close(together.top_k[i], alone.top_k[0], rtol=1e-9, atol=0)
        torch.testing.assert_close(together.lambda_min[i], alone.lambda_min[0], rtol=1e-9, atol=0)


def test_hvp_is_block_diagonal_over_the_batch_in_eval_mode():
    model = tiny_conv_net("mish").train()  # the helper must switch to eval itself
    x, y = batch(3)
    hvp = batched_input_hvp(model, x, y, dtype=F64)
    v = torch.randn(3, 32, dtype=F64)
    only_first = v.clone()
    only_first[1:] = 0
    hv, hv1 = hvp(v), hvp(only_first)
    torch.testing.assert_close(hv1[0], hv[0], rtol=1e-12, atol=1e-14)  # i=0 ignores j=1,2
    assert torch.equal(hv1[1:], torch.zeros_like(hv1[1:]))
    dense0 = dense_hessian(model.eval(), x[0], y[0])
    torch.testing.assert_close(hv[0], dense0 @ v[0], rtol=1e-10, atol=1e-12)
    assert model.training is False  # dense_hessian put it in eval; the hvp restores modes


def test_model_mode_and_dtype_are_restored_and_float32_agrees_with_float64():
    model = tiny_conv_net("softplus").float().train()
    x, y = batch(3, dtype=torch.float32)
    r32 = input_hessian_eigenvalues(model, x, y, tol=1e-5, max_iter=32, dtype=torch.float32)
    r64 = input_hessian_eigenvalues(model, x, y, tol=1e-10, max_iter=32, dtype=F64)
    assert model.training and next(model.parameters()).dtype == torch.float32
    torch.testing.assert_close(r32.lambda_max, r64.lambda_max, rtol=1e-3, atol=0)
    torch.testing.assert_close(r32.lambda_min, r64.lambda_min, rtol=1e-3, atol=0)


def test_margin_holds_the_runner_up_fixed_and_neg_margin_negates_the_spectrum():
    model = tiny_conv_net("tanh")
    x, y = batch(2)
    m = input_hessian_eigenvalues(model, x, y, function="margin", tol=1e-10, max_iter=32,
                                  dtype=F64)
    neg = input_hessian_eigenvalues(model, x, y, function="neg_margin", tol=1e-10, max_iter=32,
                                    dtype=F64)
    torch.testing.assert_close(neg.lambda_max, -m.lambda_min, rtol=1e-8, atol=0)
    torch.testing.assert_close(neg.lambda_min, -m.lambda_max, rtol=1e-8, atol=0)
    model = model.double()
    for i in range(2):
        z = model(x[i][None])[0].detach()
        other = int(torch.where(torch.arange(CLASSES) == y[i], -torch.inf, z).argmax())
        def margin(u, label=int(y[i]), other=other):
            out = model(u.reshape(1, 2, 4, 4))[0]
            return out[label] - out[other]

        top = torch.linalg.eigvalsh(torch.func.hessian(margin)(x[i].reshape(-1)))[-1]
        assert m.lambda_max[i].item() == pytest.approx(top.item(), rel=1e-8)


@pytest.mark.parametrize("kwargs", [{"function": "mse"}, {"dtype": torch.bfloat16}, {"k": 0},
                                    {"tol": -1.0}, {"max_iter": 0}, {"which": ("min",)}])
def test_bad_arguments_raise_bad_input(kwargs):
    model = tiny_conv_net("relu")
    x, y = batch(1, dtype=torch.float32)
    with pytest.raises(BadInput):
        input_hessian_eigenvalues(model, x, y, **kwargs)


# --- compaction, the eigenvalue stop rule, rev-rev products, TF32 -------------------------------


@pytest.mark.parametrize("function", ["ce", "margin"])
def test_products_of_a_subset_of_rows_do_not_depend_on_the_other_rows(function):
    # What compaction relies on: restrict(rows) gives the same products for those rows (eval
    # mode: example i's product depends on x_i alone); the runner-ups are indexed, not redone.
    model = tiny_conv_net("gelu")
    x, y = batch(5)
    rows = torch.tensor([0, 3, 4])
    v = torch.randn(5, 32, dtype=F64, generator=torch.Generator().manual_seed(0))
    for mode in ("fwd-rev", "rev-rev"):
        hvp = batched_input_hvp(model, x, y, function=function, dtype=F64, hvp_mode=mode)
        sub = hvp.restrict(rows)
        torch.testing.assert_close(sub(v[rows]), hvp(v)[rows], rtol=1e-12, atol=1e-14)
        if function == "margin":
            assert torch.equal(sub.op.other, hvp.op.other[rows])


@pytest.mark.parametrize("act", ["silu", "relu"])
def test_rev_rev_products_equal_the_dense_hessian_and_forward_over_reverse(act):
    model = tiny_conv_net(act)
    x, y = batch(3)
    v = torch.randn(3, 32, dtype=F64, generator=torch.Generator().manual_seed(1))
    rev = batched_input_hvp(model, x, y, dtype=F64, hvp_mode="rev-rev")
    fwd = batched_input_hvp(model, x, y, dtype=F64, hvp_mode="fwd-rev")
    hv = rev(v)
    torch.testing.assert_close(hv, fwd(v), rtol=1e-10, atol=1e-14)
    torch.testing.assert_close(rev(2 * v), 2 * hv, rtol=1e-12, atol=1e-14)  # graph reused
    for i in range(3):
        torch.testing.assert_close(hv[i], dense_hessian(model, x[i], y[i]) @ v[i], rtol=1e-10,
                                   atol=1e-14)


def test_compaction_does_not_change_the_eigenvalues_of_a_net():
    model = tiny_conv_net("mish")
    x, y = batch(6)
    runs = {c: input_hessian_eigenvalues(model, x, y, dtype=F64, tol=1e-6, k=2, compact=c,
                                         check_every=1) for c in (True, False)}
    on, off = runs[True], runs[False]
    assert len(set(on.iterations.tolist())) > 1
    for field in ("top_k", "lambda_min", "residual", "error_estimate"):
        torch.testing.assert_close(getattr(on, field), getattr(off, field), rtol=1e-12,
                                   atol=1e-12)
    assert torch.equal(on.iterations, off.iterations)
    assert on.hvps_computed == int(on.iterations.sum()) < off.hvps_computed


@pytest.mark.parametrize("act", ["silu", "gelu", "mish", "lisht", "softplus", "tanh", "relu"])
def test_default_eigenvalue_stop_reaches_tol_against_dense_eigvalsh(act):
    # At tol 1e-2 the rule missed gelu's lambda_min of example 1 by 1.5e-2 (its true gap,
    # 3% of |lambda_min|, is hidden between the two lowest Ritz values early on: the caveat in
    # curvtools.lanczos); at 1e-3 every pair below is within tol.
    tol = 1e-3
    model = tiny_conv_net(act, seed=3)
    x, y = batch(4, seed=4)
    res = input_hessian_eigenvalues(model, x, y, dtype=F64, tol=tol)
    res_min = input_hessian_eigenvalues(model, x, y, dtype=F64, tol=tol, which=("max", "min"))
    for i in range(4):
        ev = torch.linalg.eigvalsh(dense_hessian(model, x[i], y[i]))
        assert abs(res.lambda_max[i] - ev[-1]) <= tol * abs(ev[-1])
        assert abs(res_min.lambda_max[i] - ev[-1]) <= tol * abs(ev[-1])
        if act != "relu":  # relu: lambda_min is 0 up to rounding, no relative accuracy
            assert abs(res_min.lambda_min[i] - ev[0]) <= tol * abs(ev[0])
    assert res.converged.all() and (res.error_estimate <= tol).all()


def test_hvp_runs_with_tf32_off_and_restores_the_flags_even_after_an_error():
    from curvtools.hvp import full_fp32_precision

    before = (torch.backends.cudnn.allow_tf32, torch.get_float32_matmul_precision())
    try:
        torch.backends.cudnn.allow_tf32 = True
        torch.set_float32_matmul_precision("high")  # TF32 matmuls allowed
        seen = []
        with full_fp32_precision():
            seen.append((torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32,
                         torch.get_float32_matmul_precision()))
        assert seen == [(False, False, "highest")]
        assert torch.backends.cudnn.allow_tf32 and torch.backends.cuda.matmul.allow_tf32
        assert torch.get_float32_matmul_precision() == "high"
        with pytest.raises(ZeroDivisionError), full_fp32_precision():
            _ = 1 / 0
        assert torch.backends.cudnn.allow_tf32 and torch.get_float32_matmul_precision() == "high"
        # And the HVP itself runs inside it: a matvec that records the flags.
        model = tiny_conv_net("silu")
        x, y = batch(1, dtype=torch.float32)
        flags = []
        hook = model[0].register_forward_hook(lambda *a: flags.append(
            (torch.backends.cudnn.allow_tf32, torch.get_float32_matmul_precision())))
        for mode in ("fwd-rev", "rev-rev"):
            batched_input_hvp(model, x, y, hvp_mode=mode)(torch.ones(1, 32))
        hook.remove()
        assert flags and all(f == (False, "highest") for f in flags)
        assert torch.backends.cudnn.allow_tf32 and torch.get_float32_matmul_precision() == "high"
    finally:
        torch.backends.cudnn.allow_tf32 = before[0]
        torch.set_float32_matmul_precision(before[1])


@pytest.mark.parametrize("kwargs", [{"stop": "change"}, {"hvp_mode": "fwd-fwd"},
                                    {"check_every": 0}])
def test_bad_stop_mode_and_check_arguments_raise_bad_input(kwargs):
    model = tiny_conv_net("relu")
    x, y = batch(1, dtype=torch.float32)
    with pytest.raises(BadInput):
        input_hessian_eigenvalues(model, x, y, **kwargs)


# --- bounds, defaults and refused inputs --------------------------------------------------------


@pytest.mark.parametrize("act", ["silu", "gelu", "relu"])
def test_reported_bounds_hold_against_the_dense_hessian(act):
    # every example, converged or stopped early by the cap: the value is within its bound of
    # an eigenvalue, lambda_max >= value, and a converged example is within tol of lambda_max
    model = tiny_conv_net(act, seed=5)
    x, y = batch(5, seed=6)
    for max_iter in (3, 100):
        res = input_hessian_eigenvalues(model, x, y, tol=1e-3, max_iter=max_iter)
        for i in range(5):
            ev = torch.linalg.eigvalsh(dense_hessian(model, x[i], y[i])).detach()
            scale = float(ev.abs().max())
            lam, bound = float(res.lambda_max[i]), float(res.lambda_max_bound[i])
            assert float((ev - lam).abs().min()) <= bound + 1e-12 * scale
            assert lam <= float(ev[-1]) + 1e-12 * scale
            lo, lo_bound = float(res.lambda_min[i]), float(res.lambda_min_bound[i])
            assert float((ev - lo).abs().min()) <= lo_bound + 1e-12 * scale
            if bool(res.converged[i]):
                assert float(ev[-1]) - lam <= 1e-3 * abs(lam) + 1e-12 * scale
            assert float(res.lambda_max_upper[i]) >= lam
        if max_iter == 100:
            assert res.converged.all()
        else:
            assert not res.converged.all()  # 3 products: flagged, not claimed


def test_defaults_are_float64_and_the_bound_rule_and_are_stated_in_the_settings():
    model = tiny_conv_net("silu")
    x, y = batch(2, dtype=torch.float32)
    res = input_hessian_eigenvalues(model, x, y)
    assert res.settings["dtype"] == "torch.float64" and res.settings["stop"] == "residual"
    assert res.settings["check_every"] == 1
    rec = res.records()[0]
    for key in ("lambda_max_bound", "lambda_max_upper", "lambda_min_bound", "error_bound",
                "converged", "limited"):
        assert key in rec
    import inspect

    doc = inspect.getdoc(input_hessian_eigenvalues)
    assert "float64 (the default" in doc


@pytest.mark.parametrize(("images", "needle"), [
    ((torch.rand(2, 2, 4, 4) * 255).to(torch.uint8), "dtype torch.uint8"),
    ((torch.rand(2, 2, 4, 4) * 255).round().long(), "dtype torch.int64"),
    (torch.rand(2, 2, 4, 4) * 255, "in [0, 1]"),
    (torch.rand(2, 2, 4, 4) - 0.5, "in [0, 1]"),
    (torch.full((2, 2, 4, 4), float("nan")), "in [0, 1]"),
])
def test_images_that_are_not_pixels_in_0_1_are_refused_with_one_line(images, needle):
    model = tiny_conv_net("silu")
    y = torch.tensor([0, 1])
    for call in (lambda: input_hessian_eigenvalues(model, images, y),
                 lambda: batched_input_hvp(model, images, y)):
        with pytest.raises(BadInput) as err:
            call()
        message = str(err.value)
        assert needle in message and "\n" not in message


def test_float_labels_are_refused():
    model = tiny_conv_net("silu")
    x, _ = batch(2)
    with pytest.raises(BadInput, match="labels"):
        input_hessian_eigenvalues(model, x, torch.tensor([0.0, 1.0]))


def test_uint8_images_were_silently_wrong_and_their_float_version_is_not():
    # the regression: uint8 pixels read as 0..255 saturate the net (Hessian ~1e-14)
    model = tiny_conv_net("silu")
    x, y = batch(2, dtype=torch.float32)
    as_uint8 = (x * 255).round().to(torch.uint8)
    res = input_hessian_eigenvalues(model, as_uint8.float() / 255, y, dtype=F64)
    assert (res.lambda_max.abs() > 1e-6).all()


def test_the_float64_loss_head_keeps_float32_products_accurate_on_confident_examples():
    # The regression: with the loss in float32, p_y - 1 and p_y (1 - p_y) cancel when p_y rounds
    # towards 1 -- 2.9e-3 relative error at 1 - p_y ~ 3e-5 here, 9e-2 at 1e-6 -- and no float32
    # Lanczos could honestly reach tol 1e-3; with the float64 head it is ~3e-7.
    model = tiny_conv_net("silu")
    with torch.no_grad():
        model[-1].weight.mul_(10)
        model[-1].bias.zero_()
        model[-1].bias[0] = 12.0
    x, _ = batch(6, dtype=torch.float32)
    y = torch.zeros(6, dtype=torch.long)
    with torch.no_grad():
        assert (1 - torch.softmax(model(x).double(), 1)[:, 0]).max() < 1e-4  # confident
    v = torch.randn(6, 32, dtype=F64, generator=torch.Generator().manual_seed(0))
    exact = batched_input_hvp(model, x, y, dtype=F64, hvp_mode="rev-rev")(v)

    def error(**kw):
        h = batched_input_hvp(model, x, y, dtype=torch.float32, hvp_mode="rev-rev", **kw)
        return float(((h(v.float()).double() - exact).norm(dim=1) / exact.norm(dim=1)).max())

    assert error() < 2e-6
    assert error(loss_dtype=torch.float32) > 5e-4
    res = input_hessian_eigenvalues(model, x, y, dtype=torch.float32)
    ref = input_hessian_eigenvalues(model, x, y, tol=1e-9)
    assert res.converged.all()
    assert ((res.lambda_max - ref.lambda_max).abs() <= res.lambda_max_bound).all()
    legacy = input_hessian_eigenvalues(model, x, y, dtype=torch.float32,
                                       loss_dtype=torch.float32)
    assert not legacy.converged.any()  # its estimated rounding says so: no claim of tol
    # a float32 loss rounds like float32 even on float64 products
    assert not input_hessian_eigenvalues(model, x, y, loss_dtype=torch.float32).converged.any()
