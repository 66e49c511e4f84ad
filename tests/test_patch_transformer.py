"""PatchTransformer (DiT-style) in src/minigen/nets.py: shapes, patch round trip, adaLN-Zero
start, conditioning, and bad inputs."""

import pytest
import torch

from minigen.nets.transformer import PatchTransformer, patchify, unpatchify

torch.set_num_threads(1)


def perturbed(model, seed=0):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.1 * torch.randn(p.shape, generator=g))
    return model


def test_patchify_round_trip_and_layout():
    x = torch.arange(2 * 3 * 8 * 8, dtype=torch.float32).view(2, 3, 8, 8)
    tok = patchify(x, 2)
    assert tok.shape == (2, 16, 12)
    assert torch.equal(unpatchify(tok, 2, 3, 8, 8), x)
    # token 1 is the patch in rows 0-1, columns 2-3; its first entries are channel 0's pixels
    assert torch.equal(tok[0, 1, :4], x[0, 0, 0:2, 2:4].flatten())


def test_starts_at_zero_and_shapes():
    torch.manual_seed(0)
    net = PatchTransformer(channels=1, image_size=8, patch=2, dim=32, depth=2, heads=4)
    x = torch.randn(5, 1, 8, 8)
    out = net(x, torch.rand(5))
    assert out.shape == x.shape
    assert torch.all(out == 0)  # adaLN-Zero: zero-initialised output layer


def test_time_and_label_condition_the_output():
    torch.manual_seed(0)
    net = perturbed(PatchTransformer(1, 8, 2, 32, 2, 4, num_classes=10))
    x = torch.randn(3, 1, 8, 8)
    a = net(x, torch.full((3,), 0.2))
    assert not torch.allclose(a, net(x, torch.full((3,), 0.8)))
    assert not torch.allclose(net(x, 0.2, torch.tensor([1, 2, 3])), a)
    assert torch.allclose(net(x, 0.2, torch.full((3,), 10)), a)  # null label = no label
    # each sample is processed independently of the rest of the batch
    assert torch.allclose(net(x[:1], torch.full((1,), 0.2)), a[:1], atol=1e-5)


def test_gradients_reach_every_parameter_after_the_first_step():
    torch.manual_seed(0)
    net = perturbed(PatchTransformer(1, 8, 4, 32, 2, 2))
    net(torch.randn(4, 1, 8, 8), torch.rand(4)).pow(2).sum().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in net.parameters())


def test_bad_inputs():
    with pytest.raises(ValueError, match="divisible by patch"):
        PatchTransformer(image_size=8, patch=3)
    with pytest.raises(ValueError, match="heads"):
        PatchTransformer(dim=30, heads=4)
    net = PatchTransformer(1, 8, 2, 32, 1, 4)
    with pytest.raises(ValueError, match="expects x"):
        net(torch.zeros(2, 1, 6, 6), torch.zeros(2))
    with pytest.raises(ValueError, match="no labels"):
        net(torch.zeros(2, 1, 8, 8), torch.zeros(2), torch.zeros(2, dtype=torch.long))
    with pytest.raises(ValueError, match="not divisible"):
        patchify(torch.zeros(1, 1, 7, 7), 2)
