"""Normalizing flows (``minigen.flows``): every layer inverts to float precision and its
log-determinant equals autograd's Jacobian log-determinant; the coupling flow's log-density
equals an independent implementation's (zuko) on the same transform; a flow fitted to a
Gaussian recovers its log-density; Jacobi iteration, guidance, denoising and the Bayes
classifier against their closed forms."""

from __future__ import annotations

import math

import pytest
import torch

from minigen.flows.actnorm import ActNorm
from minigen.flows.bayes import bayes_classify, class_log_likelihoods
from minigen.flows.coupling import (
    AffineCoupling,
    ConvConditioner,
    MLPConditioner,
    alternating_mask,
    channel_mask,
    checkerboard_mask,
)
from minigen.flows.denoise import score_denoise
from minigen.flows.guidance import guided_gaussian
from minigen.flows.invertible import FlowSequence, NormalizingFlow, standard_normal_log_prob
from minigen.flows.jacobi import jacobi_fixed_point
from minigen.flows.logit import Logit
from minigen.flows.mixing import InvertibleLinear, Reverse
from minigen.flows.multiscale import (
    MultiscaleFlow,
    image_coupling_flow,
    squeeze,
    unsqueeze,
    vector_coupling_flow,
)
from minigen.flows.tarflow import TARFlow, TARFlowBlock
from minigen.train import train


