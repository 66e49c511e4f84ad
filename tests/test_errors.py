"""Bad input gets a clear error (book/design.md, Conventions): each case raises the documented
exception with a message that names the problem."""

from __future__ import annotations

import math

import pytest
import torch

from minigen.data import toy2d
from minigen.eval.gaussian import GaussianTarget
from minigen.nets.mlp import MLP
from minigen.recipe import couplings, objectives, paths, time_samplers
from minigen.recipe import ode_solvers as solvers
from minigen.train import EMA
from minigen.workbook import record

torch.set_num_threads(1)
X = torch.zeros(4, 2)
T = torch.full((4,), 0.5)


def test_unknown_path_name():
    with pytest.raises(ValueError, match=r"unknown path 'diagonal'; choose from \['bridge'"):
        paths.make_path("diagonal")


def test_unknown_solver():
    with pytest.raises(ValueError, match="unknown solver 'rk45'; choose from"):
        solvers.integrate(lambda x, t: x, X, "rk45")


def test_unknown_prediction_type():
    with pytest.raises(ValueError, match="unknown prediction type 'noise'"):
        paths.LinearPath().convert(X, X, T, "velocity", "noise")
    with pytest.raises(ValueError, match="unknown prediction type 'v'"):
        paths.LinearPath().convert(X, X, T, "v", "x1")
    with pytest.raises(ValueError, match="unknown prediction type 'score'"):
        objectives.CFM(paths.LinearPath(), prediction="score")
    with pytest.raises(ValueError, match="epsilon prediction needs a N\\(0, I\\) source"):
        objectives.CFM(paths.LinearPath(source_is_gaussian=False), prediction="epsilon")


def test_unknown_time_sampler():
    with pytest.raises(ValueError, match="unknown time sampler 'beta'"):
        time_samplers.sample_time(4, torch.Generator(), "beta")
    with pytest.raises(ValueError, match="unknown time sampler 'beta'"):
        objectives.CFM(paths.LinearPath(), time_sampler="beta")
    with pytest.raises(ValueError, match="logit-normal scale must be > 0"):
        time_samplers.sample_time(4, torch.Generator(), "logit_normal", scale=0.0)


def test_unknown_names_elsewhere():
    with pytest.raises(ValueError, match="unknown CFM variant 'rf'"):
        objectives.cfm_variant("rf")
    with pytest.raises(ValueError, match="unknown 2D data set 'swissroll'"):
        toy2d.sample_2d("swissroll", 10, torch.Generator())
    with pytest.raises(ValueError, match="unknown activation 'swish'"):
        MLP(2, activation="swish")


@pytest.mark.parametrize("shape", [(4, 3), (4,), (4, 1, 2)])
def test_wrong_x_shape_to_mlp(shape):
    with pytest.raises(ValueError, match=r"MLP expects x of shape \(B, 2\), got"):
        MLP(2)(torch.zeros(shape), torch.zeros(shape[0]))


def test_mlp_condition_and_sizes():
    with pytest.raises(ValueError, match=r"MLP expects cond of shape \(B, 3\)"):
        MLP(2, cond_dim=3)(X, T)
    with pytest.raises(ValueError, match=r"MLP expects cond of shape \(B, 3\)"):
        MLP(2, cond_dim=3)(X, T, torch.zeros(4, 2))
    with pytest.raises(ValueError, match="must be positive"):
        MLP(2, width=0)
    assert MLP(2, cond_dim=3)(X, T, torch.zeros(4, 3)).shape == (4, 2)


@pytest.mark.parametrize("t", [torch.zeros(3), torch.zeros(4, 1), torch.zeros(2, 2)])
def test_t_with_a_wrong_shape(t):
    msg = r"t must be a scalar or have shape \(4,\), got"
    with pytest.raises(ValueError, match=msg):
        MLP(2)(X, t)
    with pytest.raises(ValueError, match=msg):
        paths.LinearPath().sample(X, X, t)
    with pytest.raises(ValueError, match=msg):
        paths.VPCosinePath().convert(X, X, t, "velocity", "x1")
    with pytest.raises(ValueError, match=msg):
        GaussianTarget(torch.zeros(2), torch.eye(2)).velocity(paths.LinearPath(), X, t)


@pytest.mark.parametrize("steps", [0, -1, 2.5, "10"])
def test_steps_must_be_a_positive_integer(steps):
    with pytest.raises(ValueError, match="steps must be a positive integer"):
        solvers.integrate(lambda x, t: x, X, "euler", steps)


