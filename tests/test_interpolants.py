"""Stochastic interpolants: boundaries, the velocity target's derivative, the closed-form
fields, the ODE/SDE family's shared marginals and bad inputs."""

from __future__ import annotations

import pytest
import torch
from moments import assert_moments

from minigen.eval.gaussian import GaussianTarget
from minigen.recipe.gamma import BrownianGamma, make_gamma
from minigen.recipe.paths import BridgePath, Interpolant, LinearPath, VPCosinePath
from minigen.transport import interpolants as si

torch.set_num_threads(1)
F64 = torch.float64
BASES = {"linear": LinearPath, "trig": VPCosinePath}
GAMMAS = [("zero", 1.0), ("brownian", 1.0), ("brownian", 0.5), ("sin2", 0.7)]


def interp(base, gamma, a):
    return Interpolant(BASES[base](), make_gamma(gamma, a), source_is_gaussian=False)


def batch(n=64, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(n, 2, generator=g, dtype=F64) for _ in range(3)]


@pytest.mark.parametrize("base", BASES)
@pytest.mark.parametrize("gamma,a", GAMMAS)
def test_boundaries(base, gamma, a):
    it = interp(base, gamma, a)
    x0, x1, z = batch()
    ends = it.gamma(torch.tensor([0.0, 1.0], dtype=F64))
    assert ends.abs().max() < 1e-15
    assert torch.allclose(it.sample(x0, x1, torch.zeros(64, dtype=F64), z).xt, x0, atol=1e-12)
    assert torch.allclose(it.sample(x0, x1, torch.ones(64, dtype=F64), z).xt, x1, atol=1e-12)


@pytest.mark.parametrize("base", BASES)
@pytest.mark.parametrize("gamma,a", GAMMAS)
def test_velocity_target_is_the_time_derivative(base, gamma, a):
    it = interp(base, gamma, a)
    x0, x1, z = batch()
    h = 1e-6
    for t in (0.1, 0.37, 0.5, 0.83):
        def xt(s):
            return it.sample(x0, x1, torch.full((64,), s, dtype=F64), z).xt
        fd = (xt(t + h) - xt(t - h)) / (2 * h)
        ps = it.sample(x0, x1, torch.full((64,), t, dtype=F64), z)
        assert torch.allclose(ps.dxt, fd, atol=1e-6), (t, (ps.dxt - fd).abs().max())


def test_linear_brownian_is_the_bridge_path():
    x0, x1, z = batch()
    t = torch.rand(64, generator=torch.Generator().manual_seed(1), dtype=F64)
    a = Interpolant(LinearPath(), BrownianGamma(0.7, t_eps=1e-4)).sample(x0, x1, t, z)
    b = BridgePath(0.7, t_eps=1e-4).sample(x0, x1, t, z)
    assert torch.allclose(a.xt, b.xt) and torch.allclose(a.dxt, b.dxt, atol=1e-9)


def test_exact_fields_match_the_gaussian_closed_form():
    """gamma = 0, x0 ~ N(0, I), x1 ~ N(mu, S): b is chapter 00's marginal velocity."""
    mu, cov = torch.tensor([1.0, -2.0]), torch.tensor([[0.5, 0.2], [0.2, 0.3]])
    src = si.GaussianMixture([1.0], [[0.0, 0.0]], torch.eye(2)[None])
    dst = si.GaussianMixture([1.0], mu[None], cov[None])
    path = VPCosinePath()
    b, _ = si.exact_fields(Interpolant(path), src, dst)
    x = batch()[0]
    t = torch.linspace(0.05, 0.95, 64, dtype=F64)
    ref = GaussianTarget(mu, cov).velocity(path, x, t)
    assert torch.allclose(b(x, t), ref, atol=1e-10)


