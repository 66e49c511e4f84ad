"""Every sampler returns a SampleResult whose NFE is the number of network calls it made, and
passes its extra keywords to the model as the condition — so a quality-against-NFE frontier is
one loop over samplers, and a conditional model needs no lambda."""

from __future__ import annotations

import pytest
import torch

from minigen.diffusion import pfgmpp
from minigen.diffusion.ddpm import DDPMLoss, DDPMSchedule
from minigen.recipe.ode_solvers import METHODS, integrate
from minigen.recipe.paths import Interpolant, LinearPath
from minigen.recipe.results import LossResult, SampleResult
from minigen.recipe.sde import VPSDE
from minigen.recipe.sde_solvers import euler_maruyama, predictor_corrector
from minigen.transport import interpolants as si
from minigen.transport.rectified import ddim_sample

SHAPE = (5, 2)


class CondModel:
    """A field that needs its condition ``c`` (B, 2) and counts its calls."""

    def __init__(self):
        self.calls = 0

    def __call__(self, x, t, c=None):
        assert c is not None, "the sampler dropped the condition"
        assert t.shape == (x.shape[0],)
        self.calls += 1
        return -0.5 * x + 0.1 * c


def gen(seed=0):
    return torch.Generator().manual_seed(seed)


def samplers(c):
    """name -> a call that runs the sampler with the condition c."""
    sched, sde = DDPMSchedule(T=20), VPSDE()
    x0 = torch.randn(SHAPE, generator=gen(1))
    interp = Interpolant(LinearPath())
    out = {f"ode_{m}": lambda f, m=m: integrate(f, x0, m, steps=4, c=c) for m in METHODS}
    out.update({
        "euler_maruyama": lambda f: euler_maruyama(sde, f, SHAPE, gen(), steps=6, c=c),
        "predictor_corrector": lambda f: predictor_corrector(sde, f, SHAPE, gen(), steps=3,
                                                             n_corrector=2, c=c),
        "ancestral": lambda f: sched.ancestral_sample(f, SHAPE, gen(), steps=7, c=c),
        "ddim": lambda f: sched.ddim_sample(f, SHAPE, gen(), steps=5, c=c),
        "ddim_any_path": lambda f: ddim_sample(f, LinearPath(), "velocity", x0, 4, c=c),
        "pfgmpp": lambda f: pfgmpp.sample(f, x0, steps=3, sigma_min=0.1, sigma_max=1.0, c=c),
        "interpolant_sde": lambda f: si.sample_sde(lambda x, t: f(x, t, c=c), None, interp, x0,
                                                   0.0, 6, gen()),
    })
    return out


@pytest.mark.parametrize("name", sorted(samplers(None)))
def test_every_sampler_reports_its_nfe_and_forwards_the_condition(name):
    c = torch.ones(SHAPE)
    model = CondModel()
    res = samplers(c)[name](model)
    assert isinstance(res, SampleResult)
    assert res.x.shape == SHAPE and torch.isfinite(res.x).all()
    assert res.nfe == model.calls, f"{name}: NFE {res.nfe} but {model.calls} network calls"


def test_a_different_condition_changes_the_samples():
    a = samplers(torch.ones(SHAPE))["ddim"](CondModel()).x
    b = samplers(-torch.ones(SHAPE))["ddim"](CondModel()).x
    assert not torch.allclose(a, b)


def test_ddpm_loss_is_l_simple_and_the_bound_as_a_loss_result():
    sched = DDPMSchedule(T=50)
    net = lambda x, t, c=0.0: 0.3 * x + c
    x = torch.randn(16, 2, generator=gen(2))
    res = DDPMLoss(sched).loss(net, x, gen(3), per_sample=True)
    per, t = sched.l_simple(net, x, gen(3))
    assert isinstance(res, LossResult)
    assert torch.equal(res.t, t) and torch.allclose(res.per_sample, per)
    assert torch.allclose(res.loss, per.mean())
    assert DDPMLoss(sched).loss(net, x, gen(3)).per_sample is None  # the default everywhere
    vlb = DDPMLoss(sched, "vlb", importance=True).loss(net, x, gen(3), per_sample=True)
    per_v, t_v = sched.l_vlb(net, x, gen(3), importance=True)
    assert torch.equal(vlb.t, t_v) and torch.allclose(vlb.per_sample, per_v)
    cond = DDPMLoss(sched).loss(net, x, gen(3), c=1.0)
    assert not torch.allclose(cond.loss, res.loss)  # the condition reached the model
    with pytest.raises(ValueError, match="kind"):
        DDPMLoss(sched, "elbo")
    with pytest.raises(ValueError, match="importance"):
        DDPMLoss(sched, "simple", importance=True)