def perturbed(module, scale=0.3, seed=0):
    """Move every parameter off its identity initialisation, so the tests see a real map."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.add_(scale * torch.randn(p.shape, generator=g, dtype=p.dtype))
    return module.eval()


def layers():
    g = torch.Generator().manual_seed(0)
    an = ActNorm(3)
    an.initialized.fill_(True)
    return {
        "actnorm_vector": (an, (3,)),
        "actnorm_image": (ActNorm(2), (2, 3, 3)),
        "reverse": (Reverse(), (4,)),
        "logit": (Logit(0.05), (2, 2, 2)),
        "linear_vector": (InvertibleLinear(4, g), (4,)),
        "linear_1x1": (InvertibleLinear(2, g), (2, 3, 3)),
        "coupling_vector": (AffineCoupling(alternating_mask(4, 1), MLPConditioner(4, 16)), (4,)),
        "coupling_checkerboard": (AffineCoupling(checkerboard_mask(1, 4, 0), ConvConditioner(1, 8)),
                                  (1, 4, 4)),
        "coupling_channel": (AffineCoupling(channel_mask(2, 3, 1), ConvConditioner(2, 8)), (2, 3, 3)),
        "multiscale": (MultiscaleFlow(1, 4, levels=2, steps=2, width=8, generator=g), (1, 4, 4)),
        "tarflow_block": (TARFlowBlock(2, 4, width=16, depth=1, heads=2, flip=True), (4, 2)),
        "tarflow_image": (TARFlow((1, 4, 4), patch=2, width=16, depths=(1, 2), heads=2).transform, (1, 4, 4)),
    }


@pytest.mark.parametrize("name", list(layers()))
def test_every_layer_inverts_and_its_log_det_is_the_jacobians(name):
    layer, shape = layers()[name]
    if isinstance(layer, ActNorm):
        layer.initialized.fill_(True)
    layer = perturbed(layer).double()
    x = torch.randn(3, *shape, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    x = x.tanh() if isinstance(layer, Logit) else x  # the logit layer's domain is [-1, 1]
    z, log_det = layer(x)
    assert z.shape == x.shape and log_det.shape == (3,)
    assert torch.allclose(layer.inverse(z), x, atol=1e-10)
    for i in range(3):
        jac = torch.autograd.functional.jacobian(lambda v: layer(v.reshape(1, *shape))[0].flatten(),
                                                 x[i].flatten())
        assert math.isclose(float(torch.linalg.slogdet(jac)[1]), float(log_det[i].detach()), abs_tol=1e-8)


def test_the_map_under_test_is_not_the_identity():
    # guards the test above: after perturbation every layer but the permutation moves x
    for name, (layer, shape) in layers().items():
        if isinstance(layer, ActNorm):
            layer.initialized.fill_(True)
        layer = perturbed(layer).double()
        x = torch.randn(2, *shape, dtype=torch.float64).tanh()
        assert (layer(x)[0] - x).abs().max() > 1e-3, name


def test_squeeze_is_a_permutation_and_unsqueeze_its_inverse():
    x = torch.arange(2 * 3 * 4 * 6.).reshape(2, 3, 4, 6)
    s = squeeze(x)
    assert s.shape == (2, 12, 2, 3) and torch.equal(unsqueeze(s), x)
    assert torch.equal(s.flatten().sort().values, x.flatten().sort().values)
    # channel 4c + 2i + j holds pixel (2h + i, 2w + j)
    assert torch.equal(s[0, 4 * 1 + 2 * 1 + 0, 0, 1], x[0, 1, 1, 2])
    with pytest.raises(ValueError, match="even"):
        squeeze(torch.zeros(1, 1, 3, 4))


def test_actnorm_initialises_from_the_first_batch():
    an = ActNorm(2).train()
    x = torch.randn(500, 2, 4, 4) * torch.tensor([3.0, 0.5]).view(1, 2, 1, 1) + 2
    z, _ = an(x)
    assert torch.allclose(z.mean((0, 2, 3)), torch.zeros(2), atol=1e-5)
    assert torch.allclose(z.std((0, 2, 3)), torch.ones(2), atol=1e-3)
    assert bool(an.initialized)


def _zuko_twin(flow: NormalizingFlow):
    """The same vector coupling flow written with zuko's transforms: its own coupling split /
    merge, affine transforms, composition, log-det bookkeeping and Gaussian base."""
    zt, zd = pytest.importorskip("zuko.transforms"), pytest.importorskip("zuko.distributions")
    big = abs(math.log(1e-3))  # zuko's MonotonicAffineTransform soft-clips a to a / (1 + |a| / big)
    unclip = lambda s: s / (1 - s.abs() / big)
    parts = []
    for layer in flow.transform.layers:
        if isinstance(layer, ActNorm):  # z = x exp(-s) - b exp(-s)
            parts.append(zt.DependentTransform(zt.MonotonicAffineTransform(
                -layer.shift * torch.exp(-layer.log_scale), unclip(-layer.log_scale)), 1))
        else:
            mask = layer.mask.bool()

            def meta(x_a, layer=layer, mask=mask):
                full = x_a.new_zeros(*x_a.shape[:-1], len(mask))
                full[..., mask] = x_a
                s, t = layer.scale_shift(full)
                affine = zt.MonotonicAffineTransform(t[..., ~mask], unclip(s[..., ~mask]))
                return zt.DependentTransform(affine, 1)
            parts.append(zt.CouplingTransform(meta, mask))
    d = flow.dim
    base = zd.DiagNormal(torch.zeros(d, dtype=torch.float64), torch.ones(d, dtype=torch.float64))
    return zd.NormalizingFlow(zt.ComposedTransform(*parts), base)


def test_coupling_flow_log_density_equals_zukos_on_the_same_transform():
    flow = vector_coupling_flow(dim=4, layers=4, width=16, seed=0)
    for m in flow.transform.layers:
        if isinstance(m, ActNorm):
            m.initialized.fill_(True)
    flow = perturbed(flow, 0.2).double()
    x = torch.randn(64, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    ours = flow.log_prob(x)
    theirs = _zuko_twin(flow).log_prob(x)
    assert torch.allclose(ours, theirs, atol=1e-9)
    assert (ours - standard_normal_log_prob(x)).abs().max() > 0.1  # not the base density


def test_a_flow_fitted_to_a_gaussian_recovers_its_log_density():
    cov = torch.tensor([[1.0, 0.8], [0.8, 1.0]]) * 0.5
    target = torch.distributions.MultivariateNormal(torch.tensor([1.0, -0.5]), cov)
    flow = vector_coupling_flow(dim=2, layers=4, width=32, seed=0)
    chol = torch.linalg.cholesky(cov)
    res = train(flow, flow.loss, lambda g: (target.mean + torch.randn(256, 2, generator=g) @ chol.T,),
                steps=400, lr=3e-3, progress=False, device="cpu")
    x = target.sample((2000,))
    gap = target.log_prob(x) - res.model.log_prob(x).detach()
    assert float(gap.mean()) < 0.02  # KL(target || flow) by Monte Carlo (>= 0 up to noise)
    assert float(gap.abs().mean()) < 0.1  # pointwise, on the target's own samples


def test_jacobi_is_exact_after_at_most_L_sweeps_and_converges_earlier_with_a_tolerance():
    block = perturbed(TARFlowBlock(2, 6, width=16, depth=1, heads=2), 0.3).double()
    z = torch.randn(4, 6, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        exact = block.inverse(z)
        x6, sweeps = block.inverse_jacobi(z)
        assert sweeps == 6 and torch.allclose(x6, exact, atol=1e-12)
        x2, _ = block.inverse_jacobi(z, max_sweeps=2)  # positions < 2 exact, the rest not yet
        assert torch.allclose(x2[:, :2], exact[:, :2], atol=1e-12)
        assert (x2 - exact).abs().max() > 1e-6
        xt, n = block.inverse_jacobi(z, tol=1e-4)
        # the stopping rule: the last change was below tol, and the error is of that order
        assert n <= 6
        assert float((xt - exact).norm() / exact.norm()) < 1e-2


def test_jacobi_fixed_point_rejects_bad_settings_and_solves_a_contraction():
    x, n, changes = jacobi_fixed_point(lambda v: 0.5 * v + 1, torch.zeros(3), 100, tol=1e-10)
    assert torch.allclose(x, torch.full((3,), 2.0)) and changes[-1] <= 1e-10 and n < 100
    with pytest.raises(ValueError, match="max_sweeps"):
        jacobi_fixed_point(lambda v: v, torch.zeros(1), 0)
    with pytest.raises(ValueError, match="tol"):
        jacobi_fixed_point(lambda v: v, torch.zeros(1), 1, tol=-1)


@pytest.mark.parametrize("w", [0.0, 0.5, 2.0])
def test_guided_gaussian_is_the_normalised_product_p_c_to_the_1_plus_w_over_p_u_to_the_w(w):
    mu_c, a_c, mu_u, a_u = torch.tensor(0.7), torch.tensor(-0.3), torch.tensor(-0.4), torch.tensor(0.2)
    mu, a = guided_gaussian(mu_c, a_c, mu_u, a_u, w)
    grid = torch.linspace(-8, 8, 40001, dtype=torch.float64)
    logn = lambda m, al: torch.distributions.Normal(m.double(), al.double().exp()).log_prob(grid)
    log_prod = (1 + w) * logn(mu_c, a_c) - w * logn(mu_u, a_u)
    dens = torch.softmax(log_prod, 0) / (grid[1] - grid[0])
    mean = float((dens * grid).sum() * (grid[1] - grid[0]))
    var = float((dens * (grid - mean) ** 2).sum() * (grid[1] - grid[0]))
    assert math.isclose(float(mu), mean, abs_tol=1e-6)
    assert math.isclose(float(torch.exp(2 * a)), var, rel_tol=1e-5)
    if w == 0:
        assert float(mu) == pytest.approx(0.7) and float(a) == pytest.approx(-0.3)


def test_guided_gaussian_floors_a_non_positive_precision():
    # a much sharper unconditional model makes (1 + w) λ_c - w λ_u negative: floored at 0.1 λ_c
    mu, a = guided_gaussian(torch.tensor(0.0), torch.tensor(0.0), torch.tensor(1.0), torch.tensor(-2.0), 1.0)
    assert torch.isfinite(mu) and float(torch.exp(-2 * a)) == pytest.approx(0.1)


def test_score_denoise_is_tweedies_posterior_mean_for_a_gaussian():
    # x ~ N(m, s²), x̃ = x + σ ε: E[x | x̃] = m + s² / (s² + σ²) (x̃ - m), and p_σ = N(m, s² + σ²)
    m, s, sigma = 1.5, 0.8, 0.5
    p_sigma = torch.distributions.Normal(m, math.sqrt(s ** 2 + sigma ** 2))
    xt = torch.linspace(-2, 4, 13).unsqueeze(1)
    out = score_denoise(lambda v: p_sigma.log_prob(v).sum(1), xt, sigma)
    assert torch.allclose(out, m + s ** 2 / (s ** 2 + sigma ** 2) * (xt - m), atol=1e-6)
    with pytest.raises(ValueError, match="sigma"):
        score_denoise(lambda v: v.sum(1), xt, -1.0)


def test_the_bayes_classifier_of_class_gaussians_is_the_exact_posterior():
    class Gaussians(torch.nn.Module):  # log p(x | c) = log N(x; c, 1) in 1D
        def log_prob(self, x, y):
            return torch.distributions.Normal(y.double(), 1.0).log_prob(x[:, 0])
    x = torch.tensor([[0.2], [1.6], [3.0]], dtype=torch.float64)
    ll = class_log_likelihoods(Gaussians(), x, 3)
    post = bayes_classify(ll).exp()
    exact = torch.softmax(-0.5 * (x - torch.arange(3.0)) ** 2, 1)
    assert torch.allclose(post, exact, atol=1e-12)
    assert post.argmax(1).tolist() == [0, 2, 2]
    with pytest.raises(ValueError, match="num_classes"):
        class_log_likelihoods(Gaussians(), x, 1)


def test_tarflow_sampling_counts_its_passes_and_guidance_doubles_them():
    flow = perturbed(TARFlow((1, 4, 4), patch=2, width=16, depths=(1, 1), heads=2, num_classes=3), 0.05)
    y = torch.tensor([0, 1])
    seq = flow.sample(2, torch.Generator().manual_seed(0), y=y)
    assert seq.nfe == 2 * 4  # L = 4 tokens per block, 2 blocks
    jac = flow.sample(2, torch.Generator().manual_seed(0), y=y, method="jacobi")
    assert jac.nfe == 8 and torch.allclose(jac.x, seq.x, atol=1e-5)
    assert flow.sample(2, torch.Generator().manual_seed(0), y=y, guidance=1.0).nfe == 16
    with pytest.raises(ValueError, match="unknown method"):
        flow.sample(2, method="newton")


def test_flows_reject_bad_shapes_and_settings():
    with pytest.raises(ValueError, match="expected x of shape"):
        vector_coupling_flow(dim=2).log_prob(torch.zeros(3, 3))
    with pytest.raises(ValueError, match="divisible"):
        TARFlow((1, 5, 5), patch=2)
    with pytest.raises(ValueError, match="even"):
        image_coupling_flow(1, 7)
    with pytest.raises(ValueError, match="too many levels"):
        MultiscaleFlow(1, 2, levels=3, steps=1, width=4)
    with pytest.raises(ValueError, match="clamp"):
        AffineCoupling(alternating_mask(2, 0), MLPConditioner(2), clamp=0)
    with pytest.raises(ValueError, match="alpha"):
        Logit(0.5)
    with pytest.raises(ValueError, match=r"\[-1, 1\]"):
        Logit()(torch.full((1, 2), 1.5))
    with pytest.raises(ValueError, match="at least one layer"):
        FlowSequence([])


def test_tarflow_loss_drops_labels_to_the_null_label_at_the_stated_rate():
    flow = perturbed(TARFlow((1, 4, 4), patch=2, width=16, depths=(1,), heads=2, num_classes=3,
                             label_dropout=0.5), 0.05)
    x, y = torch.randn(400, 1, 4, 4), torch.randint(0, 3, (400,))
    g = lambda: torch.Generator().manual_seed(0)
    drop = torch.rand(400, generator=g()) < 0.5
    expected = -flow.log_prob(x, y=torch.where(drop, 3, y)) / 16
    assert torch.allclose(flow.loss(flow, x, y, generator=g()).loss, expected.mean())
    assert 150 < int(drop.sum()) < 250
    flow.label_dropout = 0.0
    assert torch.allclose(flow.loss(flow, x, y).loss, (-flow.log_prob(x, y=y) / 16).mean())
    with pytest.raises(ValueError, match="label_dropout"):
        TARFlow((1, 4, 4), num_classes=3, label_dropout=1.0)


def test_nats_per_image_is_bits_per_dim_times_d_log_2():
    from minigen.eval.bits import bits_per_dim, nats_per_image
    lp = torch.tensor([-50.0, 10.0])
    assert torch.allclose(nats_per_image(lp, 64, 17), bits_per_dim(lp, 64, 17) * 64 * math.log(2))
