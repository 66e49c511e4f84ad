"""DDPM in discrete time (minigen.ddpm) against closed forms derived here independently.

Target: a 2D Gaussian N(mu, Sigma) with correlation. Its discrete forward marginals
q(x_k) = N(sqrt(ab_k) mu, ab_k Sigma + (1 - ab_k) I) give the exact epsilon at every step,
E[eps | x_k] = sqrt(1 - ab_k) C_k^{-1} (x_k - sqrt(ab_k) mu), so the samplers are tested
without a network. Monte Carlo tolerances: 5 standard errors computed from the target
(SE of a covariance entry sqrt((S_ii S_jj + S_ij²) / n)) plus a stated discretisation
allowance, measured by running the sampler with more steps.
"""

from __future__ import annotations

import math

import pytest
import torch
from moments import assert_moments

from minigen.diffusion.ddpm import DDPMSchedule
from minigen.diffusion.ddpm_bound import (
    bound_strata,
    decoder_nll,
    decoder_nll_continuous,
    fitted_decoder_std,
    fitted_level_decoder,
    fitted_step_variances,
    kl_gaussians,
    nll_bound,
    prior_kl,
    step_kl,
)
from minigen.eval.bits import LevelDecoder, discretized_gaussian_log_likelihood, unit_interval_bins
from minigen.eval.gaussian import GaussianTarget
from minigen.recipe import ode_solvers as solvers
from minigen.recipe.wrappers import velocity_from_epsilon_model

torch.set_num_threads(1)
F64 = torch.float64
MU = torch.tensor([1.0, -0.5], dtype=F64)
L = torch.tensor([[0.8, 0.0], [0.4, 0.5]], dtype=F64)
SIGMA = L @ L.T
TARGET = GaussianTarget(MU, SIGMA)
EYE = torch.eye(2, dtype=F64)
SCHED = DDPMSchedule()
TINY = DDPMSchedule(T=4, beta_start=0.1, beta_end=0.4)  # betas 0.1, 0.2, 0.3, 0.4


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def exact_eps_model(sched: DDPMSchedule):
    """E[eps | x_k] of the Gaussian target, from the discrete marginal at k = T (1 - t)."""
    ab = sched.alpha_bar
    c_inv = torch.linalg.inv(ab[:, None, None] * SIGMA + (1 - ab)[:, None, None] * EYE)

    def eps(x, t):
        k = round((1 - float(t[0])) * sched.T)
        assert torch.all(t == t[0]) and abs((1 - float(t[0])) * sched.T - k) < 1e-6
        return (1 - ab[k]).sqrt() * (x - ab[k].sqrt() * MU) @ c_inv[k].T
    return eps


def test_schedule_constants_and_continuous_path():
    assert SCHED.betas[0] == 0 and SCHED.alpha_bar[0] == 1
    assert math.isclose(SCHED.betas[1], 1e-4) and math.isclose(SCHED.betas[1000], 0.02)
    assert torch.allclose(SCHED.alpha_bar[1:], torch.cumprod(1 - torch.linspace(1e-4, 0.02, 1000,
                                                                                dtype=F64), 0))
    path = SCHED.continuous_path()
    assert (path.b0, path.b1) == pytest.approx((0.1, 20.0))
    # alpha(0) ≈ sqrt(alpha_bar_T): exp(-5.025) vs 0.0064 (the product has extra -beta²/2 terms)
    a0 = float(path.alpha(torch.tensor(0.0, dtype=F64)))
    assert a0 == pytest.approx(float(SCHED.alpha_bar[-1].sqrt()), rel=0.05)
    # ... and at every step: alpha(1 - k/T) ≈ sqrt(alpha_bar_k) within 4 % (both 1 at k = 0)
    k = torch.arange(1001)
    rel = path.alpha(SCHED.t_of_k(k)) / SCHED.alpha_bar.sqrt() - 1
    assert rel.abs().max() < 0.04


