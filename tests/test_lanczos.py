"""Batched Lanczos on explicit symmetric matrices, checked against torch.linalg.eigvalsh."""

import pytest
import torch

from curvtools.errors import BadInput
from curvtools.lanczos import BatchedMatrix, batched_lanczos
from curvtools.power_iteration import power_iteration_largest_magnitude

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
    for stop in ("eigenvalue", "residual"):
        res = batched_lanczos(BatchedMatrix(a), v0, tol=tol, max_iter=n, which=("max",),
                              stop=stop)
        assert _max_rel_err(res.largest, exact) <= tol
        assert (res.error_estimate <= tol).all()
    assert res.converged.all()  # the bound rule: proven, not only estimated


@pytest.mark.parametrize("stop", ["residual", "eigenvalue"])
@pytest.mark.parametrize("spectrum", ["well_separated", "clustered", "tiny_gap",
                                      "negative_dominates", "dense_top"])
@pytest.mark.parametrize("which", [("max",), ("max", "min")])
def test_both_rules_reach_tol_on_random_matrices_and_the_bound_rule_proves_it(spectrum, which,
                                                                              stop):
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
    # the estimate rule with its own former setting (a check every 2 steps; checked every step
    # it stops earlier and misses "clustered"'s lambda_min by 1.4%: an estimate, not a bound)
    res = batched_lanczos(BatchedMatrix(a), torch.randn(b, n, dtype=F64, generator=g), k=2,
                          which=which, tol=tol, max_iter=n, stop=stop,
                          check_every=1 if stop == "residual" else 2)
    if stop == "residual":
        assert res.converged.all() and (res.error_bound <= tol).all()
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
    eig = batched_lanczos(BatchedMatrix(a), v0, which=("max",), tol=1e-3, stop="eigenvalue")
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
    random vectors (0.79 against 1.0) as converged with residual 0. Beside 1e4, float32
    products err by about eps * 1e4 ~ 1e-3 absolute: whatever is claimed, the bound must hold."""
    n = 200
    rest = torch.linspace(-1.0 if dominant > 0 else 0.0, 1.0, n - 1, dtype=F64)
    eigs = torch.cat([torch.tensor([dominant], dtype=F64), rest])[None]
    a = _with_spectrum(eigs).float()
    res = batched_lanczos(BatchedMatrix(a), torch.randn(1, n, generator=torch.Generator()
                                                         .manual_seed(1)),
                          tol=1e-3, max_iter=100, stop="residual",
                          generator=torch.Generator().manual_seed(2))
    ev = torch.linalg.eigvalsh(eigs[0].diag())
    for got, bound, true in ((res.largest, res.top_bound[:, 0], ev[-1]),
                             (res.smallest, res.smallest_bound, ev[0])):
        err = abs(float(got[0]) - float(true))
        assert err <= float(bound[0])  # the bound holds
        assert err <= 5e-3 * max(abs(float(true)), 1.0)  # the symptom was 0.79 against 1.0
    assert bool(res.converged[0]) == (float(res.error_bound[0]) <= 1e-3)
    assert float(res.residual[0]) > 0  # a residual of exactly 0 was the symptom


# --- the error bound and the probabilistic bound on the extremes --------------------------------


def _nearest(ev: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
    """[B] distance from each value to the nearest of that row's eigenvalues ev [B, n]."""
    return (ev - values[:, None]).abs().amin(dim=1)


SPECTRA = {
    "uniform": lambda g, b, n: torch.rand(b, n, dtype=F64, generator=g) * 2 - 1,
    "dominant_top": lambda g, b, n: torch.cat([torch.full((b, 1), 50.0, dtype=F64),
                                               torch.rand(b, n - 1, dtype=F64, generator=g)], 1),
    "clustered_top": lambda g, b, n: torch.cat([1 - 1e-3 * torch.rand(b, 4, dtype=F64,
                                                                      generator=g),
                                                torch.rand(b, n - 4, dtype=F64, generator=g) - 1],
                                               1),
    "low_rank": lambda g, b, n: torch.cat([torch.rand(b, 3, dtype=F64, generator=g) + 1,
                                           torch.zeros(b, n - 3, dtype=F64)], 1),
}


