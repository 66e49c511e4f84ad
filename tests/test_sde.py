"""Score SDEs (minigen.sde) against closed forms: the diffusion coefficients of Song et al.
(2021), simulation of the forward process, samplers driven by the exact score of a 2D
Gaussian target, and the probability-flow likelihood.

Monte Carlo tolerances: 5 standard errors from the reference covariance plus a stated
discretisation allowance (measured once at n = 1e5 and quoted next to each).
"""

from __future__ import annotations

import math

import pytest
import torch
from moments import assert_moments

from minigen.eval.gaussian import GaussianTarget
from minigen.recipe import likelihood
from minigen.recipe import ode_solvers as solvers
from minigen.recipe.paths import LinearPath, VEPath, VPCosinePath, VPLinearBetaPath
from minigen.recipe.sde import VESDE, VPSDE, SubVPSDE
from minigen.recipe.sde_solvers import euler_maruyama, predictor_corrector
from minigen.recipe.wrappers import probability_flow_velocity

torch.set_num_threads(1)
F64 = torch.float64
MU = torch.tensor([1.0, -0.5], dtype=F64)
L = torch.tensor([[0.8, 0.0], [0.4, 0.5]], dtype=F64)
SIGMA = L @ L.T
TARGET = GaussianTarget(MU, SIGMA)
EYE = torch.eye(2, dtype=F64)
SDES = {"vp": VPSDE, "subvp": SubVPSDE, "ve": VESDE}
T_GRID = torch.tensor([0.0, 0.1, 0.37, 0.5, 0.8, 0.999, 1.0], dtype=F64)


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def score_fn(sde):
    return lambda x, t: TARGET.score(sde.path, x, t)


def test_marginals_are_the_paths():
    """VP and VE: (alpha, sigma) of the path; sub-VP: the VP alpha with std 1 - alpha²."""
    x1 = torch.randn(len(T_GRID), 2, generator=gen(0), dtype=F64)
    for sde, path in [(VPSDE(), VPLinearBetaPath()), (VESDE(), VEPath())]:
        m, s = sde.marginal(x1, T_GRID)
        assert torch.allclose(m, path.alpha(T_GRID)[:, None] * x1)
        assert torch.allclose(s, path.sigma(T_GRID))
    m, s = SubVPSDE().marginal(x1, T_GRID)
    a = VPLinearBetaPath().alpha(T_GRID)
    assert torch.allclose(m, a[:, None] * x1) and torch.allclose(s, 1 - a**2)
    assert torch.all(s <= VPLinearBetaPath().sigma(T_GRID) + 1e-12)


def test_drift_and_diffusion_are_song_et_al():
    """In paper time s = 1 - t: VP f = -½ beta(s) x, g² = beta(s); sub-VP g² =
    beta(s) (1 - exp(-2 ∫_0^s beta)); VE f = 0, g² = d sigma²/ds (§3.4)."""
    b0, b1 = 0.1, 20.0
    s = 1 - T_GRID
    beta = b0 + s * (b1 - b0)
    integral = b0 * s + 0.5 * (b1 - b0) * s**2
    x = torch.randn(len(T_GRID), 2, generator=gen(1), dtype=F64)
    vp, subvp, ve = VPSDE(), SubVPSDE(), VESDE()
    assert torch.allclose(vp.drift(x, T_GRID), -0.5 * beta[:, None] * x)
    assert torch.allclose(subvp.drift(x, T_GRID), -0.5 * beta[:, None] * x)
    assert torch.allclose(vp.diffusion(T_GRID) ** 2, beta)
    assert torch.allclose(subvp.diffusion(T_GRID) ** 2, beta * (1 - torch.exp(-2 * integral)))
    smin, smax = 0.01, 50.0
    sig = smax * (smin / smax) ** T_GRID
    assert torch.allclose(ve.drift(x, T_GRID), torch.zeros_like(x))
    assert torch.allclose(ve.diffusion(T_GRID) ** 2, 2 * sig**2 * math.log(smax / smin))
    # a VP path other than linear-beta gives the same identity g² = 2 alpha'/alpha = beta
    cos = VPSDE(VPCosinePath())
    t = torch.tensor([0.3, 0.7], dtype=F64)
    assert torch.allclose(cos.diffusion(t) ** 2, math.pi * torch.tan(0.5 * math.pi * t) ** -1)