def test_forward_chain_matches_q_sample_marginal():
    """Run x_k = sqrt(1 - beta_k) x_{k-1} + sqrt(beta_k) z for k = 1..T and compare the
    moments at a few k with the closed form read off q_sample (coefficient of x0 and noise)."""
    n, g = 20000, gen(0)
    x = TARGET.sample(n, g)
    check = {1, 10, 100, 400, 1000}
    b = torch.linspace(1e-4, 0.02, 1000, dtype=F64)
    for k in range(1, 1001):
        x = (1 - b[k - 1]).sqrt() * x + b[k - 1].sqrt() * torch.randn(n, 2, generator=g, dtype=F64)
        if k in check:
            one = torch.ones(1, 1, dtype=F64)
            a = float(SCHED.q_sample(one, k, torch.zeros_like(one)))
            s = float(SCHED.q_sample(torch.zeros_like(one), k, one))
            assert_moments(x, a * MU, a**2 * SIGMA + s**2 * EYE)
    # and q_sample's own samples at k = 100 have the same law
    xk = SCHED.q_sample(TARGET.sample(n, g), 100, torch.randn(n, 2, generator=g, dtype=F64))
    ab = SCHED.alpha_bar[100]
    assert_moments(xk, ab.sqrt() * MU, ab * SIGMA + (1 - ab) * EYE)


@pytest.mark.parametrize("k,prev", [(2, None), (50, None), (1000, None), (700, 300), (10, 0)])
def test_posterior_matches_bayes(k, prev):
    """q(x_j | x_k, x_0) by Bayes: prior N(sqrt(ab_j) x0, 1 - ab_j), likelihood
    x_k | x_j ~ N(sqrt(a) x_j, 1 - a) with a = ab_k / ab_j; precisions add."""
    g = gen(1)
    x0, xk = torch.randn(5, 2, generator=g, dtype=F64), torch.randn(5, 2, generator=g, dtype=F64)
    j = k - 1 if prev is None else prev
    b = torch.linspace(1e-4, 0.02, 1000, dtype=F64)
    ab = torch.cat([torch.ones(1, dtype=F64), torch.cumprod(1 - b, 0)])
    a = ab[k] / ab[j]
    mean, var = SCHED.posterior_mean_variance(x0, xk, k, prev)
    if j == 0:  # the prior is a point mass at x0
        assert torch.allclose(mean, x0) and torch.allclose(var, torch.zeros(5, dtype=F64))
        return
    prec = 1 / (1 - ab[j]) + a / (1 - a)
    want_mean = (ab[j].sqrt() * x0 / (1 - ab[j]) + a.sqrt() * xk / (1 - a)) / prec
    assert torch.allclose(mean, want_mean, rtol=1e-9, atol=1e-12)
    assert torch.allclose(var, torch.full((5,), float(1 / prec), dtype=F64), rtol=1e-9)


def test_epsilon_to_mean_is_eq_11():
    g = gen(2)
    xk, eps = torch.randn(6, 2, generator=g, dtype=F64), torch.randn(6, 2, generator=g, dtype=F64)
    k = torch.tensor([1, 2, 3, 500, 999, 1000])
    b, ab = SCHED.betas[k][:, None], SCHED.alpha_bar[k][:, None]
    want = (xk - b / (1 - ab).sqrt() * eps) / (1 - b).sqrt()
    assert torch.allclose(SCHED.epsilon_to_mean(eps, xk, k), want, rtol=1e-9, atol=1e-12)


def affine_pushforward(fn):
    """Mean b and covariance A A^T of fn(x_T), x_T ~ N(0, I), for an affine map fn(x) = A x + b
    (every deterministic sampler is affine in x_T with the exact field of a Gaussian target)."""
    b = fn(torch.zeros(1, 2, dtype=F64))[0]
    a = torch.stack([fn(EYE[i:i + 1])[0] - b for i in range(2)], 1)
    return b, a @ a.T


# Mean: the prior N(0, I) ignores the sqrt(ab_T) mu ≈ 0.007 mu in q(x_T), which the samplers
# carry to the output mean as an error of 0.0041 (measured, exact pushforward); allow 0.006.
PRIOR_MEAN_ERR = 0.006


@pytest.mark.parametrize("steps", [100, 200])
def test_ddim_eta0_pushes_the_prior_onto_the_target(steps):
    """Exact moments of the deterministic DDIM map; the covariance error is first order in the
    step (measured 0.026 at 100 steps, 0.013 at 200, 0.0027 at 1000) and must halve."""
    eps = exact_eps_model(SCHED)

    def run(n):
        return lambda x: SCHED.ddim_sample(eps, (1, 2), None, steps=n, dtype=F64, x_init=x).x
    m, c = affine_pushforward(run(steps))
    assert (m - MU).abs().max() < PRIOR_MEAN_ERR
    err, err2 = (c - SIGMA).abs().max(), (affine_pushforward(run(2 * steps))[1] - SIGMA).abs().max()
    assert err < 3.0 / steps and err2 < 0.6 * err


