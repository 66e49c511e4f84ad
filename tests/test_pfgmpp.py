"""PFGM++ (minigen.pfgmpp): the kernel's sampler, density and moments in closed form, its
Gaussian limit, the sigma ODE with exact denoisers, Heun's order, and bad inputs."""

import math

import pytest
import torch
from scipy import stats

from minigen.diffusion import pfgmpp as P

torch.set_num_threads(1)
F64 = torch.float64


def gen(seed=0):
    return torch.Generator().manual_seed(seed)


# ---------------------------------------------------------------- the radius sampler

@pytest.mark.parametrize("n,D", [(2, 8), (2, 64), (16, 8), (16, 64)])
def test_squared_radius_mean_matches_closed_form(n, D):
    # E||x - y||² = r² N / (D - 2) with r = sigma sqrt(D)
    sigma = 0.7
    e = P.perturbation((200_000, n), sigma, D, gen(1), F64)
    want = sigma**2 * D * n / (D - 2)
    assert P.expected_squared_radius(n, sigma, D) == pytest.approx(want)
    assert e.pow(2).sum(1).mean().item() == pytest.approx(want, rel=0.03)


@pytest.mark.parametrize("n,D", [(2, 1), (2, 4), (64, 4), (64, 128)])
def test_radius_ratio_is_beta(n, D):
    # B = R² / (R² + r²) ~ Beta(N/2, D/2): a Kolmogorov–Smirnov test at n = 20000
    sigma = 1.3
    r2 = sigma**2 * D
    R2 = P.perturbation((20_000, n), sigma, D, gen(2), F64).pow(2).sum(1)
    b = (R2 / (R2 + r2)).numpy()
    assert stats.kstest(b, stats.beta(n / 2, D / 2).cdf).pvalue > 1e-3
    # the test has power: D off by 20% is rejected
    assert stats.kstest(b, stats.beta(n / 2, 0.6 * D).cdf).pvalue < 1e-10


def test_direction_is_uniform_on_the_sphere():
    e = P.perturbation((100_000, 3), 1.0, 3, gen(3), F64)
    u = e / e.norm(dim=1, keepdim=True)
    assert u.mean(0).abs().max() < 0.01  # SE 0.0018
    assert torch.allclose(u.T @ u / len(u), torch.eye(3, dtype=F64) / 3, atol=0.01)


def test_large_D_recovers_the_gaussian_kernel():
    # r = sigma sqrt(D): E||x - y||² -> N sigma², and each coordinate's kurtosis -> 3
    n, sigma = 4, 0.5
    e_big = P.perturbation((200_000, n), sigma, 1e5, gen(4), F64)
    e_small = P.perturbation((200_000, n), sigma, 8, gen(4), F64)
    assert e_big.pow(2).sum(1).mean().item() == pytest.approx(n * sigma**2, rel=0.02)
    assert P.expected_squared_radius(n, sigma, 1e8) == pytest.approx(n * sigma**2, rel=1e-6)
    kurt = lambda e: (e.pow(4).mean() / e.pow(2).mean() ** 2).item()
    assert kurt(e_big) == pytest.approx(3.0, abs=0.1)
    assert kurt(e_small) > 4.0  # Student t with 8 dof: 3 + 6/(8-4) = 4.5
    x = torch.randn(50, n, generator=gen(5), dtype=F64)
    y = torch.randn(50, n, generator=gen(6), dtype=F64)
    assert torch.allclose(P.kernel_log_prob(x, y, sigma, 1e7), P.kernel_log_prob(x, y, sigma, math.inf),
                          atol=1e-4)


def test_heavy_tails_have_infinite_second_moment():
    assert P.expected_squared_radius(2, 1.0, 2) == math.inf
    assert P.expected_squared_radius(2, 1.0, 1) == math.inf


def test_seeded_generator_repeats_draws():
    a = P.perturbation((10, 5), torch.linspace(0.1, 1, 10), 7, gen(9))
    b = P.perturbation((10, 5), torch.linspace(0.1, 1, 10), 7, gen(9))
    assert torch.equal(a, b)


# ---------------------------------------------------------------- the density

@pytest.mark.parametrize("D", [1, 3, 20, math.inf])
def test_kernel_normalises_in_1d(D):
    x = torch.linspace(-3000, 3000, 1_200_001, dtype=F64)[:, None]
    p = P.kernel_log_prob(x, torch.zeros(1, 1, dtype=F64), 0.5, D).exp()
    tail = 0.5 / (math.pi * 3000) * 2 if D == 1 else 0.0  # the Cauchy mass beyond |x| = 3000
    assert torch.trapezoid(p, x[:, 0]).item() + tail == pytest.approx(1.0, abs=1e-5)


