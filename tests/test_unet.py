"""The small U-Net: shapes at 8x8, 14x14, 28x28, time and label conditioning, the null label,
bad input; and ``downsample_mnist``."""

from __future__ import annotations

import pytest
import torch

from minigen.data.images import downsample_mnist
from minigen.nets.embeddings import sinusoidal_embedding
from minigen.nets.unet import UNet

torch.set_num_threads(1)


def small_unet(**kw):
    torch.manual_seed(0)
    return UNet(base=16, **kw).eval()


@pytest.mark.parametrize("size", [8, 14, 28])
def test_output_shape_equals_input_shape(size):
    model = small_unet(num_classes=10)
    x = torch.randn(3, 1, size, size)
    assert model(x, torch.rand(3), torch.tensor([0, 5, 9])).shape == x.shape
    assert model(x, 0.5).shape == x.shape  # scalar t, null label


def test_odd_and_rectangular_sizes_with_three_levels():
    model = small_unet(mults=(1, 2, 2), channels=3)
    for shape in [(2, 3, 7, 7), (2, 3, 14, 10), (2, 3, 5, 9)]:
        x = torch.randn(*shape)
        assert model(x, torch.rand(2)).shape == x.shape


def test_default_size_is_in_the_planned_range():
    n = sum(p.numel() for p in UNet(num_classes=10).parameters())
    assert 300_000 <= n <= 600_000


def test_time_and_label_change_the_output():
    model = small_unet(num_classes=10)
    x = torch.randn(4, 1, 14, 14)
    y = torch.tensor([1, 2, 3, 4])
    with torch.no_grad():
        base = model(x, torch.full((4,), 0.2), y)
        assert not torch.allclose(base, model(x, torch.full((4,), 0.8), y), atol=1e-5)
        assert not torch.allclose(base, model(x, torch.full((4,), 0.2), (y + 5) % 10), atol=1e-5)


def test_null_label_equals_cond_none():
    model = small_unet(num_classes=10)
    x, t = torch.randn(2, 1, 8, 8), torch.rand(2)
    with torch.no_grad():
        assert torch.allclose(model(x, t), model(x, t, torch.tensor([10, 10])))
        assert not torch.allclose(model(x, t), model(x, t, torch.tensor([3, 3])), atol=1e-5)


def test_gradients_flow_to_every_parameter():
    model = small_unet(num_classes=10).train()
    model(torch.randn(2, 1, 8, 8), torch.rand(2), torch.tensor([0, 10])).pow(2).mean().backward()
    unused = [n for n, p in model.named_parameters() if p.grad is None]
    assert unused == []


def test_bad_input_raises():
    model = small_unet(num_classes=10)
    with pytest.raises(ValueError, match="shape"):
        model(torch.randn(2, 3, 8, 8), torch.rand(2))          # wrong channels
    with pytest.raises(ValueError, match="shape"):
        model(torch.randn(2, 64), torch.rand(2))               # flat input
    with pytest.raises(ValueError, match="H, W >="):
        model(torch.randn(2, 1, 1, 8), torch.rand(2))          # too small for two levels
    with pytest.raises(ValueError, match="t must"):
        model(torch.randn(2, 1, 8, 8), torch.rand(3))
    with pytest.raises(ValueError, match="labels must be in"):
        model(torch.randn(2, 1, 8, 8), torch.rand(2), torch.tensor([0, 11]))
    with pytest.raises(ValueError, match="integer labels"):
        model(torch.randn(2, 1, 8, 8), torch.rand(2), torch.tensor([0.0, 1.0]))
    with pytest.raises(ValueError, match="no labels"):
        small_unet()(torch.randn(2, 1, 8, 8), torch.rand(2), torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="divisible"):
        UNet(base=12)
    with pytest.raises(ValueError, match="even"):
        sinusoidal_embedding(torch.rand(3), 7)