@pytest.mark.parametrize("name,kw,disc_cov", [
    ("beta", dict(), 0.01),                          # measured bias < 0.003 (n = 1e5)
    ("beta_tilde", dict(variance="beta_tilde"), 0.015),  # ~0.009: beta_tilde is too small here
    ("strided_100", dict(steps=100), 0.01),          # ~0.005
    ("ddim_eta1_400", dict(steps=400, eta=1.0), 0.02),  # 0.03 at 200 steps, 0.008 at 800
])
def test_stochastic_samplers_recover_gaussian_target_with_exact_epsilon(name, kw, disc_cov):
    """Monte Carlo moments (n = 6000) within 5 SE plus the stated discretisation allowance."""
    eps = exact_eps_model(SCHED)
    fn = SCHED.ddim_sample if name.startswith("ddim") else SCHED.ancestral_sample
    x = fn(eps, (6000, 2), gen(3), dtype=F64, **kw).x
    assert_moments(x, MU, SIGMA, disc_mean=PRIOR_MEAN_ERR, disc_cov=disc_cov)


def test_ddim_eta0_is_deterministic():
    eps = exact_eps_model(SCHED)
    a = SCHED.ddim_sample(eps, (50, 2), gen(4), steps=20, dtype=F64).x
    b = torch.randn(50, 2, generator=gen(4), dtype=F64)
    for k, j in SCHED.timesteps(20):
        b = SCHED.ddim_step(eps, b, k, j, eta=0.0, generator=None)
    assert torch.equal(a, b)


def test_timesteps():
    assert SCHED.timesteps(None)[:2] == [(1000, 999), (999, 998)] and SCHED.timesteps(None)[-1] == (1, 0)
    pairs = SCHED.timesteps(10)
    assert len(pairs) == 10 and pairs[0][0] == 1000 and pairs[-1] == (1, 0)
    assert TINY.timesteps([2, 4]) == [(4, 2), (2, 0)]


def test_samplers_call_the_model_at_t_equal_1_minus_k_over_T():
    seen = []

    def model(x, t):
        seen.append(t.tolist())
        return torch.zeros_like(x)
    TINY.ancestral_sample(model, (3, 2), gen(0), steps=[2, 4])
    TINY.ddim_sample(model, (3, 2), gen(0), steps=[1, 3, 4])
    decoder_nll(TINY, model, torch.zeros(3, 2), torch.zeros(3, 2))
    step_kl(TINY, model, torch.zeros(3, 2), torch.tensor([2, 3, 4]), torch.zeros(3, 2))
    assert seen == [[0.0] * 3, [0.5] * 3, [0.0] * 3, [0.25] * 3, [0.75] * 3, [0.75] * 3,
                    [0.5, 0.25, 0.0]]


def test_velocity_from_epsilon_model_samples_the_target_with_ode_solvers():
    """Exact continuous epsilon on the matching VP path, converted to a velocity, rk4 from 0 to
    t_max: the exact moments of the (affine) ODE map equal the path's marginal at t_max up to
    the prior's neglected alpha(0) mu (mean) and rk4's error (covariance, 1e-4)."""
    path = SCHED.continuous_path()
    v = velocity_from_epsilon_model(lambda x, t: TARGET.epsilon_mean(path, x, t), path)
    m, c = affine_pushforward(lambda x: solvers.integrate(v, x, "rk4", 100, 0.0, path.t_max).x)
    m_want, c_want = TARGET.marginal(path, path.t_max)
    assert (m - m_want).abs().max() < PRIOR_MEAN_ERR
    assert (c - c_want).abs().max() < 1e-4


def test_kl_gaussians_by_hand():
    # KL(N(1, 4) || N(0, 1)) = ½ (log(1/4) + (4 + 1) / 1 - 1)
    got = kl_gaussians(torch.tensor(1.0), torch.tensor(4.0), torch.tensor(0.0), torch.tensor(1.0))
    assert float(got) == pytest.approx(0.5 * (math.log(0.25) + 4), rel=1e-6)
    assert float(kl_gaussians(torch.tensor(0.3), 2.0, torch.tensor(0.3), 2.0)) == pytest.approx(0, abs=1e-7)


def test_prior_kl_by_hand():
    ab = 0.9 * 0.8 * 0.7 * 0.6  # tiny schedule, alpha_bar_4
    x0 = torch.tensor([[0.5, -1.0]], dtype=F64)
    want = sum(0.5 * (-math.log(1 - ab) + (1 - ab) + ab * v * v - 1) for v in (0.5, -1.0))
    assert float(prior_kl(TINY, x0)) == pytest.approx(want, rel=1e-12)