def test_exact_denoiser_gives_the_score():
    """eta = E[z | x_t] and s = -eta / gamma = grad log p_t (autograd of the mixture density)."""
    src = si.GaussianMixture([1.0], [[0.0, 0.0]], torch.eye(2)[None])
    dst = si.GaussianMixture([0.4, 0.6], [[-2.0, 0.0], [2.0, 1.0]],
                             torch.stack([0.3 * torch.eye(2), 0.6 * torch.eye(2)]))
    it = interp("linear", "brownian", 1.0)
    _, eta = si.exact_fields(it, src, dst)
    t = torch.tensor(0.4, dtype=F64)
    x = batch()[0].requires_grad_(True)
    a, s, g = it.alpha(t), it.sigma(t), it.gamma(t)
    covs = a**2 * dst.covs + (s**2 + g**2) * torch.eye(2, dtype=F64)
    comps = torch.distributions.MultivariateNormal(a * dst.means, covs)
    logp = torch.logsumexp(comps.log_prob(x[:, None]) + dst.weights.log(), 1)
    grad = torch.autograd.grad(logp.sum(), x)[0]
    score = si.score_from_denoiser(eta(x.detach(), t.expand(64)), x.detach(), t.expand(64), it)
    assert torch.allclose(score, grad, atol=1e-9)


@pytest.mark.parametrize("eps", [0.0, 1.0, 3.0])
def test_ode_and_sde_family_reach_the_same_marginal(eps):
    """Two-sided: GMM -> GMM with the exact fields; every eps lands on the target's moments."""
    g = torch.Generator().manual_seed(0)
    src = si.GaussianMixture([0.5, 0.5], [[0.0, -2.0], [0.0, 2.0]],
                             torch.stack([0.2 * torch.eye(2)] * 2))
    dst = si.GaussianMixture([0.5, 0.5], [[-2.0, 0.0], [2.0, 1.0]],
                             torch.stack([0.3 * torch.eye(2), torch.tensor([[0.5, 0.2], [0.2, 0.3]])]))
    it = interp("trig", "sin2", 1.0)
    b, eta = si.exact_fields(it, src, dst)
    x = si.sample_sde(b, eta, it, src.sample(2000, g), eps, 100, g).x
    mean, cov = dst.mean_cov()
    # Euler(-Maruyama) bias at 100 steps: measured <= 0.04 on the covariance
    assert_moments(x, mean, cov, disc_mean=0.03, disc_cov=0.06)


def test_sde_noise_and_drift_balance_keep_a_narrow_variance():
    """N(0, I) -> N(mu, 0.25 I): Langevin with the wrong noise level (sqrt(eps dt) instead of
    sqrt(2 eps dt)) would sharpen p_t towards p_t² and shrink the variance towards 0.125."""
    g = torch.Generator().manual_seed(0)
    src = si.GaussianMixture([1.0], [[0.0, 0.0]], torch.eye(2)[None])
    dst = si.GaussianMixture([1.0], [[2.0, 1.0]], (0.25 * torch.eye(2))[None])
    it = interp("linear", "brownian", 1.0)
    b, eta = si.exact_fields(it, src, dst)
    x = si.sample_sde(b, eta, it, src.sample(2000, g), 3.0, 100, g).x
    assert_moments(x, dst.means[0], dst.covs[0], disc_mean=0.02, disc_cov=0.02)


def test_sde_with_a_wrong_score_sign_misses():
    """The same check fails when the Langevin term pushes the wrong way (the test can fail)."""
    g = torch.Generator().manual_seed(0)
    src = si.GaussianMixture([1.0], [[0.0, 0.0]], torch.eye(2)[None])
    dst = si.GaussianMixture([1.0], [[2.0, 1.0]], (0.3 * torch.eye(2))[None])
    it = interp("linear", "brownian", 1.0)
    b, eta = si.exact_fields(it, src, dst)
    x = si.sample_sde(b, lambda x, t: -eta(x, t), it, src.sample(2000, g), 2.0, 100, g).x
    assert (torch.cov(x.T) - dst.covs[0]).abs().max() > 0.3


