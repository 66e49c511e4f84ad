"""Chapter 08's latent space (``minigen.latent.autoencoder``, ``minigen.latent.standardize``)."""

from __future__ import annotations

import pytest
import torch

from minigen.latent.autoencoder import ConvAutoencoder, weighted_reconstruction_loss
from minigen.latent.standardize import LatentStats


@pytest.mark.parametrize("size, downs, side", [(14, 2, 4), (8, 1, 4), (28, 2, 7)])
def test_autoencoder_shapes(size, downs, side):
    ae = ConvAutoencoder(size, latent_channels=3, base=8, downs=downs)
    x = torch.randn(2, 1, size, size)
    z = ae.encode(x)
    assert z.shape == (2, 3, side, side) == (2, *ae.latent_shape)
    assert ae.decode(z).shape == x.shape == ae(x).shape


def test_autoencoder_rejects_bad_shapes():
    ae = ConvAutoencoder(14, base=8)
    with pytest.raises(ValueError, match="images of shape"):
        ae.encode(torch.zeros(1, 1, 8, 8))
    with pytest.raises(ValueError, match="latents of shape"):
        ae.decode(torch.zeros(1, 4, 7, 7))
    with pytest.raises(ValueError, match="base"):
        ConvAutoencoder(base=0)


def test_weighted_loss_is_the_weighted_mean_squared_error():
    ae = ConvAutoencoder(8, base=8, downs=1)
    x = torch.randn(3, 1, 8, 8)
    err = ((ae(x) - x) ** 2).detach()
    assert torch.allclose(weighted_reconstruction_loss(ae, x).loss, err.mean(), atol=1e-6)
    w = torch.zeros(8, 8)
    w[2:6, 2:6] = 1.0  # only the centre counts
    centre = weighted_reconstruction_loss(ae, x, weight=w).loss
    assert torch.allclose(centre, err[..., 2:6, 2:6].mean(), atol=1e-6)
    g = torch.Generator().manual_seed(0)
    noisy = weighted_reconstruction_loss(ae, x, generator=g, latent_noise=0.5).loss
    assert not torch.allclose(noisy, err.mean())


def test_autoencoder_learns_to_reconstruct_digits_under_a_stated_bound():
    from minigen.data import images
    from minigen.train import train
    (tr, _), (te, _) = images.load_digits_8x8()
    x_tr, x_te = images.to_unit_interval(tr, 17), images.to_unit_interval(te, 17)
    torch.manual_seed(0)
    ae = ConvAutoencoder(8, latent_channels=4, base=16, downs=1)  # 64 pixels -> 4 x 4 x 4 latents
    batch = lambda g: (x_tr[torch.randint(0, len(x_tr), (64,), generator=g)],)
    res = train(ae, weighted_reconstruction_loss, batch, steps=300, lr=2e-3, progress=False, device="cpu")
    with torch.no_grad():
        mse = float(((res.model(x_te) - x_te) ** 2).mean())
    baseline = float(((x_tr.mean(0) - x_te) ** 2).mean())  # the mean training image
    assert mse < 0.25 * baseline, (mse, baseline)


def test_standardised_training_latents_have_zero_mean_and_unit_variance_per_channel():
    scale = torch.tensor([5.5, 0.2, 1.0]).view(1, 3, 1, 1)
    shift = torch.tensor([1.0, -2.0, 0.0]).view(1, 3, 1, 1)
    z = torch.randn(500, 3, 4, 4) * scale + shift
    stats = LatentStats.measured(z)
    zs = stats.standardize(z)
    assert torch.allclose(zs.mean((0, 2, 3)), torch.zeros(3), atol=1e-5)
    assert torch.allclose(zs.std((0, 2, 3)), torch.ones(3), atol=1e-4)
    assert torch.allclose(stats.unstandardize(zs), z, atol=1e-5)
    # mis-scaling by k makes the standardised latents k times too large
    assert torch.allclose(stats.scaled(5.0).standardize(z).std((0, 2, 3)), torch.full((3,), 5.0), atol=1e-3)
    with pytest.raises(ValueError, match="factor"):
        stats.scaled(0)
    with pytest.raises(ValueError, match="at least 2"):
        LatentStats.measured(torch.zeros(1, 3))


def test_flops_count_two_per_multiply_add():
    from minigen.eval.flops import flops_per_sample, forward_flops
    lin = torch.nn.Linear(10, 20)
    assert forward_flops(lin, torch.zeros(3, 10)) == 2 * 3 * 10 * 20
    conv = torch.nn.Conv2d(2, 4, 3, padding=1, bias=False)
    assert flops_per_sample(conv, torch.zeros(5, 2, 6, 6)) == 2 * 2 * 4 * 9 * 36
    with pytest.raises(ValueError, match="batched"):
        flops_per_sample(lin)