@pytest.mark.parametrize("variance", ["beta", "beta_tilde"])
def test_step_kl_is_eq_12_by_hand(variance):
    """L_{k-1} = beta_k² / (2 s² alpha_k (1 - ab_k)) ||eps - eps_theta||² + C, C = 0 for s² =
    beta_tilde and C = ½ D (log(beta/beta_tilde) + beta_tilde/beta - 1) for s² = beta
    (Ho et al., 2020, eq. 12), with a constant eps_theta = c on the tiny schedule at k = 3."""
    x0 = torch.tensor([[0.2, -0.7]], dtype=F64)
    noise = torch.tensor([[1.1, 0.4]], dtype=F64)
    c = torch.tensor([0.3, -0.2], dtype=F64)
    beta, alpha, ab3, ab2 = 0.3, 0.7, 0.9 * 0.8 * 0.7, 0.9 * 0.8
    beta_tilde = (1 - ab2) / (1 - ab3) * beta
    s2 = beta if variance == "beta" else beta_tilde
    sq = float(((noise - c) ** 2).sum())
    want = beta**2 / (2 * s2 * alpha * (1 - ab3)) * sq
    if variance == "beta":
        want += 0.5 * 2 * (math.log(beta / beta_tilde) + beta_tilde / beta - 1)
    got = step_kl(TINY, lambda x, t: c.expand_as(x), x0, 3, noise, variance)
    assert float(got) == pytest.approx(want, rel=1e-10)


def phi(z: float) -> float:
    return 0.5 * (1 + math.erf(z / math.sqrt(2)))


def test_discretized_gaussian_log_likelihood_by_hand():
    d = 1 / 255
    x = torch.tensor([-1.0, -1 + 2 * 100 / 255, 1.0], dtype=F64)
    mean = torch.tensor([-0.9, -0.2, 0.95], dtype=F64)
    got = discretized_gaussian_log_likelihood(x, mean, 0.1)
    want = [math.log(phi((-1 + d + 0.9) / 0.1)),
            math.log(phi((float(x[1]) + d + 0.2) / 0.1) - phi((float(x[1]) - d + 0.2) / 0.1)),
            math.log(1 - phi((1 - d - 0.95) / 0.1))]
    assert got.tolist() == pytest.approx(want, rel=1e-9)
    # the 256 bins carry all the mass; a far tail stays finite
    grid = torch.linspace(-1, 1, 256, dtype=F64)
    for m, s in [(0.3, 0.05), (-0.99, 0.5), (0.0, 1e-3)]:
        ll = discretized_gaussian_log_likelihood(grid, torch.full_like(grid, m), s)
        assert float(torch.logsumexp(ll, 0)) == pytest.approx(0, abs=1e-9)
    far = discretized_gaussian_log_likelihood(torch.tensor([0.9]), torch.tensor([-0.9]), 0.01)
    assert torch.isfinite(far).all() and far.item() < -1e3


def test_decoder_nll_by_hand():
    """eps_theta = 0: mu_theta = x_1 / sqrt(alpha_1) = x_0 + sqrt(beta_1 / alpha_1) eps, std sqrt(beta_1)."""
    x0 = torch.tensor([[-1 + 2 * 130 / 255]], dtype=F64)
    noise = torch.tensor([[0.7]], dtype=F64)
    b = 0.1
    mean, v, d = float(x0) + math.sqrt(b / (1 - b)) * 0.7, float(x0), 1 / 255
    want = -math.log(phi((v + d - mean) / math.sqrt(b)) - phi((v - d - mean) / math.sqrt(b)))
    got = decoder_nll(TINY, lambda x, t: torch.zeros_like(x), x0, noise)
    assert float(got) == pytest.approx(want, rel=1e-9)


def test_nll_bound_is_the_sum_of_its_terms():
    model = lambda x, t: 0.1 * x + t[:, None]
    x0 = torch.tensor([[0.2, -0.4], [0.9, 0.1]], dtype=F64)
    got = nll_bound(TINY, model, x0, gen(6))
    g = gen(6)
    noises = [torch.randn(2, 2, generator=g, dtype=F64) for _ in range(4)]
    want = prior_kl(TINY, x0) + decoder_nll(TINY, model, x0, noises[0])
    for k in (2, 3, 4):
        want = want + step_kl(TINY, model, x0, k, noises[k - 1])
    assert torch.allclose(got, want, rtol=1e-12)


