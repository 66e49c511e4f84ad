"""GPU smoke test: every loss trains and every sampler runs for a few steps on CUDA with tiny
networks, so no part creates a tensor on the CPU inside a CUDA computation. Skipped without
CUDA; ``make test-gpu`` runs it. ``MINIGEN_TEST_DEVICE=cpu`` runs the same code on the CPU (a
dry run of the test itself, not of the device handling)."""

from __future__ import annotations

import math
import os

import pytest
import torch

from minigen.diffusion import pfgmpp
from minigen.diffusion.ddpm import DDPMLoss, DDPMSchedule
from minigen.diffusion.score_matching import DenoisingScoreMatching
from minigen.latent.vae import ConvVAE, vae_loss
from minigen.nets.mlp import MLP
from minigen.nets.unet import UNet
from minigen.recipe.gamma import BrownianGamma
from minigen.recipe.objectives import CFM_VARIANTS, cfm_variant
from minigen.recipe.ode_solvers import METHODS, integrate
from minigen.recipe.paths import Interpolant, LinearPath
from minigen.recipe.sde import VPSDE
from minigen.recipe.sde_solvers import euler_maruyama, predictor_corrector
from minigen.recipe.wrappers import probability_flow_velocity
from minigen.train import train
from minigen.transport import interpolants as si
from minigen.transport.rectified import ddim_sample

CUDA = torch.device(os.environ.get("MINIGEN_TEST_DEVICE", "cuda"))
pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(CUDA.type == "cuda" and not torch.cuda.is_available(),
                                 reason="needs a CUDA device")]


def gen(seed=0):
    return torch.Generator().manual_seed(seed)


def two(n=32):
    return lambda g: (torch.randn(n, 2, generator=g), torch.randn(n, 2, generator=g) + 3)


@pytest.mark.parametrize("variant", CFM_VARIANTS)
def test_cfm_variants_train_on_cuda(variant):
    res = train(MLP(2, width=16, depth=2), cfm_variant(variant).loss, two(), steps=3, device=CUDA,
                per_t_bins=4, ema_decay=0.9, progress=False)
    assert next(res.model.parameters()).device.type == CUDA.type and len(res.losses) == 3


def test_other_losses_train_on_cuda():
    one = lambda g: (torch.randn(16, 2, generator=g),)
    train(MLP(2, width=16, depth=2), DenoisingScoreMatching(VPSDE(), "likelihood", True).loss, one,
          steps=3, device=CUDA, per_t_bins=4, progress=False)
    train(MLP(2, width=16, depth=2), DDPMLoss(DDPMSchedule(T=50), "vlb", importance=True).loss, one,
          steps=3, device=CUDA, per_t_bins=4, progress=False)
    train(pfgmpp.EDMDenoiser(MLP(2, width=16, depth=2), 0.5), pfgmpp.PFGMppLoss(D=4).loss, one,
          steps=3, device=CUDA, progress=False)
    interp = Interpolant(LinearPath(), BrownianGamma(1.0))
    train(MLP(2, width=16, depth=2), si.DenoiserObjective(interp).loss, two(), steps=3, device=CUDA,
          progress=False)
    images = lambda g: (torch.rand(8, 1, 14, 14, generator=g) * 2 - 1,)
    train(ConvVAE(14, latent_dim=4, base=8), vae_loss, images, steps=2, device=CUDA, progress=False)
    train(UNet(base=8), DDPMLoss(DDPMSchedule(T=50)).loss, images, steps=2, device=CUDA, progress=False)


