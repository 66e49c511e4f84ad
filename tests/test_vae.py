"""The VAE of DiffuseVAE's first stage: the closed-form KL against known values and Monte Carlo,
the Gaussian likelihood, shapes at 8, 14 and 28, the training-loop protocol, a tiny model that
learns (loss falls, reconstructions beat the mean image), and bad input."""

from __future__ import annotations

import functools
import math

import pytest
import torch

from minigen.diffusion.ddpm_bound import kl_gaussians
from minigen.latent.vae import (
    ConvVAE,
    gaussian_kl_standard_normal,
    gaussian_nll,
    negative_elbo,
    reparameterize,
    vae_loss,
)
from minigen.train import train

torch.set_num_threads(1)


def small_vae(size: int = 8, **kw) -> ConvVAE:
    torch.manual_seed(0)
    return ConvVAE(image_size=size, **{"latent_dim": 4, "base": 8, **kw})


# ---------------------------------------------------------------- closed forms

def test_kl_known_values():
    mean = torch.tensor([[0.0, 0.0], [3.0, 0.0], [0.0, 0.0], [1.0, -2.0]])
    logvar = torch.tensor([[0.0, 0.0], [0.0, 0.0], [math.log(4.0), 0.0], [0.0, math.log(0.25)]])
    want = torch.tensor([0.0,                                # q = p
                         4.5,                                # ½ mean²
                         0.5 * (4.0 - 1 - math.log(4.0)),    # ½ (var - 1 - log var)
                         0.5 + 2.0 + 0.5 * (0.25 - 1 - math.log(0.25))])
    assert torch.allclose(gaussian_kl_standard_normal(mean, logvar), want, atol=1e-6)


def test_kl_matches_elementwise_formula_and_monte_carlo():
    g = torch.Generator().manual_seed(0)
    mean, logvar = torch.randn(3, 5, generator=g), torch.randn(3, 5, generator=g)
    kl = gaussian_kl_standard_normal(mean, logvar)
    other = kl_gaussians(mean, logvar.exp(), torch.zeros_like(mean), torch.ones_like(mean)).sum(1)
    assert torch.allclose(kl, other, atol=1e-5)
    # E_q[log q(z) - log p(z)] with 100k reparameterised draws per row
    n = 100_000
    m, lv = mean.double(), logvar.double()
    z = reparameterize(m.expand(n, 3, 5), lv.expand(n, 3, 5), g)
    log_q = -0.5 * ((z - m) ** 2 / lv.exp() + lv + math.log(2 * math.pi)).sum(-1)
    log_p = -0.5 * (z**2 + math.log(2 * math.pi)).sum(-1)
    mc = (log_q - log_p).mean(0)
    se = (log_q - log_p).std(0) / math.sqrt(n)
    assert ((mc - kl.double()).abs() < 4 * se + 1e-3).all(), (mc, kl)


def test_reparameterize_has_the_right_moments_and_gradients():
    g = torch.Generator().manual_seed(1)
    mean = torch.tensor([1.0, -2.0], requires_grad=True)
    logvar = torch.tensor([0.0, math.log(9.0)], requires_grad=True)
    z = reparameterize(mean.expand(100_000, 2), logvar.expand(100_000, 2), g)
    assert torch.allclose(z.mean(0), mean.detach(), atol=0.03)
    assert torch.allclose(z.std(0), torch.tensor([1.0, 3.0]), atol=0.03)
    z.sum().backward()
    assert mean.grad is not None and logvar.grad is not None and logvar.grad.abs().sum() > 0


def test_gaussian_nll_at_the_mean_and_one_std_away():
    x = torch.zeros(2, 1, 3, 3)
    std = 0.2
    const = 0.5 * 9 * math.log(2 * math.pi * std**2)
    assert torch.allclose(gaussian_nll(x, x, std), torch.full((2,), const), atol=1e-5)
    assert torch.allclose(gaussian_nll(x + std, x, std), torch.full((2,), const + 4.5), atol=1e-4)


def test_negative_elbo_is_reconstruction_plus_beta_kl():
    model = small_vae().eval()
    x = torch.rand(4, 1, 8, 8) * 2 - 1
    mean, logvar = model.encode(x)
    kl = gaussian_kl_standard_normal(mean, logvar)
    gen = lambda: torch.Generator().manual_seed(7)
    with torch.no_grad():
        rec = negative_elbo(model, x, gen(), beta=0.0)
        assert torch.allclose(negative_elbo(model, x, gen(), beta=1.0), rec + kl, atol=1e-4)
        assert torch.allclose(negative_elbo(model, x, gen(), beta=2.5), rec + 2.5 * kl, atol=1e-4)
        z = mean + (0.5 * logvar).exp() * torch.randn(mean.shape, generator=gen())
        assert torch.allclose(rec, gaussian_nll(x, model.decode(z), 0.2), atol=1e-4)


