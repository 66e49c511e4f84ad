"""Flow map distillation from the prior alone (after "Flow Map
Distillation Without Data", 2025), and its data-based twin at the same cost.

A teacher velocity v_T(x, t) (t = 0 noise, t = 1 data) defines the flow map the student
X_{t->r}(x) = x + (r - t) u(x, t, r) should learn. Along r, the map solves the teacher's ODE:

    ∂_r X_{t->r}(x) = v_T(X_{t->r}(x), r)   <=>   u = v_T(X_{t->r}(x), r) - (r - t) ∂_r u,

so the regression target u_tgt = v_T(sg X_{t->r}(x), r) - (r - t) sg(∂_r u) (∂_r u by a JVP
along (0, 1) in (x, r)) needs a starting point x at time t, and nothing else. Data-based
distillation takes x = x_t = t x1 + (1 - t) x0 from data pairs. *Without data*, x is the
student's own generated point x = sg X_{0->t}(z) from a prior sample z (t = 0 for a share
``share_t0`` of the batch, where x = z): the starting points are what the student itself will
visit when it samples in several steps, never a data set's. The correction for compounding
error (our reading of the paper's): the teacher is queried at the student's *current* output
X_{t->r}(x), not at a point of the teacher's own trajectory, so an error made early in r is
met by the teacher's velocity where the student actually is, and the target pulls back towards
the teacher's flow through that point rather than carrying the error along.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from minigen.broadcast import expand_t
from minigen.onestep.flow_map import two_times
from minigen.recipe.results import LossResult
from minigen.recipe.time_samplers import check_time_sampler

Tensor = torch.Tensor


def lagrangian_target(model, teacher: Callable, x: Tensor, t: Tensor, r: Tensor,
                      **cond) -> tuple[Tensor, Tensor]:
    """(u_theta(x, t, r), u_tgt) with u_tgt = v_T(sg X_{t->r}(x), r) - (r - t) sg(∂_r u).
    Shapes: x (B, ...), t, r (B,)."""
    def f(r_):
        return model(x, t, r=r_, **cond)

    u, du_dr = torch.func.jvp(f, (r,), (torch.ones_like(r),))
    gap = expand_t(r - t, x)
    with torch.no_grad():
        v_end = teacher(x + gap * u.detach(), r, **cond)
    return u, v_end - gap * du_dr.detach()


@dataclass
class FlowMapDistillation:
    """Distil ``teacher(x, t, **cond)`` into a two-time map: ``data_free_loss(model, z)`` from
    prior samples only, ``data_loss(model, x0, x1)`` from data pairs (module docstring).
    (t, r): ``two_times`` with ``time_sampler``; t = 0 for a share ``share_t0`` of the batch."""

    teacher: Callable
    share_t0: float = 0.5
    time_sampler: str = "uniform"
    time_loc: float = 0.0
    time_scale: float = 1.0

    def __post_init__(self):
        if not 0.0 <= self.share_t0 <= 1.0:
            raise ValueError(f"share_t0 must be in [0, 1], got {self.share_t0}")
        check_time_sampler(self.time_sampler, self.time_loc, self.time_scale)

    def times(self, n: int, generator: torch.Generator, like: Tensor) -> tuple[Tensor, Tensor]:
        t, r = two_times(n, generator, self.time_sampler, self.time_loc, self.time_scale)
        t = torch.where(torch.rand(n, generator=generator) < self.share_t0, torch.zeros_like(t), t)
        return t.to(like), r.to(like)

    def _loss(self, model, x: Tensor, t: Tensor, r: Tensor, cond, per_sample: bool) -> LossResult:
        kw = {} if cond is None else {"cond": cond}
        u, u_tgt = lagrangian_target(model, self.teacher, x, t, r, **kw)
        err = (u - u_tgt).pow(2).flatten(1).mean(1)
        return LossResult(err.mean(), err.detach() if per_sample else None, t)

    def data_free_loss(self, model, z: Tensor, cond=None, generator: torch.Generator | None = None,
                       per_sample: bool = False) -> LossResult:
        """Start from x = sg X_{0->t}(z), the student's own point: z (B, ...) prior samples."""
        t, r = self.times(len(z), generator, z)
        with torch.no_grad():
            kw = {} if cond is None else {"cond": cond}
            x = z + expand_t(t, z) * model(z, torch.zeros_like(t), r=t, **kw)
        return self._loss(model, x, t, r, cond, per_sample)

    def data_loss(self, model, x0: Tensor, x1: Tensor, cond=None, generator: torch.Generator | None = None,
                  per_sample: bool = False) -> LossResult:
        """Start from x_t = t x1 + (1 - t) x0 on data pairs: x0, x1 (B, ...)."""
        if x0.shape != x1.shape:
            raise ValueError(f"x0 and x1 must have the same shape, got {tuple(x0.shape)}, {tuple(x1.shape)}")
        t, r = self.times(len(x1), generator, x1)
        x = expand_t(t, x1) * x1 + expand_t(1 - t, x1) * x0
        return self._loss(model, x, t, r, cond, per_sample)
