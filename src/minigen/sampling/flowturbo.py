"""FlowTurbo (Zhao et al., 2024, "FlowTurbo: Towards Real-time Flow-Based Image Generation with
Velocity Refiner", §3): the velocity of a trained flow changes slowly along a sampling
trajectory, so late steps can replace the network by a cheap correction of the last velocity.

* **Pseudo corrector** (§3.3): Heun's method, k1 = v(x_k, t_k), x~ = x_k + h k1,
  k2 = v(x~, t_{k+1}), x_{k+1} = x_k + h/2 (k1 + k2), but the next step's k1 is the k2 just
  computed (the velocity at the predictor x~ stands in for the one at x_{k+1}): second-order
  accuracy kept, one NFE per step instead of two.
* **Velocity refiner** (§3.2): a small network r(x, v_prev, t) trained to predict the change of
  velocity between two steps, v(x_{k+1}, t_{k+1}) - v(x_k, t_k), from the new state and the
  cached velocity; a refiner step is v_{k+1} = v_k + r(x_{k+1}, v_k, t_{k+1}) at the refiner's
  cost, not the teacher's.
* **Sampling** (§3.4): H Heun steps, then P pseudo-corrector steps, then R refiner steps, each
  of the last ones an Euler update with the refined velocity.

Models are called as ``v(x, t, **cond)``, the refiner as ``refiner(x, v_prev, t)``.
"""

from __future__ import annotations

import torch
from torch import nn

from minigen.broadcast import batch_time
from minigen.recipe.grid_solvers import check_grid
from minigen.recipe.ode_solvers import Velocity
from minigen.recipe.results import LossResult, SampleResult

Tensor = torch.Tensor


class VelocityRefiner(nn.Module):
    """r(x, v_prev, t): the change of velocity from the cached one, by a network ``body``.

    ``concat=True``: body(cat[x, v_prev] along dim 1, t), e.g. ``MLP(2 d, out_dim=d)``;
    ``concat=False``: body(x, t, cond_image=v_prev), e.g. ``UNet(c, cond_channels=c)``.
    The last layer of ``body`` is zeroed, so an untrained refiner keeps the cached velocity."""

    def __init__(self, body: nn.Module, concat: bool = True):
        super().__init__()
        self.body, self.concat = body, concat
        last = [m for m in body.modules() if isinstance(m, (nn.Linear, nn.Conv2d))][-1]
        nn.init.zeros_(last.weight)
        nn.init.zeros_(last.bias)

    def forward(self, x: Tensor, v_prev: Tensor, t: Tensor) -> Tensor:
        if x.shape != v_prev.shape:
            raise ValueError(f"x and v_prev must have one shape, got {tuple(x.shape)}, {tuple(v_prev.shape)}")
        if self.concat:
            return self.body(torch.cat([x, v_prev], 1), t)
        return self.body(x, t, cond_image=v_prev)


def refiner_loss(teacher: Velocity, path, h_max: float = 0.2):
    """The refiner's regression (§3.2), on the teacher's own Euler steps: draw x_t on the
    conditional ``path`` from (x0, x1), a step h ~ U(0, h_max) (t + h <= 1), the teacher's
    v_t = v(x_t, t) and x' = x_t + h v_t; the target is v(x', t + h) - v_t. Returns a loss
    ``(refiner, x0, x1, generator, per_sample=False) -> LossResult`` for ``train`` (2 teacher
    NFE per batch, no gradient through the teacher)."""
    if not 0 < h_max <= 1:
        raise ValueError(f"h_max must lie in (0, 1], got {h_max}")

    def loss(refiner: nn.Module, x0: Tensor, x1: Tensor, generator: torch.Generator,
             per_sample: bool = False) -> LossResult:
        n = len(x1)
        h = h_max * torch.rand(n, generator=generator, dtype=torch.float64)
        t = (1 - h) * torch.rand(n, generator=generator, dtype=torch.float64)
        t, h = t.to(x1), h.to(x1)
        with torch.no_grad():
            xt = path.sample(x0, x1, t).xt
            v_t = teacher(xt, t)
            x_next = xt + h.view(-1, *[1] * (x1.ndim - 1)) * v_t
            target = teacher(x_next, t + h) - v_t
        err = (refiner(x_next, v_t, t + h) - target).pow(2).flatten(1).mean(1)
        return LossResult(err.mean(), err.detach() if per_sample else None, t)

    return loss


def pseudo_corrector_sample(v: Velocity, x: Tensor, times: Tensor, **cond) -> SampleResult:
    """Heun steps with the predictor's velocity reused as the next step's first one (§3.3):
    NFE = K + 1 on a grid of K intervals (Heun's is 2K)."""
    times = check_grid(times)
    with torch.no_grad():
        k1 = v(x, batch_time(times[0], x), **cond)
        for t, t_next in zip(times[:-1].tolist(), times[1:].tolist()):
            h = t_next - t
            x_pred = x + h * k1
            k2 = v(x_pred, batch_time(t_next, x), **cond)
            x = x + 0.5 * h * (k1 + k2)
            k1 = k2
    return SampleResult(x, len(times), times=times)


def flowturbo_sample(v: Velocity, refiner: nn.Module, x: Tensor, times: Tensor, heun: int,
                     pseudo: int, **cond) -> tuple[SampleResult, int]:
    """FlowTurbo's sampler (§3.4) on a grid of H + P + R intervals: ``heun`` Heun steps,
    ``pseudo`` pseudo-corrector steps, and Euler steps with refined velocities for the rest.
    Returns the SampleResult (its nfe counts teacher evaluations) and the refiner evaluations."""
    times = check_grid(times)
    n = len(times) - 1
    if not (isinstance(heun, int) and isinstance(pseudo, int) and heun >= 0 and pseudo >= 0
            and heun + pseudo <= n):
        raise ValueError(f"need integers heun, pseudo >= 0 with heun + pseudo <= {n}, got {heun}, {pseudo}")
    nfe = refines = 0
    k1, cached_at = None, None  # the cached velocity and the grid index it belongs to
    with torch.no_grad():
        for k, (t, t_next) in enumerate(zip(times[:-1].tolist(), times[1:].tolist())):
            h = t_next - t
            if k1 is None or k < heun:  # Heun evaluates afresh at the start of its step
                k1, nfe = v(x, batch_time(t, x), **cond), nfe + 1
            elif cached_at != k:  # the cache is from the step before: refine it to t
                k1, refines = k1 + refiner(x, k1, batch_time(t, x)), refines + 1
            if k < heun + pseudo:  # Heun / pseudo corrector: k2 becomes the next step's cache
                k2 = v(x + h * k1, batch_time(t_next, x), **cond)
                nfe += 1
                x, k1, cached_at = x + 0.5 * h * (k1 + k2), k2, k + 1
            else:  # Euler with the (refined) cached velocity
                x, cached_at = x + h * k1, k
    return SampleResult(x, nfe, times=times), refines