def test_mismatched_x0_x1_shapes():
    with pytest.raises(ValueError, match=r"x0 and x1 must have the same shape, got \(4, 2\) and \(4, 3\)"):
        paths.LinearPath().sample(X, torch.zeros(4, 3), T)
    with pytest.raises(ValueError, match="same shape"):
        paths.VEPath().sample(X, torch.zeros(3, 2), T[:3])
    with pytest.raises(ValueError, match="need the same batch size, got 3 and 4"):
        couplings.exact_ot_assignment(torch.zeros(3, 2), X)
    with pytest.raises(ValueError, match="same batch size"):
        couplings.independent(torch.zeros(3, 2), X)
    with pytest.raises(ValueError, match="same batch size"):
        couplings.SinkhornOT()(torch.zeros(3, 2), X)
    with pytest.raises(ValueError, match="same batch size"):
        couplings.gibbs_weights(torch.zeros(3, 2), X, 1.0)


@pytest.mark.parametrize("decay", [0.0, 1.0, 1.5, -0.5, math.nan])
def test_bad_ema_decay(decay):
    with pytest.raises(ValueError, match=r"EMA decay must be in \(0, 1\)"):
        EMA(MLP(2), decay)


def test_bad_parameters_of_paths_and_couplings():
    with pytest.raises(ValueError, match="need 0 < beta_min < beta_max"):
        paths.VPLinearBetaPath(beta_min=30.0)
    with pytest.raises(ValueError, match="need 0 < sigma_min < sigma_max"):
        paths.VEPath(sigma_min=5.0, sigma_max=1.0)
    with pytest.raises(ValueError, match="bridge noise level s must be > 0"):
        paths.BridgePath(s=-1.0)
    with pytest.raises(ValueError, match="Gibbs temperature eps must be > 0"):
        couplings.gibbs_weights(X, X, 0.0)
    with pytest.raises(ValueError, match="reg and n_iter must be positive"):
        couplings.SinkhornOT(reg=0.0)
    with pytest.raises(ValueError, match="reg and n_iter must be positive"):
        couplings.sinkhorn_plan(torch.ones(2, 2), 1.0, 0)
    with pytest.raises(ValueError, match="reg and n_iter must be positive"):
        couplings.sinkhorn_log_plan(torch.ones(2, 2), -1.0, 5)


def test_record_with_a_bad_better_or_a_non_finite_value(tmp_path, monkeypatch):
    monkeypatch.setenv(record.RESULTS_ENV, str(tmp_path))
    with pytest.raises(ValueError, match="better must be 'lower' or 'higher', got 'smaller'"):
        record.record("99_bad", {"w2": {"value": 1.0, "unit": "", "better": "smaller"}}, mode="quick",
                      seed=0, wall_s=0.0)
    for bad in (math.nan, math.inf, -math.inf):
        with pytest.raises(ValueError, match="metric value must be finite"):
            record.record("99_bad", {"w2": bad}, mode="quick", seed=0, wall_s=0.0)
    with pytest.raises(ValueError, match="mode must be quick, full or gpu, got 'fast'"):
        record.record("99_bad", {"w2": 1.0}, mode="fast", seed=0, wall_s=0.0)
    assert not list(tmp_path.rglob("*"))  # nothing written for a refused record
    with pytest.raises(ValueError, match="better must be"):
        record.metric(1.0, "", "smaller")


def test_missing_generator():
    with pytest.raises(ValueError, match="explicit torch.Generator"):
        toy2d.eight_gaussians(10, None)
    with pytest.raises(ValueError, match="not Gaussian"):
        paths.LinearPath(source_is_gaussian=False).prior_sample((2, 2), torch.Generator())


def test_bad_metric_inputs():
    from minigen.eval import metrics

    with pytest.raises(ValueError, match=r"x and y must be \(n, d\) and \(m, d\)"):
        metrics.wasserstein2_squared(torch.zeros(5, 2), torch.zeros(5, 3))
    with pytest.raises(ValueError, match="must be finite"):  # POT returned 0 for these
        metrics.wasserstein2_squared(torch.tensor([[0.0, float("nan")], [1.0, 1.0]]), torch.zeros(2, 2))
    with pytest.raises(ValueError, match="W2² must be > 0"):
        metrics.normalized_path_energy(1.0, -0.1)