@pytest.mark.parametrize("D", [2, 5, math.inf])
def test_kernel_normalises_in_2d(D):
    # integrate over circles: int_0^inf 2 pi R p(R) dR, R on a log grid
    R = torch.logspace(-6, 5, 400_001, dtype=F64)
    pts = torch.stack([R, torch.zeros_like(R)], 1)
    p = P.kernel_log_prob(pts, torch.zeros(1, 2, dtype=F64), 0.8, D).exp()
    assert torch.trapezoid(2 * math.pi * R * p, R).item() == pytest.approx(1.0, abs=1e-5)


@pytest.mark.parametrize("D", [1, 4, 50, math.inf])
def test_kernel_obeys_the_sigma_ode_continuity_equation(D):
    # d/dsigma p + div_x(p (x - y) / sigma) = 0: the conditional field of dx/dsigma = (x - y)/sigma
    # transports the kernel, so the posterior-mean field transports the marginal (PFGM++ §4)
    n = 3
    x = torch.randn(20, n, generator=gen(7), dtype=F64).requires_grad_(True)
    y = torch.randn(20, n, generator=gen(8), dtype=F64)
    sigma = torch.full((20,), 0.9, dtype=F64, requires_grad=True)
    p = P.kernel_log_prob(x, y, sigma, D).exp()
    dp_ds, = torch.autograd.grad(p.sum(), sigma, create_graph=True)
    flux = p[:, None] * (x - y) / sigma[:, None]
    div = sum(torch.autograd.grad(flux[:, i].sum(), x, create_graph=True)[0][:, i] for i in range(n))
    assert (dp_ds + div).abs().max().item() < 1e-12 * max(1.0, p.max().item())


# ---------------------------------------------------------------- exact denoisers and the ODE

def test_exact_denoiser_of_a_point_mass_is_the_point():
    c = torch.tensor([[1.5, -2.0]], dtype=F64)
    x = 10 * torch.randn(30, 2, generator=gen(10), dtype=F64)
    for D in (1, 7, math.inf):
        assert torch.allclose(P.exact_denoiser(x, c, 3.0, D), c.expand(30, 2))


def test_exact_denoiser_is_the_posterior_mean():
    # two points in 1D, by hand: weights w_i p(x | y_i)
    data = torch.tensor([[-1.0], [2.0]], dtype=F64)
    w = torch.tensor([0.3, 0.7], dtype=F64)
    x, sigma, D = torch.tensor([[0.4]], dtype=F64), 0.8, 5
    r2 = sigma**2 * D
    k = w * ((x - data).squeeze(1) ** 2 + r2) ** (-(1 + D) / 2)
    want = (k * data.squeeze(1)).sum() / k.sum()
    assert P.exact_denoiser(x, data, sigma, D, w).item() == pytest.approx(want.item(), rel=1e-12)


@pytest.mark.parametrize("D", [2, 16, math.inf])
def test_ode_with_exact_denoiser_recovers_a_two_point_target(D):
    # start from the exact marginal at sigma_max; the ODE must land on the points with their weights
    data = torch.tensor([[-2.0, 0.0], [2.0, 1.0]], dtype=F64)
    w = torch.tensor([0.3, 0.7], dtype=F64)
    g, n, smax = gen(11), 4000, 10.0
    idx = torch.multinomial(w, n, replacement=True, generator=g)
    x0 = data[idx] + P.perturbation((n, 2), smax, D, g, F64)
    den = lambda x, s: P.exact_denoiser(x, data, s, D, w)
    smin = 0.01
    out = P.sample(den, x0, steps=40, sigma_min=smin, sigma_max=smax).x
    dist = torch.cdist(out, data)
    share = (dist.argmin(1) == 0).double().mean().item()
    assert share == pytest.approx(0.3, abs=3 * math.sqrt(0.3 * 0.7 / n))  # the weights survive
    # and the samples are spread around the points as the kernel at sigma_min: same quartiles
    ref = P.perturbation((100_000, 2), smin, D, g, F64).norm(dim=1)
    q = torch.tensor([0.25, 0.5, 0.75], dtype=F64)
    assert torch.allclose(dist.min(1).values.quantile(q), ref.quantile(q), rtol=0.1)


def gaussian_flow_error(steps, s=1.5, smin=0.05, smax=20.0):
    # D = inf, data N(0, s² I): D(x, sigma) = s² x / (s² + sigma²), and the ODE's exact solution
    # is x(sigma) = x(smax) sqrt(s² + sigma²) / sqrt(s² + smax²)
    x0 = torch.randn(64, 2, generator=gen(12), dtype=F64) * math.sqrt(s**2 + smax**2)
    den = lambda x, sig: x * (s**2 / (s**2 + sig**2)).view(-1, 1)
    out = P.sample(den, x0, steps=steps, sigma_min=smin, sigma_max=smax).x
    exact = x0 * math.sqrt(s**2 + smin**2) / math.sqrt(s**2 + smax**2)
    return (out - exact).abs().max().item()


def test_heun_is_second_order_on_the_rho_grid():
    e = [gaussian_flow_error(k) for k in (16, 32, 64)]
    assert e[0] / e[1] == pytest.approx(4.0, rel=0.2)
    assert e[1] / e[2] == pytest.approx(4.0, rel=0.2)