def test_downsample_mnist_averages_blocks_and_keeps_integer_levels():
    x = torch.zeros(1, 1, 28, 28, dtype=torch.uint8)
    x[0, 0, 0, 0], x[0, 0, 0, 1], x[0, 0, 1, 0] = 255, 255, 1   # block mean 511 / 4 = 127.75
    x[0, 0, 2:4, 2:4] = 200
    small = downsample_mnist(x, 14)
    assert small.dtype == torch.uint8 and small.shape == (1, 1, 14, 14)
    assert small[0, 0, 0, 0] == 128 and small[0, 0, 1, 1] == 200 and small.sum() == 328
    assert torch.equal(downsample_mnist(x, 28), x)
    with pytest.raises(ValueError, match="divisor"):
        downsample_mnist(x, 5)
    with pytest.raises(ValueError, match="28, 28"):
        downsample_mnist(torch.zeros(1, 1, 14, 14, dtype=torch.uint8))


# ---------------------------------------------------------------- image conditioning (DiffuseVAE)

def test_cond_channels_zero_keeps_the_unconditioned_network():
    torch.manual_seed(0)
    plain = UNet(base=16)
    torch.manual_seed(0)
    zero = UNet(base=16, cond_channels=0)
    assert plain.state_dict().keys() == zero.state_dict().keys()
    assert all(torch.equal(a, b) for a, b in zip(plain.state_dict().values(), zero.state_dict().values()))
    # one extra input channel costs 9 * base weights in the first conv, nothing else
    extra = sum(p.numel() for p in UNet(base=16, cond_channels=1).parameters()) - \
        sum(p.numel() for p in plain.parameters())
    assert extra == 9 * 16


@pytest.mark.parametrize("size", [8, 14, 28])
def test_cond_image_is_an_input_and_the_output_keeps_x_channels(size):
    model = small_unet(cond_channels=2, num_classes=10)
    x, t = torch.randn(3, 1, size, size), torch.rand(3)
    y = torch.randn(3, 2, size, size)
    with torch.no_grad():
        out = model(x, t, cond_image=y)
        assert out.shape == x.shape
        assert not torch.allclose(out, model(x, t, cond_image=-y), atol=1e-5)
        assert model(x, t, torch.tensor([1, 2, 3]), cond_image=y).shape == x.shape


def test_cond_image_gradients_and_a_ddpm_loss_through_a_closure():
    from minigen.diffusion.ddpm import DDPMSchedule

    model = small_unet(cond_channels=1).train()
    x0, y = torch.randn(4, 1, 8, 8), torch.randn(4, 1, 8, 8).requires_grad_()
    per_sample, t = DDPMSchedule().l_simple(lambda xk, tk: model(xk, tk, cond_image=y), x0,
                                            torch.Generator().manual_seed(0))
    per_sample.mean().backward()
    assert per_sample.shape == t.shape == (4,)
    assert y.grad is not None and y.grad.abs().sum() > 0
    assert [n for n, p in model.named_parameters() if p.grad is None] == []


def test_bad_cond_image_raises():
    model = small_unet(cond_channels=1)
    x, t = torch.randn(2, 1, 8, 8), torch.rand(2)
    with pytest.raises(ValueError, match="needs cond_image"):
        model(x, t)
    with pytest.raises(ValueError, match="cond_image must have shape"):
        model(x, t, cond_image=torch.randn(2, 2, 8, 8))      # wrong channels
    with pytest.raises(ValueError, match="cond_image must have shape"):
        model(x, t, cond_image=torch.randn(2, 1, 4, 4))      # wrong size
    with pytest.raises(ValueError, match="cond_image must have shape"):
        model(x, t, cond_image=torch.randn(3, 1, 8, 8))      # wrong batch
    with pytest.raises(ValueError, match="no image condition"):
        small_unet()(x, t, cond_image=torch.randn(2, 1, 8, 8))
    for bad in (-1, 1.5):
        with pytest.raises(ValueError, match="cond_channels"):
            UNet(base=16, cond_channels=bad)