def test_losses_are_minimised_by_the_exact_fields():
    src = si.GaussianMixture([1.0], [[0.0, 0.0]], torch.eye(2)[None])
    dst = si.GaussianMixture([1.0], [[2.0, 1.0]], (0.3 * torch.eye(2))[None])
    it = interp("linear", "sin2", 1.0)
    b, eta = si.exact_fields(it, src, dst)
    g = torch.Generator().manual_seed(0)
    x0, x1 = src.sample(20000, g), dst.sample(20000, g)
    for obj, f in ((si.velocity_objective(it), b), (si.DenoiserObjective(it), eta)):
        best = obj.loss(f, x0, x1, torch.Generator().manual_seed(1))[0]
        for scale in (0.9, 1.1):
            scaled = lambda x, t, scale=scale, f=f: scale * f(x, t)
            worse = obj.loss(scaled, x0, x1, torch.Generator().manual_seed(1))[0]
            assert best < worse


@pytest.mark.parametrize("base", BASES)
def test_denoiser_from_velocity_matches_the_exact_denoiser(base):
    """Gaussian source: eta is determined by b (one-sided interpolant, one regression)."""
    src = si.GaussianMixture([1.0], [[0.0, 0.0]], torch.eye(2)[None])
    dst = si.GaussianMixture([0.3, 0.7], [[2.0, 1.0], [-1.0, -2.0]],
                             torch.stack([0.3 * torch.eye(2), torch.tensor([[0.5, 0.2], [0.2, 0.3]])]))
    it = Interpolant(BASES[base](), BrownianGamma(1.0), source_is_gaussian=True)
    b, eta = si.exact_fields(it, src, dst)
    eta_b = si.denoiser_from_velocity(b, it)
    x = 2 * batch()[0]
    for t in (0.01, 0.3, 0.5, 0.9, 0.999):
        tt = torch.full((64,), t, dtype=F64)
        assert torch.allclose(eta_b(x, tt), eta(x, tt), atol=1e-10), t
    with pytest.raises(ValueError, match="Gaussian source"):
        si.denoiser_from_velocity(b, interp(base, "brownian", 1.0))


def test_eps_schedule_follows_gamma():
    it = interp("linear", "brownian", 0.6)  # max gamma = 0.3 at t = 1/2
    e = si.eps_following_gamma(0.5, it)
    t = torch.tensor([0.0, 0.5, 1.0], dtype=F64)
    assert torch.allclose(e(t), torch.tensor([0.0, 0.5, 0.0], dtype=F64), atol=1e-12)


def test_bad_inputs_are_rejected():
    it = interp("linear", "brownian", 1.0)
    x0, x1, z = batch()
    with pytest.raises(ValueError, match="eps"):
        si.eps_following_gamma(-0.1, it)
    with pytest.raises(ValueError, match="eps"):
        si.sample_sde(lambda x, t: x, lambda x, t: x, it, x0, -1.0, 10, torch.Generator())
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        it.sample(x0, x1, torch.full((64,), 1.5, dtype=F64), z)
    with pytest.raises(ValueError, match="same shape"):
        it.sample(x0, x1[:, :1], torch.full((64,), 0.5, dtype=F64), z)
    with pytest.raises(ValueError, match="shape"):
        it.sample(x0, x1, torch.full((64,), 0.5, dtype=F64), z[:10])
    with pytest.raises(ValueError, match="gamma"):
        si.DenoiserObjective(interp("linear", "zero", 1.0))
    with pytest.raises(ValueError, match="gamma"):
        si.eps_following_gamma(1.0, interp("linear", "zero", 1.0))
    with pytest.raises(ValueError, match="undefined"):
        si.score_from_denoiser(z, x0, torch.zeros(64, dtype=F64), it)
    with pytest.raises(ValueError, match="undefined"):  # constant eps > 0 meets gamma(0) = 0
        si.sample_sde(lambda x, t: x, lambda x, t: x, it, x0, lambda t: torch.ones_like(t), 10,
                      torch.Generator())
    with pytest.raises(ValueError, match="denoiser"):
        si.sample_sde(lambda x, t: x, None, it, x0, 1.0, 10, torch.Generator())
    with pytest.raises(ValueError, match="unknown gamma"):
        make_gamma("cubic")
    with pytest.raises(ValueError, match="a > 0"):
        BrownianGamma(-1.0)
    with pytest.raises(ValueError, match="sum to 1"):
        si.GaussianMixture([0.5, 0.6], [[0.0], [1.0]], torch.ones(2, 1, 1))