def test_vlb_weight_is_the_step_kl_per_unit_epsilon_error():
    """L_{k-1}(model) - L_{k-1}(oracle) = lambda_k ||eps - eps_model||² (eq. 12), for k >= 2."""
    x0 = torch.tensor([[0.3, -0.7], [0.0, 0.5]], dtype=F64)
    noise = torch.tensor([[0.4, 1.1], [-0.6, 0.2]], dtype=F64)
    shift = torch.tensor([0.25, -0.5], dtype=F64)
    for k in (2, 3, 4):
        ab = float(TINY.alpha_bar[k])

        def oracle(x, t, ab=ab):
            return (x - math.sqrt(ab) * x0) / math.sqrt(1 - ab)
        off = lambda x, t: oracle(x, t) + shift
        lam = float(TINY.vlb_weight(torch.tensor([k]))[0])
        want = lam * float(shift.pow(2).sum())
        got = step_kl(TINY, off, x0, k, noise) - step_kl(TINY, oracle, x0, k, noise)
        assert torch.allclose(got, torch.full((2,), want, dtype=F64), rtol=1e-10)
    beta, alpha = 0.1, 0.9  # k = 1: beta_1 / (2 alpha_1 beta_1) = 1 / (2 alpha_1)
    assert float(TINY.vlb_weight(torch.tensor([1]))[0]) == pytest.approx(beta / (2 * alpha * beta))


def test_l_vlb_is_weighted_l_simple():
    model = lambda x, t: 0.3 * x - t[:, None]
    x0 = torch.randn(64, 2, generator=gen(11), dtype=F64)
    loss, t = TINY.l_vlb(model, x0, gen(12))
    g = gen(12)
    k = torch.randint(1, 5, (64,), generator=g)
    noise = torch.randn(64, 2, generator=g, dtype=F64)
    err = (model(TINY.q_sample(x0, k, noise), TINY.t_of_k(k)) - noise).pow(2).sum(1)
    assert torch.allclose(loss, 4 * TINY.vlb_weight(k) * err, rtol=1e-12)
    assert torch.allclose(t, 1 - k.double() / 4)


def test_l_vlb_importance_sampling_keeps_the_expectation_and_cuts_the_variance():
    """k ~ lambda_k / sum(lambda) weighted by sum(lambda) estimates the same sum as k ~ U weighted
    by T lambda_k (T = 1000 schedule, a model with k-dependent error), with a smaller spread."""
    model = lambda x, t: 0.2 * x + 0.5 * t[:, None]
    x0 = torch.randn(40000, 2, generator=gen(15), dtype=F64)
    uni, _ = SCHED.l_vlb(model, x0, gen(16))
    imp, _ = SCHED.l_vlb(model, x0, gen(17), importance=True)
    se = math.sqrt(float(uni.var() + imp.var()) / len(x0))
    assert abs(float(uni.mean() - imp.mean())) < 5 * se
    assert float(imp.std()) < 0.5 * float(uni.std())


def test_nll_bound_monte_carlo_terms_average_to_the_full_sum():
    """terms=m estimates the middle sum without bias: averaged over many noise draws it matches
    the full bound's average (T = 4, 2 dims; SE from the draws' spread)."""
    model = lambda x, t: 0.1 * x + t[:, None]
    x0 = torch.tensor([[0.2, -0.4]], dtype=F64).expand(20000, 2)
    full = nll_bound(TINY, model, x0, gen(13), bin_width=None)
    mc = nll_bound(TINY, model, x0, gen(14), bin_width=None, terms=1)
    se = math.sqrt(float(full.var() + mc.var()) / 20000)
    assert abs(float(full.mean() - mc.mean())) < 5 * se
    assert float(mc.std()) > float(full.std())  # one term per draw: noisier, same mean
    with pytest.raises(ValueError, match="terms must be a positive integer"):
        nll_bound(TINY, model, x0[:2], gen(0), terms=0)


def test_stratified_terms_average_to_the_full_sum():
    """terms=m with several strata (T = 30): unbiased against the full sum, and less spread
    than one uniform term per draw."""
    sched = DDPMSchedule(T=30, beta_start=0.01, beta_end=0.3)
    model = lambda x, t: 0.3 * x + t[:, None]
    x0 = torch.tensor([[0.2, -0.4]], dtype=F64).expand(20000, 2)
    full = nll_bound(sched, model, x0, gen(21), bin_width=None)
    strat = nll_bound(sched, model, x0, gen(22), bin_width=None, terms=6)
    one = nll_bound(sched, model, x0, gen(23), bin_width=None, terms=1)
    se = math.sqrt(float(full.var() + strat.var()) / 20000)
    assert abs(float(full.mean() - strat.mean())) < 5 * se
    assert float(strat.std()) < 0.7 * float(one.std())