# ---------------------------------------------------------------- shapes and protocol

@pytest.mark.parametrize("size", [8, 14, 28])
def test_shapes(size):
    model = small_vae(size, channels=3).eval()
    x = torch.rand(5, 3, size, size) * 2 - 1
    mean, logvar = model.encode(x)
    assert mean.shape == logvar.shape == (5, 4)
    assert model.decode(mean).shape == x.shape
    rec = model.reconstruct(x, torch.Generator().manual_seed(0))
    samples = model.sample(6, torch.Generator().manual_seed(0))
    assert rec.shape == x.shape and samples.shape == (6, 3, size, size)
    assert rec.abs().max() <= 1 and samples.abs().max() <= 1


def test_defaults_fit_14x14_mnist():
    model = ConvVAE()
    assert (model.image_size, model.channels, model.latent_dim) == (14, 1, 16)
    assert 50_000 <= sum(p.numel() for p in model.parameters()) <= 300_000


def test_loss_fits_the_training_loop_protocol_and_is_seeded():
    model = small_vae()
    x = torch.rand(6, 1, 8, 8) * 2 - 1
    loss, per_sample, t = vae_loss(model, x, generator=torch.Generator().manual_seed(3), per_sample=True)
    assert loss.ndim == 0 and per_sample.shape == (6,) and t is None
    assert torch.allclose(loss, per_sample.mean()) and not per_sample.requires_grad
    again, none, _ = vae_loss(model, x, generator=torch.Generator().manual_seed(3), per_sample=False)
    assert none is None and torch.equal(loss, again)
    loss.backward()
    assert all(p.grad is not None for p in model.parameters())


# ---------------------------------------------------------------- a tiny model learns

def crosses() -> torch.Tensor:
    """The 64 8x8 images of a horizontal bar in row i and a vertical bar in column j (+1 on -1):
    two latent factors, far from the mean image. (64, 1, 8, 8)."""
    x = -torch.ones(8, 8, 1, 8, 8)
    for i in range(8):
        x[i, :, 0, i, :] = 1
        x[:, i, 0, :, i] = 1
    return x.view(64, 1, 8, 8)


@pytest.fixture(scope="module")
def trained():
    """base-8, latent-4 VAE, 100 Adam steps (lr 1e-2) on the 64 crosses (about 1-3 s)."""
    x = crosses()
    model = small_vae()
    res = train(model, functools.partial(vae_loss, obs_std=0.3), lambda g: (x,), steps=100,
                lr=1e-2, seed=0, progress=False, device="cpu", check_every=10)
    return model, x, res.losses


def test_training_lowers_the_loss(trained):
    _, _, losses = trained
    first, last = sum(losses[:10]) / 10, sum(losses[-10:]) / 10
    assert last < 0.6 * first, (first, last)   # measured: 282 -> 84


def test_reconstructions_beat_the_mean_image(trained):
    model, x, _ = trained
    with torch.no_grad():
        mse = (model.reconstruct(x) - x).pow(2).mean()
    mse_mean = (x.mean(0, keepdim=True) - x).pow(2).mean()
    assert mse < 0.6 * mse_mean, (float(mse), float(mse_mean))   # measured: 0.22 vs 0.72


# ---------------------------------------------------------------- bad input

def test_bad_input_raises():
    model = small_vae()
    g = torch.Generator().manual_seed(0)
    x = torch.zeros(2, 1, 8, 8)
    with pytest.raises(ValueError, match="shape"):
        vae_loss(model, torch.zeros(2, 1, 14, 14), g)           # wrong size
    with pytest.raises(ValueError, match="shape"):
        model.encode(torch.zeros(2, 3, 8, 8))                   # wrong channels
    with pytest.raises(ValueError, match="shape"):
        model.encode(torch.zeros(2, 64))                        # flat
    with pytest.raises(ValueError, match="z of shape"):
        model.decode(torch.zeros(2, 5))
    for beta in (-0.1, math.nan, math.inf):
        with pytest.raises(ValueError, match="beta"):
            vae_loss(model, x, g, beta=beta)
    for std in (0.0, -1.0, math.nan):
        with pytest.raises(ValueError, match="obs_std"):
            vae_loss(model, x, g, obs_std=std)
    with pytest.raises(ValueError, match="same shape"):
        gaussian_kl_standard_normal(torch.zeros(2, 3), torch.zeros(2, 4))
    with pytest.raises(ValueError, match="same shape"):
        reparameterize(torch.zeros(2, 3), torch.zeros(3), g)
    with pytest.raises(ValueError, match="std must be > 0"):
        gaussian_nll(x, x, 0.0)
    with pytest.raises(ValueError, match="non-negative"):
        model.sample(-1, g)
    for kw in ({"image_size": 0}, {"latent_dim": -2}, {"channels": 1.5}, {"base": 0}):
        with pytest.raises(ValueError, match="positive integer"):
            ConvVAE(**kw)
