"""Model wrappers (DESIGN.md, part 5 of 5): a trained network seen as another field.

Every wrapper takes a model called as ``model(x, t, **cond)`` and returns a field with the
same signature, so solvers and samplers never need a lambda:

* ``score_from_epsilon_model``: s(x, t) = -eps(x, t) / sigma(t) on an SDE's path;
* ``velocity_from_epsilon_model``: v = alpha' (x - sigma eps) / alpha + sigma' eps on a path;
* ``probability_flow_velocity``: the probability-flow ODE's velocity of a score model.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from minigen.recipe.paths import GaussianPath, expand_t
from minigen.recipe.sde import SDE, ScoreFn

Tensor = torch.Tensor


def score_from_epsilon_model(eps_model: Callable, sde: SDE) -> Callable[[Tensor, Tensor], Tensor]:
    """s_theta(x, t) = -eps_theta(x, t) / sigma(t) (Tweedie; Song et al., 2021, App. C uses the same
    1/sigma output scaling): a ``score_fn(x, t)`` for the samplers of ``minigen.recipe.sde_solvers``."""
    return lambda x, t: -eps_model(x, t) / expand_t(sde.path.sigma(expand_t(t, x).view(-1)), x)

def velocity_from_epsilon_model(eps_model: Callable, path: GaussianPath) -> Callable:
    """v(x, t) = path.convert(eps_model(x, t), x, t, "epsilon", "velocity") on the VP path of the
    schedule (``DDPMSchedule.continuous_path()``), so the foundation's ODE solvers sample a
    DDPM: v = alpha' (x - sigma eps) / alpha + sigma' eps. Integrate from t = 0 to
    ``path.t_max`` (sigma' diverges at t = 1)."""
    return lambda x, t: path.convert(eps_model(x, t), x, t, "epsilon", "velocity")

def probability_flow_velocity(sde: SDE, score_fn: ScoreFn) -> Callable[[Tensor, Tensor], Tensor]:
    """v(x, t) = -f(x, t) + ½ g(t)² score(x, t), the probability-flow ODE in our time
    (Song et al., 2021, eq. 13 with ds = -dt): a velocity field for ``minigen.recipe.ode_solvers.integrate``
    (from ``sde.t_min`` to ``sde.t_max``) and ``minigen.recipe.likelihood.log_likelihood`` (with
    ``sde.prior_log_prob`` as the source density)."""
    return lambda x, t: sde.reverse_drift(x, t, score_fn(x, t), diffusion=0.0)