@pytest.mark.parametrize("name", list(SDES))
def test_forward_simulation_matches_marginal(name):
    """Euler–Maruyama of the forward SDE in paper time (s = 1 - t, i.e. t decreasing):
    x_{t-h} = x_t + f(x_t, t) h + g(t) sqrt(h) z, from the t = 1 marginal of the path, with
    1000 steps and n = 20000. Allowance 2 % of the largest covariance entry (left-point
    g² underestimates VE's growing variance by ~0.9 %)."""
    sde, n, steps = SDES[name](), 20000, 1000
    g = gen(2)
    x1 = TARGET.sample(n, g)
    m, s = sde.marginal(x1, torch.ones(n, dtype=F64))
    x = m + s[:, None] * torch.randn(n, 2, generator=g, dtype=F64)
    h = 1.0 / steps
    checks = {700: 0.7, 300: 0.3, 0: 0.0}
    for i in range(steps, 0, -1):
        t = torch.full((n,), i * h, dtype=F64)
        x = x + sde.drift(x, t) * h + sde.diffusion(t)[:, None] * math.sqrt(h) * torch.randn(
            n, 2, generator=g, dtype=F64)
        if i - 1 in checks:
            tt = torch.tensor(checks[i - 1], dtype=F64)
            a, std = sde.path.alpha(tt), sde.marginal(MU[None], tt)[1]
            cov = a**2 * SIGMA + std**2 * EYE
            assert_moments(x, a * MU, cov, disc_mean=0.02 * std, disc_cov=0.02 * cov.abs().max())


# Measured biases at n = 1e5, 200 steps (mean, cov): EM <= (0.003, 0.003); PC <= (0.002, 0.008):
# the Langevin corrector's own O(step) bias, which does not shrink with more predictor steps.
@pytest.mark.parametrize("name", list(SDES))
@pytest.mark.parametrize("sampler,disc_cov", [("em", 0.01), ("pc", 0.015)])
def test_sde_samplers_recover_the_target_with_the_exact_score(name, sampler, disc_cov):
    sde = SDES[name]()
    fn = euler_maruyama if sampler == "em" else predictor_corrector
    x = fn(sde, score_fn(sde), (6000, 2), gen(3), steps=200, dtype=F64).x
    m, c = TARGET.marginal(sde.path, sde.t_max)  # the target up to sigma(t_max)² <= 1e-4
    assert_moments(x, m, c, disc_mean=0.01, disc_cov=disc_cov)


def test_predictor_corrector_without_corrector_is_euler_maruyama():
    sde = VPSDE()
    a = euler_maruyama(sde, score_fn(sde), (100, 2), gen(4), steps=20, dtype=F64)
    b = predictor_corrector(sde, score_fn(sde), (100, 2), gen(4), steps=20, n_corrector=0, dtype=F64)
    assert torch.equal(a.x, b.x)
    assert a.nfe == b.nfe == 20


@pytest.mark.parametrize("name", list(SDES))
def test_probability_flow_ode_pushes_p0_onto_the_target(name):
    """Exact moments of the affine rk4 map (50 steps) applied to the exact t = 0 marginal
    N(m0, C0): they equal the t_max marginal (the target up to sigma(t_max)² <= 1e-4) to 1e-3.
    From the prior instead, the neglected data mean alpha(0) mu moves the output mean by about
    alpha(0) mu (VP) or Sigma^{1/2} mu / sigma_max (VE): 0.013 here, within 0.02."""
    sde = SDES[name]()
    v = probability_flow_velocity(sde, score_fn(sde))
    fn = lambda x: solvers.integrate(v, x, "rk4", 50, sde.t_min, sde.t_max).x
    m0, c0 = TARGET.marginal(sde.path, sde.t_min)
    b = fn(m0[None])[0]
    jac = torch.stack([fn(m0[None] + EYE[i:i + 1])[0] - b for i in range(2)], 1)
    m, c = TARGET.marginal(sde.path, sde.t_max)
    assert (b - m).abs().max() < 1e-3
    assert (jac @ c0 @ jac.T - c).abs().max() < 1e-3
    assert (fn(torch.zeros(1, 2, dtype=F64))[0] - m).abs().max() < 0.02