def test_every_sampler_runs_on_cuda():
    net = MLP(2, width=16, depth=2).to(CUDA).eval()
    x0 = torch.randn(8, 2, generator=gen(1)).to(CUDA)
    sde, sched = VPSDE(), DDPMSchedule(T=20)
    score = DenoisingScoreMatching(sde).score(net)
    runs = {f"ode_{m}": lambda m=m: integrate(net, x0, m, steps=3) for m in METHODS}
    runs.update({
        "pf_ode_dopri5": lambda: integrate(probability_flow_velocity(sde, score), x0, "dopri5",
                                           t0=sde.t_min, t1=sde.t_max),
        "euler_maruyama": lambda: euler_maruyama(sde, score, (8, 2), gen(), steps=4, device=CUDA),
        "predictor_corrector": lambda: predictor_corrector(sde, score, (8, 2), gen(), steps=3, device=CUDA),
        "ancestral": lambda: sched.ancestral_sample(net, (8, 2), gen(), steps=5, device=CUDA),
        "ddim": lambda: sched.ddim_sample(net, (8, 2), gen(), steps=5, eta=1.0, device=CUDA),
        "ddim_any_path": lambda: ddim_sample(net, LinearPath(), "velocity", x0, 3),
        "pfgmpp": lambda: pfgmpp.sample(pfgmpp.EDMDenoiser(net, 0.5), x0, steps=3, noise=0.1,
                                        generator=gen()),
        "interpolant_sde": lambda: si.sample_sde(net, net, Interpolant(LinearPath(), BrownianGamma()),
                                                 x0, 0.5, 4, gen()),
    })
    with torch.no_grad():
        for name, run in runs.items():
            res = run()
            assert res.x.device.type == CUDA.type and torch.isfinite(res.x).all(), name


def test_likelihood_and_reflow_terms_on_cuda():
    from minigen.recipe.likelihood import log_likelihood, standard_normal_log_prob
    from minigen.transport.rectified import coupling_terms, identity_terms

    net = MLP(2, width=16, depth=2).to(CUDA).eval()
    x = torch.randn(8, 2, generator=gen(2)).to(CUDA)
    for estimator in ("exact", "hutchinson"):
        ll = log_likelihood(net, x, standard_normal_log_prob, steps=3, estimator=estimator,
                            generator=gen(3))
        assert ll.device.type == CUDA.type and torch.isfinite(ll).all()
    assert torch.isfinite(coupling_terms(net, x, x + 1, n_t=4)["cross"]).all()
    assert math.isfinite(identity_terms(net, x, x + 1, steps=4)["gap"])


def test_flows_train_sample_and_denoise_on_cuda():
    from minigen.flows.denoise import score_denoise
    from minigen.flows.multiscale import image_coupling_flow, vector_coupling_flow
    from minigen.flows.tarflow import TARFlow
    from minigen.latent.autoencoder import ConvAutoencoder, weighted_reconstruction_loss
    imgs = lambda g: (torch.rand(8, 1, 8, 8, generator=g) * 2 - 1,)
    for flow in (image_coupling_flow(1, 8, levels=2, steps=1, width=8, logit=0.05),
                 vector_coupling_flow(2, layers=2, width=8)):
        batch = imgs if flow.dim == 64 else (lambda g: (torch.randn(8, 2, generator=g),))
        res = train(flow, flow.loss, batch, steps=2, device=CUDA, progress=False)
        assert res.model.sample(4, gen()).x.device.type == CUDA.type
    tar = TARFlow((1, 8, 8), patch=2, width=16, depths=(1, 1), heads=2, num_classes=3)
    labelled = lambda g: (torch.randn(8, 1, 8, 8, generator=g), torch.randint(0, 3, (8,), generator=g))
    tar = train(tar, tar.loss, labelled, steps=2, device=CUDA, progress=False).model
    y = torch.tensor([0, 1], device=CUDA)
    for method in ("sequential", "jacobi"):
        out = tar.sample(2, gen(), y=y, guidance=1.0, method=method, tol=1e-3)
        assert out.x.device.type == CUDA.type
    assert score_denoise(tar.log_prob, out.x, 0.1, y=y).device.type == CUDA.type
    train(ConvAutoencoder(8, base=8, downs=1), weighted_reconstruction_loss, imgs, steps=2, device=CUDA,
          progress=False)