@pytest.mark.parametrize("spectrum", sorted(SPECTRA))
@pytest.mark.parametrize("steps", [1, 3, 8, 40])
def test_the_bound_holds_for_every_pair_at_every_stage_of_convergence(spectrum, steps):
    # converged or not: each reported value lies within its bound of an eigenvalue, the top
    # value is below lambda_max and the bottom one above lambda_min (Rayleigh quotients)
    g = torch.Generator().manual_seed(steps)
    b, n = 6, 40
    eigs = SPECTRA[spectrum](g, b, n)
    a = _with_spectrum(eigs, seed=steps)
    ev = torch.linalg.eigvalsh(a)
    res = batched_lanczos(BatchedMatrix(a), torch.randn(b, n, dtype=F64, generator=g), k=2,
                          tol=1e-12, max_iter=steps, check_every=1,
                          generator=torch.Generator().manual_seed(0))
    tiny = 1e-12 * ev.abs().amax(dim=1)
    for j in range(min(2, steps)):
        assert (_nearest(ev, res.top[:, j]) <= res.top_bound[:, j] + tiny).all()
    assert (_nearest(ev, res.smallest) <= res.smallest_bound + tiny).all()
    assert (res.largest <= ev[:, -1] + tiny).all() and (res.smallest >= ev[:, 0] - tiny).all()
    assert torch.equal(res.converged, res.error_bound <= 1e-12)


def test_products_that_are_not_symmetric_show_in_the_bound():
    # Computed products (A + E) v with E antisymmetric, |E| = 1e-4: Lanczos cannot tell E from
    # A through T, but the coefficients it removes can -- the bound's rounding part sees it,
    # and the bound then covers the distance to A's spectrum.
    g = torch.Generator().manual_seed(3)
    b, n = 4, 50
    a = _with_spectrum(torch.cat([torch.tensor([[3.0]], dtype=F64).repeat(b, 1),
                                  torch.rand(b, n - 1, dtype=F64, generator=g)], 1))
    e = torch.randn(b, n, n, dtype=F64, generator=g)
    e = e - e.transpose(1, 2)
    e = 1e-4 * e / torch.linalg.matrix_norm(e, ord=2)[:, None, None]
    ev = torch.linalg.eigvalsh(a)
    clean = batched_lanczos(BatchedMatrix(a), torch.randn(b, n, dtype=F64, generator=g),
                            tol=1e-12, max_iter=30, which=("max",))
    noisy = batched_lanczos(BatchedMatrix(a + e), torch.randn(b, n, dtype=F64, generator=g),
                            tol=1e-12, max_iter=30, which=("max",))
    assert (clean.rounding < 1e-13).all()
    assert (noisy.rounding > 1e-7).all()  # far above rounding: E shows (about 5-50% of |E|)
    assert (_nearest(ev, noisy.largest) <= noisy.top_bound[:, 0] + 1e-4).all()
    assert (noisy.limited & ~noisy.converged).all()  # 1e-12 is out of reach: said so
    assert (noisy.iterations < 30).all()  # and it stopped there, not at the cap


def test_the_old_estimate_rule_is_converged_only_where_its_bound_reaches_tol():
    a = _with_spectrum(torch.linspace(0, 1, 200, dtype=F64)[None].repeat(6, 1), seed=5)
    res = batched_lanczos(BatchedMatrix(a), torch.randn(6, 200, dtype=F64,
                                                        generator=torch.Generator().manual_seed(5)),
                          tol=1e-3, which=("max",), stop="eigenvalue", check_every=2)
    assert (res.error_estimate <= 1e-3).all()  # it stopped on the estimate...
    assert torch.equal(res.converged, res.error_bound <= 1e-3)  # ...and says what is proven
    assert not res.converged.all()  # on this slow spectrum the bound lags the estimate


def test_start_component_quantile_is_the_delta_quantile_of_one_coordinate():
    from scipy.special import betainc

    from curvtools.krylov_bounds import start_component_quantile

    for n in (2, 3, 10, 256, 3072):
        for delta in (1e-3, 1e-2, 0.2):
            c = start_component_quantile(n, delta)
            # g^2 ~ Beta(1/2, (n-1)/2): P(|g| < c) = I_{c^2}(1/2, (n-1)/2)
            prob = betainc(0.5, (n - 1) / 2, c * c)
            assert prob <= delta * (1 + 1e-9) and prob >= 0.9 * delta, (n, delta, prob)


def _adversarial(n: int) -> torch.Tensor:
    """lambda_max 1.0 just above a dense band: short Krylov runs often stop below it."""
    band = torch.linspace(-1.0, 0.99, n - 1, dtype=F64)
    q, _ = torch.linalg.qr(torch.randn(n, n, dtype=F64, generator=torch.Generator().manual_seed(7)))
    return q @ torch.diag(torch.cat([torch.tensor([1.0], dtype=F64), band])) @ q.T