def test_bound_strata_cover_the_middle_steps_once():
    edges = bound_strata(SCHED, 20)
    assert int(edges[0]) == 2 and int(edges[-1]) == SCHED.T + 1
    assert bool((edges[1:] > edges[:-1]).all()) and len(edges) <= 21
    assert int(edges[1] - edges[0]) == 1  # the largest terms (k = 2) are evaluated exactly
    assert len(bound_strata(TINY, 50)) == 4  # more strata than steps: one per step, 2, 3, 4
    with pytest.raises(ValueError, match="terms must be a positive integer"):
        bound_strata(SCHED, 0)


def test_fitted_step_variances_match_the_true_reverse_variance_of_a_gaussian():
    """1D data N(0, s²) with its exact epsilon: mu_theta is the exact posterior mean, so the
    fitted sigma_k² must equal beta_tilde_k + c_k² Var(x_0 | x_k), with c_k the coefficient of
    x_0 in mu_tilde and Var(x_0 | x_k) = s² (1 - ab_k) / (ab_k s² + 1 - ab_k)."""
    s2 = 0.04
    ab = SCHED.alpha_bar

    def exact_eps(x, t):
        k = torch.round((1 - t) * SCHED.T).long()
        a = ab[k].to(x)[:, None]
        return (1 - a).sqrt() * x / (a * s2 + 1 - a)
    x0 = math.sqrt(s2) * torch.randn(40000, 1, generator=gen(30), dtype=F64)
    got = fitted_step_variances(SCHED, exact_eps, x0, gen(31), grid=12)
    for k in (2, 10, 100, 700):
        a_k, a_j = ab[k], ab[k - 1]
        c0 = a_j.sqrt() * SCHED.betas[k] / (1 - a_k)
        beta_tilde = (1 - a_j) / (1 - a_k) * SCHED.betas[k]
        want = beta_tilde + c0 ** 2 * s2 * (1 - a_k) / (a_k * s2 + 1 - a_k)
        assert float(got[k]) == pytest.approx(float(want), rel=0.05), k


def test_fitted_variances_lower_the_bound_of_an_imperfect_model():
    """A biased epsilon model: the fitted per-step variances give a smaller bound (on fresh
    data) than both of Ho et al.'s fixed choices, because they minimise each KL term."""
    sched = DDPMSchedule(T=50, beta_start=1e-3, beta_end=0.2)
    model = lambda x, t: 0.5 * x + 0.2
    x0 = 0.3 * torch.randn(4000, 2, generator=gen(40), dtype=F64)
    fitted = fitted_step_variances(sched, model, x0, gen(41), grid=49)
    x_new = 0.3 * torch.randn(4000, 2, generator=gen(42), dtype=F64)
    got = nll_bound(sched, model, x_new, gen(43), variance=fitted, bin_width=None)
    for v in ("beta", "beta_tilde"):  # same noise draws: a paired difference per point
        diff = nll_bound(sched, model, x_new, gen(43), variance=v, bin_width=None) - got
        assert float(diff.mean()) > 5 * float(diff.std()) / math.sqrt(len(diff)), v
    with pytest.raises(ValueError, match="per-step variances must have shape"):
        sched.model_variance(x0[:3], 5, variance=fitted[:10])
    with pytest.raises(ValueError, match="single steps"):
        sched.model_variance(x0[:3], 5, prev=2, variance=fitted)


def test_fitted_decoder_std_minimises_the_decoder_term():
    """The returned std gives a mean L_0 no larger than sqrt(beta_1) or its neighbours on the
    grid; for a model whose x_1 -> x_0 error is ~0.004 on 256 levels it shrinks below the
    default sqrt(beta_1) = 0.01 of Ho et al."""
    bins = unit_interval_bins(256)
    levels = torch.randint(0, 256, (2000, 4), generator=gen(50))
    x0 = ((2 * levels.double() + 1) / 256 - 1)

    def near_exact(x, t):  # predicts the true noise of x_1 up to a small error
        return (x - SCHED.alpha_bar[1].sqrt() * x0) / (1 - SCHED.alpha_bar[1]).sqrt() * 0.6
    std = fitted_decoder_std(SCHED, near_exact, x0, gen(51), **bins)
    g = lambda s: float(decoder_nll(SCHED, near_exact, x0, torch.randn(x0.shape, generator=gen(51),
                                                                     dtype=F64), std=s, **bins).mean())
    base = math.sqrt(float(SCHED.betas[1]))
    assert std < base
    assert g(std) <= min(g(base), g(std * 1.2), g(std / 1.2)) + 1e-9