@pytest.mark.parametrize("name", list(SDES))
def test_probability_flow_log_likelihood_is_the_closed_form(name):
    """log p_1(x) through the probability-flow ODE (exact divergence, rk4, 50 steps) equals the
    closed form of the path's t = 1 marginal (the target, plus sigma_min² I for VE) when the
    source density is the exact t = 0 marginal; with ``prior_log_prob`` (which neglects the
    data term alpha(0) x1, and for VE the data covariance next to sigma_max² I) within 0.1 nats."""
    sde = SDES[name]()
    v = probability_flow_velocity(sde, score_fn(sde))
    x = TARGET.sample(64, gen(5))
    want = TARGET.marginal_log_prob(sde.path, x, 1.0)
    exact_source = lambda z: TARGET.marginal_log_prob(sde.path, z, 0.0)
    got = likelihood.log_likelihood(v, x, exact_source, steps=50)
    assert (got - want).abs().max() < 5e-4  # rk4 error, measured <= 1e-4
    got_prior = likelihood.log_likelihood(v, x, sde.prior_log_prob, steps=50)
    assert (got_prior - want).abs().max() < 0.1


def test_reverse_drift_family():
    """e = g: -f + g² score (reverse SDE); e = 0: -f + ½ g² score (probability flow)."""
    sde = VPSDE()
    x = torch.randn(5, 2, generator=gen(6), dtype=F64)
    t = torch.rand(5, generator=gen(7), dtype=F64) * 0.9
    sc = TARGET.score(sde.path, x, t)
    g2 = sde.diffusion(t)[:, None] ** 2
    assert torch.allclose(sde.reverse_drift(x, t, sc), -sde.drift(x, t) + g2 * sc)
    assert torch.allclose(sde.reverse_drift(x, t, sc, diffusion=0.0), -sde.drift(x, t) + 0.5 * g2 * sc)
    assert torch.allclose(probability_flow_velocity(sde, score_fn(sde))(x, t),
                          -sde.drift(x, t) + 0.5 * g2 * sc)
    # the probability-flow velocity is the path's marginal velocity (chapter 00)
    assert torch.allclose(probability_flow_velocity(sde, score_fn(sde))(x, t),
                          TARGET.velocity(sde.path, x, t), atol=1e-9)


@pytest.mark.parametrize("name", list(SDES))
def test_prior(name):
    sde = SDES[name]()
    want_std = 50.0 if name == "ve" else 1.0
    assert sde.prior_std == pytest.approx(want_std, rel=1e-4)
    x = sde.prior_sample((20000, 2), gen(8), dtype=F64)
    assert float(x.std()) == pytest.approx(sde.prior_std, rel=0.02)
    z = torch.randn(7, 3, 2, generator=gen(9), dtype=F64)
    dist = torch.distributions.Normal(0.0, sde.prior_std)
    assert torch.allclose(sde.prior_log_prob(z), dist.log_prob(z).sum((1, 2)))


def test_bad_inputs_raise():
    with pytest.raises(ValueError, match="VESDE needs a path with alpha ≡ 1"):
        VESDE(VPLinearBetaPath())
    with pytest.raises(ValueError, match="VPSDE needs a variance-preserving path"):
        VPSDE(VEPath())
    with pytest.raises(ValueError, match="VPSDE needs a variance-preserving path"):
        SubVPSDE(LinearPath())
    with pytest.raises(ValueError, match="needs a N\\(0, I\\) source"):
        VPSDE(VPLinearBetaPath(source_is_gaussian=False))
    sde, f = VPSDE(), lambda x, t: -x
    with pytest.raises(ValueError, match="steps must be a positive integer"):
        euler_maruyama(sde, f, (2, 2), gen(0), steps=0)
    with pytest.raises(ValueError, match="diffusion_scale must be >= 0"):
        euler_maruyama(sde, f, (2, 2), gen(0), steps=5, diffusion_scale=-1.0)
    with pytest.raises(ValueError, match="snr must be > 0"):
        predictor_corrector(sde, f, (2, 2), gen(0), steps=5, snr=0.0)
    with pytest.raises(ValueError, match="n_corrector must be a non-negative integer"):
        predictor_corrector(sde, f, (2, 2), gen(0), steps=5, n_corrector=-1)
