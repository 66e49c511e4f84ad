"""Two-time flow maps, their few-step sampler, and consistency training and distillation.

A flow map jumps along the probability-flow ODE dx/ds = v(x, s) from time t to time r >= t
(t = 0 noise, t = 1 data):

    X_{t->r}(x) = x + (r - t) u(x, t, r),   u(x, t, r) = 1/(r - t) ∫_t^r v(x_s, s) ds,

so X_{t->t} = id holds by construction and u(x, t, t) = v(x, t) (Boffi, Albergo & Vanden-Eijnden,
2024, "Flow map matching"; Kim et al., 2024, "Consistency trajectory models"). ``u`` is the
*average velocity* of MeanFlow (``onestep.meanflow``): one network, called as
``model(x, t, r=r, **cond)``, serves every method of chapter 10.

Consistency, in this two-time form: a map is consistent when X_{t->r}(x_t) = X_{s->r}(x_s) for
any point x_s of the same trajectory with t <= s <= r. Take s = t + dt (or r, if closer), the
point one step of size dt nearer the data, and regress the map from x_t onto the stop-gradient
map from x_s (Song et al., 2023, "Consistency models", Alg. 2 and 3, with theta^- = sg(theta),
Song & Dhariwal, 2024):

    u_tgt = w v_hat + (1 - w) sg(u(x_s, s, r)),   w = min(1, dt / (r - t)),   x_s = x_t + dt v_hat,

which is X_{t->r}(x_t) = sg(X_{s->r}(x_s)) divided by r - t, and the velocity target v_hat itself
once r - t <= dt. *Consistency training* (no teacher) takes v_hat = x1 - x0, the conditional
velocity, so x_s lies on the same conditional path; *consistency distillation* takes
v_hat = v_teacher(x_t, t), one Euler step of the teacher's ODE.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from minigen.broadcast import check_time, expand_t
from minigen.recipe.results import LossResult, SampleResult
from minigen.recipe.time_samplers import check_time_sampler, sample_time

Tensor = torch.Tensor


def checked_times(x: Tensor, t, r) -> tuple[Tensor, Tensor]:
    """t and r as (B,) tensors in x's dtype, each in [0, 1] with r >= t; else ValueError."""
    tt = expand_t(t, x).reshape(-1)
    rr = expand_t(r, x).reshape(-1)
    check_time(tt, "flow_map", "t")
    check_time(rr, "flow_map", "r")
    if bool((rr < tt - 1e-6).any()):
        raise ValueError("a flow map runs towards the data: need r >= t (t = 0 noise, t = 1 data)")
    return tt, rr


def flow_map(model, x: Tensor, t, r, **cond) -> Tensor:
    """X_{t->r}(x) = x + (r - t) u_theta(x, t, r): (B, ...) -> (B, ...); t, r scalars or (B,)."""
    tt, rr = checked_times(x, t, r)
    return x + expand_t(rr - tt, x) * model(x, tt, r=rr, **cond)


@torch.no_grad()
def sample_flow_map(model, x0: Tensor, steps: int = 1, times: Tensor | None = None,
                    **cond) -> SampleResult:
    """x_{k+1} = X_{t_k -> t_{k+1}}(x_k) on the grid 0 = t_0 < ... < t_K = 1 (uniform with K =
    ``steps`` unless ``times`` is given): K network evaluations. Shapes: x0 (B, ...) -> (B, ...)."""
    if times is None:
        if not isinstance(steps, int) or steps < 1:
            raise ValueError(f"steps must be a positive integer, got {steps!r}")
        times = torch.linspace(0.0, 1.0, steps + 1)
    times = torch.as_tensor(times, dtype=torch.float64)
    if times.ndim != 1 or len(times) < 2 or bool((times[1:] <= times[:-1]).any()):
        raise ValueError("times must be an increasing 1-D grid of at least two points")
    x, traj = x0, [x0]
    for t, r in zip(times[:-1].tolist(), times[1:].tolist()):
        x = flow_map(model, x, t, r, **cond)
        traj.append(x)
    return SampleResult(x, len(times) - 1, torch.stack(traj), times.float())


