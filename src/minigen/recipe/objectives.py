"""Objectives: regression of one prediction type along a path (book/design.md, part 3 of 5).

Conditional flow matching (Lipman et al., 2023, eq. 23; Tong et al., 2024):

    L(theta) = E_{t, (x0, x1) ~ pi} w(x0, x1) || f_theta(x_t, t) - target ||²,

where target is the conditional velocity dx_t/dt for ``prediction="velocity"``,
x1 for ``"x1"`` and x0 (= epsilon) for ``"epsilon"``. The minimiser of the
velocity loss is the marginal velocity u_t(x) = E[dx_t/dt | x_t = x] (Lipman
et al., 2023, Thm. 2), which is why a per-sample conditional target suffices.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from minigen.recipe.couplings import gibbs_weights, independent
from minigen.recipe.paths import GaussianPath, PathSample
from minigen.recipe.results import LossResult
from minigen.recipe.time_samplers import check_time_sampler, sample_time
from minigen.recipe.wrappers import converted

Tensor = torch.Tensor
REGRESSION_TARGETS = ("velocity", "x1", "epsilon")  # the prediction types CFM regresses onto


def regression_target(ps: PathSample, prediction: str) -> Tensor:
    """What the network regresses onto for a prediction type (``REGRESSION_TARGETS``)."""
    if prediction == "velocity":
        return ps.dxt
    if prediction == "x1":
        return ps.x1
    if prediction == "epsilon":
        return ps.x0
    raise ValueError(f"unknown prediction type {prediction!r} for regression; "
                     f"choose from {REGRESSION_TARGETS}")

@dataclass
class CFM:
    """Conditional flow matching with a coupling, a path, a prediction type,
    a time sampler (``sample_time``: its name, ``time_loc`` and ``time_scale``) and optional
    Gibbs weights (W-CFM).

    The variants of chapter 01 differ in one field each:
    I-CFM = CFM(LinearPath()); OT-CFM adds ``coupling=ExactOT()``;
    W-CFM adds ``gibbs_eps``; SB-CFM uses ``BridgePath(s)`` with
    ``SinkhornOT(2 s², relative=False)``.
    """

    path: GaussianPath
    coupling: Callable = independent
    prediction: str = "velocity"
    time_sampler: str = "uniform"
    time_loc: float = 0.0
    time_scale: float = 1.0
    gibbs_eps: float | None = None
    name: str = field(default="cfm")

    def __post_init__(self):
        if self.prediction not in REGRESSION_TARGETS:
            raise ValueError(f"unknown prediction type {self.prediction!r}; "
                             f"choose from {REGRESSION_TARGETS}")
        if self.prediction == "epsilon" and not self.path.source_is_gaussian:
            raise ValueError("epsilon prediction needs a N(0, I) source")
        check_time_sampler(self.time_sampler, self.time_loc, self.time_scale)

    def sample_path(self, x0: Tensor, x1: Tensor, generator: torch.Generator) -> PathSample:
        """Pair the batch, draw t (and bridge noise z), and sample the path."""
        x0, x1 = self.coupling(x0, x1, generator)
        t = sample_time(len(x1), generator, self.time_sampler, self.time_loc, self.time_scale)
        if self.path.t_min > 0 or self.path.t_max < 1:  # keep t where the schedule is finite
            t = t.clamp(self.path.t_min, self.path.t_max)
        t = t.to(x1)
        z = torch.randn(x1.shape, generator=generator).to(x1) if self.path.has_bridge_noise else None
        return self.path.sample(x0, x1, t, z)

    def _prediction_and_target(self, model, x0: Tensor, x1: Tensor, generator: torch.Generator):
        ps = self.sample_path(x0, x1, generator)
        return model(ps.xt, ps.t), regression_target(ps, self.prediction), ps

    def per_sample_loss(self, model, x0: Tensor, x1: Tensor, generator: torch.Generator):
        """Per-sample weighted squared errors (B,) and their times t (B,)."""
        pred, target, ps = self._prediction_and_target(model, x0, x1, generator)
        loss = F.mse_loss(pred, target, reduction="none").flatten(1).mean(1)
        if self.gibbs_eps is not None:
            loss = loss * gibbs_weights(ps.x0, ps.x1, self.gibbs_eps)
        return loss, ps.t

    def loss(self, model, x0: Tensor, x1: Tensor, generator: torch.Generator,
             per_sample: bool = False) -> LossResult:
        """What ``train`` needs: (scalar loss to differentiate, per-sample losses (B,) without
        gradient for the per-t diagnostic — or None when ``per_sample`` is False — and t (B,)).
        Unweighted, the mean is one fused reduction, as a hand-written loop would do it."""
        if self.gibbs_eps is not None:
            losses, t = self.per_sample_loss(model, x0, x1, generator)
            return LossResult(losses.mean(), losses.detach() if per_sample else None, t)
        pred, target, ps = self._prediction_and_target(model, x0, x1, generator)
        losses = None
        if per_sample:
            with torch.no_grad():
                losses = (pred - target).pow(2).flatten(1).mean(1)
        return LossResult(F.mse_loss(pred, target), losses, ps.t)

    def velocity(self, model) -> Callable:
        """The velocity field v(x, t) of a model trained with this objective."""
        return converted(model, self.path, self.prediction, "velocity")

def per_t_loss(t: Tensor, loss: Tensor, bins: int = 10) -> tuple[Tensor, Tensor]:
    """Sum and count of per-sample losses in ``bins`` equal bins of t: ((bins,), (bins,)).

    Accumulate over training and divide to get the loss as a function of t, the
    diagnostic that shows where in time a model is still learning.
    """
    idx = (t.detach() * bins).long().clamp(0, bins - 1)
    sums = torch.zeros(bins).index_add_(0, idx.cpu(), loss.detach().float().cpu())
    counts = torch.bincount(idx.cpu(), minlength=bins).float()
    return sums, counts

def cfm_variant(name: str, source_is_gaussian: bool = True, *, gibbs_eps: float = 1.0,
                bridge_s: float = 0.5, sinkhorn_reg: float = 0.1, sinkhorn_iter: int = 10) -> CFM:
    """The flow-matching variants of chapter 01, each one field away from I-CFM:

    ``icfm``  independent pairs, linear path (Lipman et al., 2023; Tong et al., 2024)
    ``otcfm`` exact minibatch OT pairs (Tong et al., 2024; Pooladian et al., 2023)
    ``otcfm_sinkhorn`` few-iteration entropic OT pairs: an OT-class pairing at a fraction
              of the exact assignment's cost
    ``wcfm``  independent pairs weighted by exp(-||x1 - x0||² / gibbs_eps) (Calvo-Ordoñez et al., 2025)
    ``sbcfm`` entropic OT with reg = 2 s² and Brownian-bridge noise s sqrt(t(1-t)) (Tong et al., 2024)
    """
    from minigen.recipe.couplings import ExactOT, SinkhornOT
    from minigen.recipe.paths import BridgePath, LinearPath

    lin = LinearPath(source_is_gaussian=source_is_gaussian)
    if name == "icfm":
        return CFM(lin, name=name)
    if name == "otcfm":
        return CFM(lin, coupling=ExactOT(), name=name)
    if name == "otcfm_sinkhorn":
        return CFM(lin, coupling=SinkhornOT(sinkhorn_reg, sinkhorn_iter), name=name)
    if name == "wcfm":
        return CFM(lin, gibbs_eps=gibbs_eps, name=name)
    if name == "sbcfm":
        coupling = SinkhornOT(2 * bridge_s**2, 20, relative=False)
        return CFM(BridgePath(bridge_s, source_is_gaussian=source_is_gaussian), coupling=coupling,
                   name=name)
    raise ValueError(f"unknown CFM variant {name!r}; choose from {CFM_VARIANTS}")

CFM_VARIANTS = ("icfm", "otcfm", "otcfm_sinkhorn", "wcfm", "sbcfm")
