"""Batched Lanczos on explicit symmetric matrices, checked against torch.linalg.eigvalsh."""

import pytest
import torch

from curvtools.errors import BadInput
from curvtools.lanczos import batched_lanczos, power_iteration_largest_magnitude

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
    res = batched_lanczos(_matvec(a), torch.randn(5, 40, dtype=F64), k=3, tol=1e-10, max_iter=40)
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
    res = batched_lanczos(_matvec(a), torch.randn(3, 25, dtype=F64), k=2, tol=1e-10,
                          max_iter=25, return_vectors=True)
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