@pytest.mark.parametrize("delta", [0.2, 0.05])
def test_the_probabilistic_upper_bound_fails_at_most_delta_of_the_time(delta):
    # 3000 random starts on one matrix, 20 steps: the residual interval misses lambda_max for
    # about 9% of them (a larger eigenvalue hides from the Krylov space); the polynomial bound
    # must hold for all but delta of the starts (measured: 4.2% at delta 0.2, 0.2% at 0.05).
    n, trials = 60, 3000
    a = _adversarial(n)
    v0 = torch.randn(trials, n, dtype=F64, generator=torch.Generator().manual_seed(11))
    res = batched_lanczos(lambda v: v @ a, v0, tol=1e-12, max_iter=20, check_every=20,
                          miss_probability=delta)
    lam = float(torch.linalg.eigvalsh(a)[-1])
    missed = (lam > res.largest + res.top_bound[:, 0]).double().mean()
    failed = (lam > res.largest_upper).double().mean()
    assert missed > 0.05  # the residual bound alone is not a bound on lambda_max here
    sigma = (delta * (1 - delta) / trials) ** 0.5
    assert failed <= delta + 3 * sigma, (float(failed), delta)
    assert (res.largest_upper >= res.largest).all()
    # and informative: a few residuals wide (median 0.014 at delta 0.2, r 0.010)
    assert float((res.largest_upper - res.largest).median()) < 10 * float(
        res.top_bound[:, 0].median())


def test_the_probabilistic_upper_bound_tightens_with_more_steps_and_is_exact_when_invariant():
    n = 60
    a = _adversarial(n)
    v0 = torch.randn(200, n, dtype=F64, generator=torch.Generator().manual_seed(12))
    widths = [float((batched_lanczos(lambda v: v @ a, v0, tol=1e-14, max_iter=m, check_every=m)
                     .largest_upper - 1.0).median()) for m in (5, 15, 40)]
    assert widths[0] > widths[1] > widths[2] and widths[2] < 1e-3
    u = torch.randn(3, 20, 2, dtype=F64, generator=torch.Generator().manual_seed(13))
    low_rank = u @ u.transpose(1, 2)  # invariant after 3 steps: the bound is the value
    res = batched_lanczos(BatchedMatrix(low_rank), torch.randn(3, 20, dtype=F64), tol=1e-12,
                          max_iter=20, check_every=1)
    torch.testing.assert_close(res.largest_upper, res.largest, rtol=1e-9, atol=1e-12)
    torch.testing.assert_close(res.largest, torch.linalg.eigvalsh(low_rank)[:, -1], rtol=1e-10,
                               atol=0)


@pytest.mark.parametrize("spectrum", ["uniform", "sqrt_density"])
def test_kuczynski_wozniakowski_a_priori_bound_holds_empirically(spectrum):
    # Positive semi-definite, n = 50, relative error >= eps after `steps` steps from a random
    # start: its observed frequency stays below the quoted a-priori bound.
    from curvtools.krylov_bounds import kw_failure_probability

    n, trials, eps = 50, 2000, 0.02
    t = torch.linspace(0, 1, n, dtype=F64)
    eigs = t if spectrum == "uniform" else t.sqrt()
    q, _ = torch.linalg.qr(torch.randn(n, n, dtype=F64, generator=torch.Generator().manual_seed(1)))
    a = q @ torch.diag(eigs) @ q.T
    v0 = torch.randn(trials, n, dtype=F64, generator=torch.Generator().manual_seed(2))
    for steps in (8, 14, 20):
        res = batched_lanczos(lambda v: v @ a, v0, tol=1e-14, max_iter=steps, check_every=steps,
                              which=("max",))
        failure = float(((1.0 - res.largest) >= eps).double().mean())
        bound = kw_failure_probability(n, steps, eps)
        assert failure <= bound, (steps, failure, bound)
    assert kw_failure_probability(n, 20, eps) < 1  # the check above was not vacuous


def test_restricting_the_operator_at_half_gives_the_same_results_and_counts_its_padding():
    # compact=0.5: the operator keeps frozen rows as zeros until the active ones are at most
    # half of those it holds (each restriction of a rev-rev Hessian rebuilds its graph)
    a = torch.cat([_random_symmetric(3, 40, seed=21),
                   _with_spectrum(torch.tensor([[9.0, 1.0] + [0.0] * 38], dtype=F64).repeat(5, 1),
                                  seed=22)])
    v0 = torch.randn(8, 40, dtype=F64, generator=torch.Generator().manual_seed(23))
    calls = []

    class Counting(BatchedMatrix):
        def restrict(self, rows):
            calls.append(rows.numel())
            return Counting(self.a[rows])

    def run(compact):
        calls.clear()
        return batched_lanczos(Counting(a), v0, tol=1e-8, max_iter=40, compact=compact,
                               generator=torch.Generator().manual_seed(0)), list(calls)

    (every, every_calls), (half, half_calls) = run(True), run(0.5)
    for field in ("top", "smallest", "top_bound", "iterations", "converged"):
        torch.testing.assert_close(getattr(half, field), getattr(every, field), rtol=1e-10,
                                   atol=1e-12)
    assert len(half_calls) < len(every_calls)
    sizes = [8, *half_calls]
    assert all(b <= a_ / 2 for a_, b in zip(sizes, sizes[1:], strict=False))
    assert every.products == int(every.iterations.sum()) < half.products
    with pytest.raises(BadInput, match="compact"):
        batched_lanczos(BatchedMatrix(a), v0, compact=1.5)
