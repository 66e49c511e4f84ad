"""Model wrappers (book/design.md, part 5 of 5): a trained network seen as another field.

Every wrapper takes a model called as ``model(x, t, **cond)`` (x (B, ...), t (B,)) and returns
a field with the same signature, so solvers and samplers pass a condition (``cond_image=y``, a
class label) straight through, and no chapter needs a lambda:

* ``converted``: a network trained on one prediction type (velocity, x1, epsilon, score) seen
  as another, through the path's exact conversions (Lipman et al., 2024, §4.8);
* ``velocity_from_epsilon_model``: the velocity of an epsilon network on a path;
* ``score_from_epsilon_model``: s(x, t) = -eps(x, t) / sigma(t) on an SDE's path;
* ``probability_flow_velocity``: the probability-flow ODE of a score model;
* ``classifier_free_guidance``: (1 + w) f(x, t | c) - w f(x, t | no condition) (Ho &
  Salimans, 2022), for any of the fields above;
* ``retimed``: a model evaluated at tau(t), for a network trained in another clock.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from minigen.broadcast import expand_t
from minigen.recipe.paths import GaussianPath
from minigen.recipe.sde import SDE

Tensor = torch.Tensor
Field = Callable[..., Tensor]  # f(x (B, ...), t (B,), **cond) -> (B, ...)


def converted(model: Field, path: GaussianPath, src: str, dst: str) -> Field:
    """The ``dst`` prediction of a network that outputs the ``src`` prediction on ``path``
    (``GaussianPath.convert``): e.g. ``converted(eps_net, path, "epsilon", "velocity")``."""
    if src == dst:
        return model

    def field(x: Tensor, t: Tensor, **cond) -> Tensor:
        return path.convert(model(x, t, **cond), x, t, src, dst)

    return field


def velocity_from_epsilon_model(eps_model: Field, path: GaussianPath) -> Field:
    """v(x, t) = alpha' (x - sigma eps) / alpha + sigma' eps on ``path``, e.g. the VP path of a
    DDPM schedule (``DDPMSchedule.continuous_path()``), so the ODE solvers sample a DDPM.
    Integrate from t = 0 to ``path.t_max`` (sigma' diverges at t = 1)."""
    return converted(eps_model, path, "epsilon", "velocity")


def score_from_epsilon_model(eps_model: Field, sde: SDE) -> Field:
    """s_theta(x, t) = -eps_theta(x, t) / sigma(t) (Tweedie; Song et al., 2021, App. C uses the
    same 1/sigma output scaling): a ``score_fn`` for ``minigen.recipe.sde_solvers``."""

    def score(x: Tensor, t: Tensor, **cond) -> Tensor:
        return -eps_model(x, t, **cond) / expand_t(sde.path.sigma(expand_t(t, x).view(-1)), x)

    return score


def probability_flow_velocity(sde: SDE, score_fn: Field) -> Field:
    """v(x, t) = -f(x, t) + ½ g(t)² score(x, t), the probability-flow ODE in our time
    (Song et al., 2021, eq. 13 with ds = -dt): a velocity field for
    ``minigen.recipe.ode_solvers.integrate`` (from ``sde.t_min`` to ``sde.t_max``) and
    ``minigen.recipe.likelihood.log_likelihood`` (with ``sde.prior_log_prob`` as the source)."""

    def velocity(x: Tensor, t: Tensor, **cond) -> Tensor:
        return sde.reverse_drift(x, t, score_fn(x, t, **cond), diffusion=0.0)

    return velocity


def classifier_free_guidance(model: Field, w: float, unconditional: dict | None = None) -> Field:
    """f_w(x, t | c) = (1 + w) f(x, t, **c) - w f(x, t, **unconditional) (Ho & Salimans, 2022,
    eq. 6, written for any field: epsilon, velocity or score — all are linear in the
    conditional and unconditional predictions). ``unconditional`` holds the keywords that mean
    "no condition" for this network (e.g. ``{"cond": None}`` or a null label); w = 0 is the
    conditional model."""
    if not w >= 0:
        raise ValueError(f"guidance weight w must be >= 0, got {w}")
    null = {} if unconditional is None else dict(unconditional)

    def guided(x: Tensor, t: Tensor, **cond) -> Tensor:
        f_c = model(x, t, **cond)
        if w == 0:
            return f_c
        return (1 + w) * f_c - w * model(x, t, **{**cond, **null})

    return guided


def retimed(model: Field, tau: Callable[[Tensor], Tensor], rate: Callable[[Tensor], Tensor] | None = None
            ) -> Field:
    """g(x, t) = tau'(t) f(x, tau(t)): a field of the clock tau seen in the clock t (with
    ``rate`` = tau'; without it, f(x, tau(t)) unscaled, for predictions that are not rates,
    e.g. x1 or epsilon). An exact change of variables of the ODE dx/dtau = f."""

    def field(x: Tensor, t: Tensor, **cond) -> Tensor:
        out = model(x, tau(t), **cond)
        return out if rate is None else expand_t(rate(t), x) * out

    return field