def test_level_decoder_by_hand_and_normalised():
    """K = 4 levels -0.75, -0.25, 0.25, 0.75: p(v_i) = pi_i N(v_i; mean, s²) / sum_j (...)."""
    prior = torch.tensor([0.5, 0.2, 0.2, 0.1], dtype=F64)
    dec = LevelDecoder(4, prior.log(), 0.3)
    mean = torch.tensor([[0.1]], dtype=F64)
    w = prior * torch.exp(-(torch.tensor([-0.75, -0.25, 0.25, 0.75], dtype=F64) - 0.1) ** 2 / (2 * 0.09))
    for i, v in enumerate((-0.75, -0.25, 0.25, 0.75)):
        got = dec.log_prob(torch.tensor([[v]], dtype=F64), mean)
        assert float(got) == pytest.approx(math.log(w[i] / w.sum()), rel=1e-12)
    x = torch.tensor([-0.75, -0.25, 0.25, 0.75], dtype=F64)
    for m in (-2.0, 0.0, 0.6):
        total = dec.log_prob(x, torch.full((4,), m, dtype=F64)).exp().sum()
        assert float(total) == pytest.approx(1.0, abs=1e-12)


def test_fitted_level_decoder_uses_the_level_histogram():
    """Data that are black (level 0) 80% of the time, with a model whose x_1 -> x_0 mean is
    off by N(0, 0.01²) everywhere: the fitted prior is the add-one histogram, and the
    categorical decoder beats the best Gaussian decoder (its bound is lower) because it puts
    ~all mass of a near-black mean on level 0."""
    bins = unit_interval_bins(256)
    g = gen(70)
    black = torch.rand(3000, 6, generator=g) < 0.8
    levels = torch.where(black, 0, torch.randint(0, 256, (3000, 6), generator=g))
    x0 = (2 * levels.double() + 1) / 256 - 1
    err = 0.01 * torch.randn(x0.shape, generator=g, dtype=F64)

    def model(x, t):  # the epsilon that makes mu_theta(x_1, 1) = x0 + err
        return (x - SCHED.alpha_bar[1].sqrt() * (x0 + err)) / (1 - SCHED.alpha_bar[1]).sqrt()
    dec = fitted_level_decoder(SCHED, model, x0, gen(71), n_levels=256)
    counts = torch.bincount(levels.flatten(), minlength=256).double() + 1
    assert torch.allclose(dec.log_prior, (counts / counts.sum()).log(), atol=1e-12)
    std = fitted_decoder_std(SCHED, model, x0, gen(71), **bins)
    noise = torch.randn(x0.shape, generator=gen(72), dtype=F64)
    l_cat = float(decoder_nll(SCHED, model, x0, noise, decoder=dec).mean())
    l_gauss = float(decoder_nll(SCHED, model, x0, noise, std=std, **bins).mean())
    assert l_cat < l_gauss - 0.5  # nats per 6-pixel row
    assert float(nll_bound(SCHED, model, x0, gen(3), decoder=dec, terms=3).mean()) < float(
        nll_bound(SCHED, model, x0, gen(3), decoder_std=std, terms=3, **bins).mean())


def test_level_decoder_rejects_bad_arguments():
    with pytest.raises(ValueError, match="n_levels"):
        LevelDecoder(1, torch.zeros(1), 0.1)
    with pytest.raises(ValueError, match="log-probabilities"):
        LevelDecoder(3, torch.zeros(4), 0.1)
    with pytest.raises(ValueError, match="std"):
        LevelDecoder(3, torch.zeros(3), 0.0)


def test_unit_interval_bins_sum_to_one_over_all_levels():
    """The decoder's bins for data.to_unit_interval partition the line: the probabilities of the
    K levels sum to 1 for any mean (a wrong width, or edges not reaching ±inf, would not)."""
    from minigen.data.images import to_unit_interval
    K = 17
    bins = unit_interval_bins(K)
    x = to_unit_interval(torch.arange(K), K).double()[:, None]
    for m in (-1.3, 0.0, 0.4, 0.99):
        p = discretized_gaussian_log_likelihood(x, torch.full_like(x, m), 0.2, **bins).exp()
        assert float(p.sum()) == pytest.approx(1.0, abs=1e-7)  # log-diff clamps at 1e-12
    with pytest.raises(ValueError, match="n_levels must be an integer >= 2"):
        unit_interval_bins(1)


