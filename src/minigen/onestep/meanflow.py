"""MeanFlow: regress the average velocity with a Jacobian-vector-product target
(Geng, Deng, Bai, Kolter & He, 2025, "Mean Flows for One-step Generative Modeling": the
MeanFlow identity, its training algorithm and classifier-free guidance in the target).

The paper and minigen, once (chapter 10 states the same table):

| | MeanFlow paper | minigen |
|---|---|---|
| path | z_tau = (1 - tau) x + tau eps, noise at tau = 1 | x_t = t x1 + (1 - t) x0, noise at t = 0 |
| times | r <= tau, jump from tau down to r | t <= r, jump from t up to r (t = 1 - tau) |
| velocity | v = eps - x = dz/dtau | v = x1 - x0 = dx/dt (= -v_paper) |
| avg. velocity | u(z, r, tau), z_r = z_tau - (tau - r) u | u(x, t, r), x_r = x_t + (r - t) u (= -u_paper) |
| identity | u = v - (tau - r) du/dtau | u = v - (t - r) du/dt |

The identity in our convention: (r - t) u(x_t, t, r) = ∫_t^r v(x_s, s) ds; differentiate in t
along the trajectory (r fixed): -u + (r - t) du/dt = -v(x_t, t), i.e. u = v - (t - r) du/dt
with the total derivative du/dt = v·∂_x u + ∂_t u — the JVP of f(z, r, t) = u_theta(z, t, r)
with tangent (v, 0, 1) in (z, r, t) order. The target u_tgt = v - (t - r) sg(du/dt) uses the
conditional velocity v = x1 - x0 (or a teacher's, for distillation), and the loss carries the
adaptive weight w = sg(1 / (||Delta||² + c)^p) (the paper's adaptive weighting; ||.||² is the mean over
dimensions). Sampling is ``flow_map.sample_flow_map``: one step is x1 = x0 + u(x0, 0, 1).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from minigen.broadcast import expand_t
from minigen.onestep.flow_map import sample_flow_map, two_times
from minigen.recipe.results import LossResult, SampleResult
from minigen.recipe.time_samplers import check_time_sampler

Tensor = torch.Tensor


def meanflow_target(model, z: Tensor, t: Tensor, r: Tensor, v: Tensor, **cond) -> tuple[Tensor, Tensor]:
    """(u_theta(z, t, r), u_tgt) with u_tgt = v - (t - r) sg(du/dt), du/dt = v·∂_z u + ∂_t u by
    ``torch.func.jvp`` of f(z, r, t) = model(z, t, r=r) along (v, 0, 1). u keeps its graph.
    Shapes: z, v (B, ...); t, r (B,)."""
    def f(z_, r_, t_):
        return model(z_, t_, r=r_, **cond)

    u, dudt = torch.func.jvp(f, (z, r, t), (v, torch.zeros_like(r), torch.ones_like(t)))
    return u, v - expand_t(t - r, z) * dudt.detach()


def adaptive_weight(sq: Tensor, p: float = 1.0, c: float = 1e-3) -> Tensor:
    """w = 1 / (sq + c)^p without gradient (MeanFlow's adaptive weighting; p = 0: plain squared loss)."""
    return 1.0 / (sq.detach() + c).pow(p)


@dataclass
class MeanFlow:
    """The MeanFlow loss on the linear path (module docstring).

    ``share_r_neq_t``: the share of pairs with r != t (the paper's best: 25%); (t, r) are two
    logit-normal draws sorted (paper: (-0.4, 1.0) in its time, so loc = +0.4 in ours).
    ``teacher(x, t, **cond)``: a velocity to use instead of x1 - x0 (distillation).
    Guidance (the paper's CFG target): v_tgt = omega v + (1 - omega) u(x_t, t, t | null) for the samples
    that kept their label; labels are integers, replaced by ``null_label`` with probability
    ``label_dropout``.
    """

    share_r_neq_t: float = 0.25
    time_sampler: str = "logit_normal"
    time_loc: float = 0.4
    time_scale: float = 1.0
    adaptive_p: float = 1.0
    adaptive_c: float = 1e-3
    teacher: Callable | None = None
    cfg_scale: float = 1.0
    label_dropout: float = 0.0
    null_label: int | None = None

    def __post_init__(self):
        check_time_sampler(self.time_sampler, self.time_loc, self.time_scale)
        if not 0.0 <= self.share_r_neq_t <= 1.0 or not 0.0 <= self.label_dropout < 1.0:
            raise ValueError("share_r_neq_t must be in [0, 1] and label_dropout in [0, 1)")
        if self.adaptive_p < 0 or self.adaptive_c <= 0 or self.cfg_scale < 1.0:
            raise ValueError("need adaptive_p >= 0, adaptive_c > 0 and cfg_scale >= 1")
        if (self.label_dropout > 0 or self.cfg_scale != 1.0) and self.null_label is None:
            raise ValueError("label dropout and guidance need null_label (the unconditional label)")

    def velocity(self, xt: Tensor, t: Tensor, x0: Tensor, x1: Tensor, model, cond) -> Tensor:
        """v = x1 - x0 (or the teacher's), guided for the labelled samples when cfg_scale > 1."""
        kw = {} if cond is None else {"cond": cond}
        v = x1 - x0 if self.teacher is None else self.teacher(xt, t, **kw)
        if self.cfg_scale == 1.0 or cond is None:
            return v.detach()
        with torch.no_grad():
            u_null = model(xt, t, r=t, cond=torch.full_like(cond, self.null_label))
        guided = self.cfg_scale * v + (1 - self.cfg_scale) * u_null
        null = (cond == self.null_label).view(-1, *([1] * (v.ndim - 1)))
        return torch.where(null, v, guided).detach()

    def loss(self, model, x0: Tensor, x1: Tensor, cond=None, generator: torch.Generator | None = None,
             per_sample: bool = False) -> LossResult:
        """sg(w) ||u_theta - u_tgt||² averaged over the batch. Shapes: x0, x1 (B, ...), cond (B,)
        integer labels or (B, k) features or None; per_sample and t (B,)."""
        if x0.shape != x1.shape:
            raise ValueError(f"x0 and x1 must have the same shape, got {tuple(x0.shape)}, {tuple(x1.shape)}")
        t, r = two_times(len(x1), generator, self.time_sampler, self.time_loc, self.time_scale,
                         self.share_r_neq_t)
        t, r = t.to(x1), r.to(x1)
        if cond is not None and self.label_dropout > 0:
            drop = torch.rand(len(cond), generator=generator) < self.label_dropout
            cond = torch.where(drop.to(cond.device), torch.full_like(cond, self.null_label), cond)
        xt = expand_t(t, x1) * x1 + expand_t(1 - t, x1) * x0
        v = self.velocity(xt, t, x0, x1, model, cond)
        u, u_tgt = meanflow_target(model, xt, t, r, v, **({} if cond is None else {"cond": cond}))
        sq = (u - u_tgt).pow(2).flatten(1).mean(1)
        per = adaptive_weight(sq, self.adaptive_p, self.adaptive_c) * sq
        return LossResult(per.mean(), sq.detach() if per_sample else None, t)

    @staticmethod
    def sample(model, x0: Tensor, steps: int = 1, **cond) -> SampleResult:
        """``steps`` jumps of the average velocity from t = 0 to 1 (``sample_flow_map``)."""
        return sample_flow_map(model, x0, steps, **cond)