def _choice_cases():
    """(call with a bad name, the valid choices) for every name-taking entry point; each choice
    list is the one the code looks names up in, so a message that omits one fails."""
    from minigen.diffusion import ddpm, score_matching
    from minigen.eval import fd
    from minigen.nets import mlp
    from minigen.recipe import gamma, likelihood
    from minigen.recipe.sde import VPSDE
    from minigen.train import train
    from minigen.transport import generator_matching as gm

    gm_path = gm.MixturePath1D(torch.tensor([0.5, 0.5]), torch.tensor([-1.0, 1.0]),
                               torch.tensor([0.3, 0.3])) if hasattr(gm, "MixturePath1D") else None
    cases = [
        ("path", lambda: paths.make_path("diagonal"), sorted(paths.PATHS)),
        ("solver", lambda: solvers.integrate(lambda x, t: x, X, "rk45"), solvers.METHODS),
        ("prediction", lambda: paths.LinearPath().convert(X, X, T, "velocity", "noise"),
         paths.PREDICTIONS),
        ("regression target", lambda: objectives.CFM(paths.LinearPath(), prediction="score"),
         objectives.REGRESSION_TARGETS),
        ("regression_target", lambda: objectives.regression_target(None, "score"),
         objectives.REGRESSION_TARGETS),
        ("time sampler", lambda: time_samplers.sample_time(4, torch.Generator(), "beta"),
         time_samplers.TIME_SAMPLERS),
        ("CFM variant", lambda: objectives.cfm_variant("rf"), objectives.CFM_VARIANTS),
        ("2D data set", lambda: toy2d.sample_2d("swissroll", 10, torch.Generator()),
         sorted(toy2d.TOY_2D)),
        ("activation", lambda: MLP(2, activation="swish"), sorted(mlp.ACTIVATIONS)),
        ("gamma", lambda: gamma.make_gamma("cubic"), sorted(gamma.GAMMAS)),
        ("weighting", lambda: score_matching.DenoisingScoreMatching(
            VPSDE(paths.VPCosinePath()), weighting="flat"), score_matching.WEIGHTINGS),
        ("dsm_weight", lambda: score_matching.dsm_weight(VPSDE(), T, "flat"),
         score_matching.WEIGHTINGS),
        ("DDPM loss kind", lambda: ddpm.DDPMLoss(ddpm.DDPMSchedule(), kind="hybrid"),
         ("simple", "vlb")),
        ("likelihood solver", lambda: likelihood.log_likelihood(
            lambda x, t: x, X, lambda x: x.sum(1), method="dopri5"), tuple(solvers.FIXED_STEP)),
        ("lr schedule", lambda: train(torch.nn.Linear(2, 2), None, None, steps=1,
                                      lr_schedule="step"), ("None", "cosine")),
        ("MNIST split", lambda: fd.real_mnist_images("val"), ("train", "test")),
        ("metric direction", lambda: record.metric(1.0, better="up"), ("lower", "higher")),
        ("DDPM variance", lambda: ddpm.DDPMSchedule().model_variance(
            X, torch.tensor([5] * 4), variance="fixed"), ddpm.VARIANCES),
        ("divergence estimator", lambda: likelihood.log_likelihood(
            lambda x, t: x, X, lambda x: x.sum(1), estimator="trace"), ("exact", "hutchinson")),
        ("record mode", lambda: record.record("99_x", {}, mode="fast", seed=0, wall_s=0.0),
         ("quick", "full", "gpu")),
    ]
    if gm_path is not None:
        cases.append(("jump", lambda: gm.jump_rate(gm_path, torch.zeros(3), 0.5, jump="x"),
                      gm.JUMPS))
        cases.append(("jump destination", lambda: gm.jump_destinations(
            gm_path, torch.zeros(3), 0.5, torch.Generator(), jump="x", n_grid=11), gm.JUMPS))
    return cases


@pytest.mark.parametrize("what,call,choices", _choice_cases(), ids=[c[0] for c in _choice_cases()])
def test_every_unknown_name_error_lists_the_choices(what, call, choices):
    with pytest.raises(ValueError) as err:
        call()
    missing = [c for c in choices if c not in str(err.value)]
    assert not missing, f"{what}: {err.value} does not list {missing}"


PATH_CLASSES = [paths.LinearPath, paths.VPCosinePath, paths.VPLinearBetaPath, paths.VEPath,
                paths.SubVPPath, paths.Interpolant, paths.BridgePath]


@pytest.mark.parametrize("cls", PATH_CLASSES, ids=lambda c: c.__name__)
@pytest.mark.parametrize("t", [1.5, -0.1, torch.tensor([0.5, 1.5]), torch.tensor([-0.1, 0.5])],
                         ids=["1.5", "-0.1", "tensor>1", "tensor<0"])
def test_paths_reject_t_outside_the_unit_interval(cls, t):
    """The issue's case: VPCosinePath().alpha(1.5) was sin(0.75 pi) = 0.71, silently."""
    path = cls()
    for fn in (path.alpha, path.sigma, path.d_alpha, path.d_sigma):
        with pytest.raises(ValueError, match=r"t must lie in \[0, 1\]"):
            fn(t if isinstance(t, torch.Tensor) else torch.tensor(t))
    with pytest.raises(ValueError, match=r"t must lie in \[0, 1\]"):
        path.sample(X, X, torch.full((4,), 1.5) if (t if isinstance(t, float) else t.max()) > 1
                    else torch.full((4,), -0.1), z=torch.zeros(4, 2))


@pytest.mark.parametrize("cls", PATH_CLASSES, ids=lambda c: c.__name__)
def test_paths_accept_the_ends_of_the_interval(cls):
    path = cls()
    t = torch.tensor([0.0, 0.5, 1.0], dtype=torch.float64)
    assert torch.isfinite(path.alpha(t)).all() and torch.isfinite(path.sigma(t)).all()