def test_continuous_decoder_is_a_gaussian_density():
    x0 = torch.tensor([[0.3]], dtype=F64)
    noise = torch.tensor([[0.7]], dtype=F64)
    b = 0.1  # zero model: mu = x_1 / sqrt(alpha_1), x_1 = sqrt(1 - b) x0 + sqrt(b) noise
    mean = (math.sqrt(1 - b) * 0.3 + math.sqrt(b) * 0.7) / math.sqrt(1 - b)
    want = 0.5 * ((0.3 - mean) ** 2 / b + math.log(2 * math.pi * b))
    got = decoder_nll_continuous(TINY, lambda x, t: torch.zeros_like(x), x0, noise)
    assert float(got) == pytest.approx(want, rel=1e-12)


def test_l_simple_zero_for_the_true_noise_and_one_for_a_zero_model():
    """With x_0 = 0, x_k = sqrt(1 - ab_k) eps, so x / sqrt(1 - ab_k) is the noise exactly
    (this also checks the time map t = 1 - k/T); a zero model scores E eps² = 1."""
    x0 = torch.zeros(4000, 3, dtype=F64)

    def oracle(x, t):
        k = torch.round((1 - t) * SCHED.T).long()
        return x / (1 - SCHED.alpha_bar[k]).sqrt()[:, None]
    loss, t = SCHED.l_simple(oracle, x0, gen(7))
    assert loss.max() < 1e-20 and t.min() >= 0 and t.max() < 1
    loss0, _ = SCHED.l_simple(lambda x, t: torch.zeros_like(x), x0, gen(7))
    assert float(loss0.mean()) == pytest.approx(1.0, abs=5 * math.sqrt(2 / 3 / 4000))


def test_bad_inputs_raise():
    with pytest.raises(ValueError, match="T must be a positive integer"):
        DDPMSchedule(T=0)
    with pytest.raises(ValueError, match="need 0 < beta_start <= beta_end < 1"):
        DDPMSchedule(beta_start=0.02, beta_end=1e-4)
    with pytest.raises(ValueError, match="need 0 < beta_start <= beta_end < 1"):
        DDPMSchedule(beta_end=1.0)
    x = torch.zeros(3, 2)
    with pytest.raises(ValueError, match=r"steps must lie in \[0, 1000\]"):
        SCHED.q_sample(x, 1001, x)
    with pytest.raises(ValueError, match="DDPM steps must be integers"):
        SCHED.q_sample(x, 0.5, x)
    with pytest.raises(ValueError, match=r"k must be an int or have shape \(3,\)"):
        SCHED.q_sample(x, torch.tensor([1, 2]), x)
    with pytest.raises(ValueError, match="noise must have the shape of the data"):
        SCHED.q_sample(x, 1, torch.zeros(3, 3))
    with pytest.raises(ValueError, match=r"steps must lie in \[1, 1000\]"):
        SCHED.posterior_mean_variance(x, x, 0)
    with pytest.raises(ValueError, match="previous step must be smaller"):
        SCHED.posterior_mean_variance(x, x, 5, prev=5)
    with pytest.raises(ValueError, match="unknown variance 'learned'"):
        SCHED.model_variance(x, 5, variance="learned")
    with pytest.raises(ValueError, match=r"steps must lie in \[2, 1000\]"):
        step_kl(SCHED, lambda x, t: x, x, 1, x)
    with pytest.raises(ValueError, match=r"steps must lie in \[1, 1000\]"):
        SCHED.timesteps(0)
    with pytest.raises(ValueError, match="strictly increasing"):
        SCHED.timesteps([10, 5])
    with pytest.raises(ValueError, match="strictly increasing"):
        SCHED.timesteps([5, 1001])
    with pytest.raises(ValueError, match="eta must be >= 0"):
        SCHED.ddim_sample(lambda x, t: x, (2, 2), gen(0), steps=5, eta=-0.1)
    with pytest.raises(ValueError, match="positive variances"):
        kl_gaussians(torch.zeros(1), torch.zeros(1), torch.zeros(1), torch.ones(1))
    with pytest.raises(ValueError, match="bin_width must be > 0"):
        discretized_gaussian_log_likelihood(x, x, 1.0, bin_width=0)
    with pytest.raises(ValueError, match="std must be > 0"):
        discretized_gaussian_log_likelihood(x, x, 0.0)
