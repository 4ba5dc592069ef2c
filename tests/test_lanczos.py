"""Batched Lanczos on explicit symmetric matrices, checked against torch.linalg.eigvalsh."""

import pytest
import torch

from curvtools.errors import BadInput
from curvtools.lanczos import BatchedMatrix, batched_lanczos, power_iteration_largest_magnitude

F64 = torch.float64


def _matvec(a: torch.Tensor):
    return lambda v: (a @ v.unsqueeze(2)).squeeze(2)


def _random_symmetric(b: int, n: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    a = torch.randn(b, n, n, dtype=F64, generator=g)
    return (a + a.transpose(1, 2)) / 2


def _with_spectrum(eigs: torch.Tensor, seed: int = 0) -> torch.Tensor:
    """[B, n] eigenvalues -> [B, n, n] symmetric matrices with those eigenvalues, random basis."""
    g = torch.Generator().manual_seed(seed)
    q, _ = torch.linalg.qr(torch.randn(eigs.shape[0], eigs.shape[1], eigs.shape[1], dtype=F64,
                                       generator=g))
    return q @ torch.diag_embed(eigs) @ q.transpose(1, 2)


def test_lanczos_matches_eigvalsh_max_min_and_top_k_on_random_symmetric_matrices():
    a = _random_symmetric(5, 40)
    res = batched_lanczos(_matvec(a), torch.randn(5, 40, dtype=F64), k=3, tol=1e-10, max_iter=40,
                          stop="residual")
    ev = torch.linalg.eigvalsh(a)
    torch.testing.assert_close(res.top, ev.flip(1)[:, :3], rtol=1e-8, atol=1e-10)
    torch.testing.assert_close(res.smallest, ev[:, 0], rtol=1e-8, atol=1e-10)
    assert res.converged.all()
    assert (res.residual <= 1e-10).all()


def test_lanczos_finds_largest_algebraic_eigenvalue_where_power_iteration_finds_the_negative_one():
    # The wrong-eigenvalue trap: the most negative eigenvalue dominates in magnitude.
    eigs = torch.tensor([[-10.0, -3.0, -1.0, 0.2, 0.5, 1.0, 2.0, 0.0]], dtype=F64).repeat(3, 1)
    a = _with_spectrum(eigs)
    v0 = torch.randn(3, 8, dtype=F64, generator=torch.Generator().manual_seed(1))
    power, _ = power_iteration_largest_magnitude(_matvec(a), v0, tol=1e-10, max_iter=500)
    res = batched_lanczos(_matvec(a), v0, tol=1e-10, max_iter=8)
    torch.testing.assert_close(power, torch.full((3,), -10.0, dtype=F64), rtol=1e-6, atol=0)
    torch.testing.assert_close(res.largest, torch.full((3,), 2.0, dtype=F64), rtol=1e-10, atol=0)
    torch.testing.assert_close(res.smallest, torch.full((3,), -10.0, dtype=F64), rtol=1e-10, atol=0)


def test_lanczos_breakdown_on_low_rank_matrices_is_exact_and_never_nan():
    # Rank 3 in dimension 30 (like a ReLU net's input Hessian: rank <= classes - 1).
    g = torch.Generator().manual_seed(2)
    u = torch.randn(4, 30, 3, dtype=F64, generator=g)
    a = u @ u.transpose(1, 2)
    res = batched_lanczos(_matvec(a), torch.randn(4, 30, dtype=F64, generator=g), k=5,
                          tol=1e-10, max_iter=30, check_every=1)
    ev = torch.linalg.eigvalsh(a).flip(1)
    assert not torch.isnan(res.top).any() and not torch.isnan(res.smallest).any()
    # The Krylov space is exhausted after 4 steps (3 directions + the null component); the
    # restart vector then reveals a second null direction, so the top 5 are exact too.
    torch.testing.assert_close(res.top, ev[:, :5], rtol=1e-10, atol=1e-10)
    assert (res.iterations == 5).all() and res.converged.all()
    assert res.smallest.abs().max() < 1e-10


def test_lanczos_on_the_zero_matrix_returns_zeros_without_nan():
    res = batched_lanczos(lambda v: torch.zeros_like(v), torch.randn(2, 6, dtype=F64), k=2,
                          tol=1e-6, max_iter=6, check_every=1)
    assert torch.equal(res.top, torch.zeros(2, 2, dtype=F64))
    assert torch.equal(res.smallest, torch.zeros(2, dtype=F64))
    assert res.converged.all()


def test_converged_examples_freeze_while_the_batch_keeps_iterating():
    easy = _with_spectrum(torch.tensor([[5.0, 1.0] + [0.0] * 28], dtype=F64), seed=3)
    hard = _random_symmetric(1, 30, seed=4)
    a = torch.cat([easy, hard])
    v0 = torch.randn(2, 30, dtype=F64, generator=torch.Generator().manual_seed(5))
    def run(max_iter):
        return batched_lanczos(_matvec(a), v0, tol=1e-9, max_iter=max_iter, check_every=1,
                               generator=torch.Generator().manual_seed(0))

    full = run(30)
    first = int(full.iterations[0])
    assert first < full.iterations[1] and full.converged.all()
    at_freeze = run(first)  # the same batch stopped at the check where example 0 froze
    assert torch.equal(full.top[0], at_freeze.top[0])
    assert torch.equal(full.smallest[0], at_freeze.smallest[0])
    assert torch.equal(full.residual[0], at_freeze.residual[0])


def test_iteration_cap_reports_unconverged_examples_with_their_residual():
    a = _random_symmetric(3, 200, seed=6)
    res = batched_lanczos(_matvec(a), torch.randn(3, 200, dtype=F64), tol=1e-12, max_iter=7,
                          check_every=5)
    assert res.matvecs == 7
    assert (res.iterations == 7).all()
    assert not res.converged.any()
    assert (res.residual > 1e-12).all() and torch.isfinite(res.residual).all()


def test_checks_happen_on_a_fixed_schedule_of_check_every_iterations():
    a = _random_symmetric(2, 60, seed=7)
    res = batched_lanczos(_matvec(a), torch.randn(2, 60, dtype=F64), tol=1e-6, max_iter=60,
                          check_every=4)
    assert (res.iterations % 4 == 0).all()
    assert res.matvecs == int(res.iterations.max())


def test_ritz_vectors_are_unit_eigenvectors():
    a = _random_symmetric(3, 25, seed=8)
    # Vectors are as accurate as the residual, so ask for the residual rule.
    res = batched_lanczos(_matvec(a), torch.randn(3, 25, dtype=F64), k=2, tol=1e-10,
                          max_iter=25, return_vectors=True, stop="residual")
    vec = res.top_vectors  # [3, 2, 25]
    torch.testing.assert_close(vec.norm(dim=2), torch.ones(3, 2, dtype=F64))
    av = (a.unsqueeze(1) @ vec.unsqueeze(3)).squeeze(3)
    torch.testing.assert_close(av, res.top.unsqueeze(2) * vec, rtol=0, atol=1e-8)


def test_float32_lanczos_agrees_with_float64_eigvalsh_to_float32_accuracy():
    a = _random_symmetric(4, 64, seed=9)
    res = batched_lanczos(_matvec(a.float()), torch.randn(4, 64), tol=1e-4, max_iter=64)
    ev = torch.linalg.eigvalsh(a)
    torch.testing.assert_close(res.largest, ev[:, -1], rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(res.smallest, ev[:, 0], rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("kwargs", [{"k": 0}, {"tol": 0.0}, {"max_iter": 0}, {"check_every": 0},
                                    {"which": ("min",)}, {"which": ("max", "mid")}])
def test_bad_options_raise_bad_input(kwargs):
    with pytest.raises(BadInput):
        batched_lanczos(lambda v: v, torch.randn(2, 4, dtype=F64), **kwargs)


# --- compaction and the stop rules ----------------------------------------------------------------


def _max_rel_err(got: torch.Tensor, want: torch.Tensor) -> float:
    return float(((got - want).abs() / want.abs()).max())


@pytest.mark.parametrize("restrictable", [True, False])
def test_compaction_gives_the_same_results_as_iterating_the_whole_batch(restrictable):
    # Mixed difficulty so examples freeze at different checks; a zero-gap (repeated top) example
    # and a low-rank one force breakdown restarts, whose random vectors must not depend on
    # compaction either.
    g = torch.Generator().manual_seed(11)
    u = torch.randn(2, 40, 3, dtype=F64, generator=g)
    a = torch.cat([_random_symmetric(3, 40, seed=12), u @ u.transpose(1, 2),
                   _with_spectrum(torch.tensor([[3.0, 3.0, 1.0] + [0.0] * 37], dtype=F64))])
    v0 = torch.randn(6, 40, dtype=F64, generator=g)
    op = BatchedMatrix(a) if restrictable else _matvec(a)

    def run(compact):
        return batched_lanczos(op, v0, k=2, tol=1e-6, max_iter=40, check_every=3,
                               compact=compact, return_vectors=True,
                               generator=torch.Generator().manual_seed(0))

    on, off = run(True), run(False)
    assert len(set(on.iterations.tolist())) > 1  # examples really left at different checks
    for field in ("top", "smallest", "residual", "error_estimate", "top_vectors"):
        torch.testing.assert_close(getattr(on, field), getattr(off, field), rtol=1e-12,
                                   atol=1e-12, equal_nan=True)
    assert torch.equal(on.iterations, off.iterations)
    assert torch.equal(on.converged, off.converged)
    assert off.products == 6 * off.matvecs
    # Compaction computes only the active rows -- exactly the sum of the per-example iterations
    # -- unless the matvec cannot be restricted (then it always sees the whole batch).
    if restrictable:
        assert on.products == int(on.iterations.sum()) < off.products
    else:
        assert on.products == off.products


def test_eigenvalue_rule_reaches_tol_where_stopping_on_a_small_ritz_value_change_does_not():
    # Uniform spectrum: slow convergence, the Ritz value creeps up by less than tol per check
    # long before it is within tol of lambda_max.
    tol, n = 1e-3, 300
    a = _with_spectrum(torch.linspace(0, 1, n, dtype=F64)[None].repeat(4, 1), seed=0)
    v0 = torch.randn(4, n, dtype=F64, generator=torch.Generator().manual_seed(0))
    exact = torch.linalg.eigvalsh(a)[:, -1]
    # The naive rule, on the same Krylov sequence: stop at the first check (every 2 steps) where
    # the top Ritz value changed by at most tol relative since the previous check.
    prev, naive = None, None
    for m in range(2, 60, 2):
        theta = batched_lanczos(BatchedMatrix(a), v0, tol=1e-14, max_iter=m, which=("max",),
                                stop="residual").largest
        if prev is not None and ((theta - prev).abs() <= tol * theta.abs()).all():
            naive = theta
            break
        prev = theta
    assert naive is not None and _max_rel_err(naive, exact) > 2 * tol
    res = batched_lanczos(BatchedMatrix(a), v0, tol=tol, max_iter=n, which=("max",))
    assert res.converged.all() and _max_rel_err(res.largest, exact) <= tol
    assert (res.error_estimate <= tol).all()


@pytest.mark.parametrize("spectrum", ["well_separated", "clustered", "tiny_gap",
                                      "negative_dominates", "dense_top"])
@pytest.mark.parametrize("which", [("max",), ("max", "min")])
def test_eigenvalue_rule_error_is_within_tol_on_random_matrices(spectrum, which):
    n, b, tol = 120, 6, 1e-3
    seed, top = {"well_separated": (1, [10.0, 5.0, 4.0]), "clustered": (2, [1.0, 0.999, 0.998]),
                 "tiny_gap": (3, [1.0, 1.0 - 1e-9, 0.5]),
                 "negative_dominates": (4, [1.0, 0.9, -30.0]),
                 "dense_top": (5, [1.0, 0.995, 0.99])}[spectrum]
    g = torch.Generator().manual_seed(seed)
    rest = torch.rand(b, n - 3, dtype=F64, generator=g)
    eigs = torch.cat([torch.tensor(top, dtype=F64).repeat(b, 1), rest - 0.5], dim=1)
    a = _with_spectrum(eigs, seed=3)
    ev = torch.linalg.eigvalsh(a)
    res = batched_lanczos(BatchedMatrix(a), torch.randn(b, n, dtype=F64, generator=g), k=2,
                          which=which, tol=tol, max_iter=n)
    assert res.converged.all()
    assert _max_rel_err(res.top[:, 0], ev[:, -1]) <= tol
    # The second value is only defined to tol when it is more than tol away from the third
    # ("clustered": 1e-3 apart, either neighbour is a correct answer at this accuracy) and
    # distinguishable from the first ("tiny_gap": 1e-9 apart is a double eigenvalue to a single
    # start vector; the module docstring's multiplicity note). "dense_top" (1, 0.995, 0.99): on
    # one of the six matrices the second Ritz value settles on 0.99 with a small residual
    # before the Krylov space has seen 0.995 -- a miss no a-posteriori rule can detect (the
    # residual rule only escapes it because the top pair keeps it iterating longer).
    if spectrum not in ("clustered", "tiny_gap", "dense_top"):
        assert _max_rel_err(res.top[:, 1], ev[:, -2]) <= tol
    if "min" in which:
        assert _max_rel_err(res.smallest, ev[:, 0]) <= tol


def test_eigenvalue_rule_needs_fewer_products_than_the_residual_rule():
    a = _with_spectrum(torch.cat([torch.tensor([[4.0, 2.0]], dtype=F64).repeat(8, 1),
                                  torch.rand(8, 98, dtype=F64) - 0.5], dim=1), seed=4)
    v0 = torch.randn(8, 100, dtype=F64, generator=torch.Generator().manual_seed(4))
    eig = batched_lanczos(BatchedMatrix(a), v0, which=("max",), tol=1e-3)
    res = batched_lanczos(BatchedMatrix(a), v0, which=("max",), tol=1e-3, stop="residual")
    assert eig.products < res.products
    assert (eig.error_estimate <= eig.residual).all()  # min(r, r^2/gap) <= r


def test_bad_stop_rule_raises_bad_input():
    with pytest.raises(BadInput, match="stop"):
        batched_lanczos(lambda v: v, torch.randn(2, 4, dtype=F64), stop="change")


@pytest.mark.parametrize("dominant", [-1e3, -1e4, 1e4])
def test_float32_lanczos_never_reports_a_wrong_eigenvalue_as_converged_beside_a_dominant_one(
        dominant):
    """One eigenvalue 1e3-1e4 times the rest of the spectrum (in [-1, 1] beside a positive one):
    a breakdown threshold of sqrt(eps) took the rest for rounding noise, restarted at every step
    and, the dropped remainders being left out of the residual, reported a Rayleigh quotient of
    random vectors (0.79 against 1.0) as converged with residual 0."""
    n = 200
    rest = torch.linspace(-1.0 if dominant > 0 else 0.0, 1.0, n - 1, dtype=F64)
    eigs = torch.cat([torch.tensor([dominant], dtype=F64), rest])[None]
    a = _with_spectrum(eigs).float()
    res = batched_lanczos(BatchedMatrix(a), torch.randn(1, n, generator=torch.Generator()
                                                         .manual_seed(1)),
                          tol=1e-3, max_iter=100, stop="residual",
                          generator=torch.Generator().manual_seed(2))
    ev = torch.linalg.eigvalsh(eigs[0].diag())
    for got, true in ((res.largest, ev[-1]), (res.smallest, ev[0])):
        # converged means: within the reported residual (relative) of the true eigenvalue
        assert bool(res.converged[0])
        assert abs(float(got[0]) - float(true)) <= 2e-3 * max(abs(float(true)), 1.0)
    assert float(res.residual[0]) > 0  # a residual of exactly 0 was the symptom