def test_sample_counts_nfe_and_noise_changes_the_result():
    den = lambda x, s: torch.zeros_like(x)
    x0 = torch.ones(5, 2)
    sol = P.sample(den, x0, steps=7, sigma_min=0.1, sigma_max=1.0)
    assert sol.nfe == 14
    # zero denoiser: dx/dsigma = x/sigma, so x scales by sigma_min / sigma_max
    fine = P.sample(den, x0.double(), steps=400, sigma_min=0.1, sigma_max=1.0).x
    assert torch.allclose(fine, x0.double() * 0.1, rtol=1e-4)  # Heun: 1.3e-5 at 400 steps
    noisy = P.sample(den, x0, steps=7, sigma_min=0.1, sigma_max=1.0, noise=0.5, generator=gen(0)).x
    assert (noisy - sol.x).abs().max() > 1e-3


def test_edm_grid_ends_and_derivative():
    assert P.edm_sigma(0.0, 0.002, 80.0) == pytest.approx(80.0)
    assert P.edm_sigma(1.0, 0.002, 80.0) == pytest.approx(0.002)
    s = P.edm_sigma(torch.linspace(0, 1, 11), 0.002, 80.0)
    assert (s.diff() < 0).all()  # noise to data


# ---------------------------------------------------------------- EDM's denoiser and loss

def test_edm_scalings():
    sigma, sd = torch.tensor([0.1, 1.0, 30.0]), 0.5
    c_skip, c_out, c_in, c_noise = P.edm_scalings(sigma, sd)
    # unit-variance network input and target for data of std sd (Karras et al., 2022, App. B.6)
    assert torch.allclose(c_in**2 * (sigma**2 + sd**2), torch.ones(3))
    target_var = (sd**2 * (1 - c_skip) ** 2 + c_skip**2 * sigma**2) / c_out**2
    assert torch.allclose(target_var, torch.ones(3), atol=1e-5)
    assert torch.allclose(P.edm_weight(sigma, sd), 1 / c_out**2)


def test_denoiser_is_identity_at_zero_noise_and_loss_vanishes_for_exact_denoiser():
    torch.manual_seed(0)
    den = P.EDMDenoiser(torch.nn.Linear(2, 2), sigma_data=0.5)
    den.net.forward = lambda x, t: torch.ones_like(x)  # any network: c_out -> 0 as sigma -> 0
    x = torch.randn(4, 2, generator=gen(0))
    assert torch.allclose(den(x, 1e-7), x, atol=1e-6)
    # a one-point data set: the exact denoiser returns the point, so the loss is 0
    y = torch.tensor([[0.3, -0.2]]).expand(16, 2)
    loss, per, t = P.PFGMppLoss(D=4).loss(lambda x, s: y, y, gen(1), per_sample=True)
    assert loss.item() == 0 and per.shape == (16,) and t is None
    loss2, _, _ = P.PFGMppLoss(D=4).loss(lambda x, s: x, y, gen(1))
    assert loss2.item() > 0


# ---------------------------------------------------------------- bad inputs

@pytest.mark.parametrize("D", [0, -1, float("nan"), True, "4"])
def test_bad_D_rejected(D):
    with pytest.raises(ValueError, match="D"):
        P.perturbation((4, 2), 1.0, D, gen())
    with pytest.raises(ValueError, match="D"):
        P.PFGMppLoss(D=D)


def test_bad_sigma_and_shapes_rejected():
    x = torch.zeros(4, 2)
    with pytest.raises(ValueError, match="sigma"):
        P.perturbation((4, 2), 0.0, 3, gen())
    with pytest.raises(ValueError, match="sigma"):
        P.kernel_log_prob(x, x, torch.tensor([1.0, -1.0, 1.0, 1.0]), 3)
    with pytest.raises(ValueError, match="sigma"):
        P.kernel_log_prob(x, x, torch.ones(3), 3)
    with pytest.raises(ValueError, match="shape"):
        P.perturbation((4,), 1.0, 3, gen())
    with pytest.raises(ValueError, match="data"):
        P.exact_denoiser(x, torch.zeros(3, 5), 1.0, 3)
    with pytest.raises(ValueError, match="radius"):
        P.radius_from_sigma(1.0, math.inf)
    assert P.radius_from_sigma(2.0, 9) == 6.0
    with pytest.raises(ValueError, match="sigma_min"):
        P.edm_sigma(0.5, 1.0, 0.5)
    with pytest.raises(ValueError, match="steps"):
        P.sample(lambda x, s: x, x, steps=0)
    with pytest.raises(ValueError, match="generator"):
        P.sample(lambda x, s: x, x, steps=2, noise=0.1)
    with pytest.raises(ValueError, match="sigma_data"):
        P.EDMDenoiser(torch.nn.Identity(), 0.0)