def two_times(n: int, generator: torch.Generator, sampler: str = "uniform", loc: float = 0.0,
              scale: float = 1.0, share_r_neq_t: float = 1.0) -> tuple[Tensor, Tensor]:
    """Training pairs t <= r: two draws of ``sample_time`` sorted, then r = t for a share
    1 - ``share_r_neq_t`` of them (the instantaneous velocity). Shapes: (n,), (n,)."""
    if not 0.0 <= share_r_neq_t <= 1.0:
        raise ValueError(f"share_r_neq_t must be in [0, 1], got {share_r_neq_t}")
    a = sample_time(n, generator, sampler, loc, scale)
    b = sample_time(n, generator, sampler, loc, scale)
    t, r = torch.minimum(a, b), torch.maximum(a, b)
    equal = torch.rand(n, generator=generator) >= share_r_neq_t
    return t, torch.where(equal, t, r)


@dataclass
class Consistency:
    """Consistency training (``teacher=None``) or distillation (``teacher(x, t, **cond)``, a
    velocity) of a two-time map, on the linear path x_t = t x1 + (1 - t) x0 (module docstring).

    ``dt``: the step to the neighbouring point; (t, r): ``two_times`` with ``time_sampler``.
    """

    dt: float = 0.05
    teacher: Callable | None = None
    time_sampler: str = "uniform"
    time_loc: float = 0.0
    time_scale: float = 1.0

    def __post_init__(self):
        if not 0.0 < self.dt <= 1.0:
            raise ValueError(f"dt must be in (0, 1], got {self.dt}")
        check_time_sampler(self.time_sampler, self.time_loc, self.time_scale)

    def velocity_estimate(self, xt: Tensor, t: Tensor, x0: Tensor, x1: Tensor, **cond) -> Tensor:
        """v_hat: x1 - x0 (training) or v_teacher(x_t, t) (distillation): (B, ...)."""
        if self.teacher is None:
            return x1 - x0
        with torch.no_grad():
            return self.teacher(xt, t, **cond)

    def target(self, model, xt: Tensor, t: Tensor, r: Tensor, v_hat: Tensor, **cond) -> Tensor:
        """u_tgt = w v_hat + (1 - w) sg(u(x_s, s, r)), w = min(1, dt / (r - t)), x_s = x_t +
        (s - t) v_hat, s = min(t + dt, r): the average velocity of sg(X_{s->r}(x_s)) from x_t."""
        gap = r - t
        w = torch.clamp(self.dt / gap.clamp_min(1e-12), max=1.0)
        s = torch.minimum(t + self.dt, r)
        xs = xt + expand_t(s - t, xt) * v_hat
        with torch.no_grad():
            u_s = model(xs, s, r=r, **cond)
        return expand_t(w, xt) * v_hat + expand_t(1 - w, xt) * u_s

    def loss(self, model, x0: Tensor, x1: Tensor, cond=None, generator: torch.Generator | None = None,
             per_sample: bool = False) -> LossResult:
        """E ||u(x_t, t, r) - u_tgt||² (mean over dimensions); ``cond`` is passed to the model as
        ``cond=``. Shapes: x0, x1 (B, ...); per_sample and t (B,)."""
        if x0.shape != x1.shape:
            raise ValueError(f"x0 and x1 must have the same shape, got {tuple(x0.shape)}, {tuple(x1.shape)}")
        kw = {} if cond is None else {"cond": cond}
        t, r = two_times(len(x1), generator, self.time_sampler, self.time_loc, self.time_scale)
        t, r = t.to(x1), r.to(x1)
        xt = expand_t(t, x1) * x1 + expand_t(1 - t, x1) * x0
        v_hat = self.velocity_estimate(xt, t, x0, x1, **kw)
        err = (model(xt, t, r=r, **kw) - self.target(model, xt, t, r, v_hat, **kw)).pow(2).flatten(1).mean(1)
        return LossResult(err.mean(), err.detach() if per_sample else None, t)
