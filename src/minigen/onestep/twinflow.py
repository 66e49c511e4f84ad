"""A toy self-adversarial one-step flow after TwinFlow ("TwinFlow: Realizing One-step Generation on
Large Models with Self-adversarial Flows", 2025): no teacher and no discriminator network — one
two-time network carries a *real* branch and a *fake* (twin) branch, told apart by a branch input
b = +1 or -1 (the paper extends time to [-1, 1]; a flag is the same split, stated plainly here).

Per batch, three terms on the one network u(x, t, r | b):

1. real:  the MeanFlow loss on data pairs, b = +1; the one-step generator is
          G(z) = z + u(z, 0, 1 | +1);
2. twin:  flow matching of the generator's own samples, b = -1, on pairs (x0', sg G(z)) with
          fresh source samples x0': u(., t, t | -1) learns the velocity of the *generated*
          distribution;
3. self-adversarial: at x_t = t G(z) + (1 - t) x0'', the two branches' denoised guesses of the
          endpoint, x_t + (1 - t) v(x_t, t | b), differ by (1 - t) (v_real - v_fake); G(z) is
          moved by that difference (a distribution-matching step, as in DMD, with both fields
          from the same network):  L_adv = ||G(z) - sg(G(z) + (1 - t)(v_real - v_fake))||².

Total: L_real + L_twin + ``adv_weight`` · L_adv (the adversarial term's gradient reaches only
the generator's evaluation, the velocities are stop-gradient).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from minigen.broadcast import expand_t
from minigen.onestep.meanflow import MeanFlow
from minigen.recipe.results import LossResult

Tensor = torch.Tensor


def branch(n: int, sign: float, like: Tensor) -> Tensor:
    """The branch input: (n, 1) filled with +1 (real) or -1 (twin)."""
    return torch.full((n, 1), float(sign), dtype=like.dtype, device=like.device)


@dataclass
class TwinFlow:
    """The three-term loss of the module docstring; the model takes ``cond`` of shape (B, 1)."""

    adv_weight: float = 0.5
    real: MeanFlow = field(default_factory=lambda: MeanFlow(share_r_neq_t=0.5, adaptive_p=0.5))

    def generate(self, model, z: Tensor) -> Tensor:
        """G(z) = z + u(z, 0, 1 | +1): (B, d) -> (B, d), with gradient."""
        n = len(z)
        return z + model(z, torch.zeros(n).to(z), r=torch.ones(n).to(z), cond=branch(n, 1, z))

    def loss(self, model, x0: Tensor, x1: Tensor, generator: torch.Generator | None = None,
             per_sample: bool = False) -> LossResult:
        n = len(x1)
        real = self.real.loss(model, x0, x1, branch(n, 1, x1), generator=generator, per_sample=per_sample)
        perm = torch.randperm(n, generator=generator)
        x_fake = self.generate(model, x0[perm])
        t = torch.rand(n, generator=generator).to(x1)
        src = x0.roll(1, 0)  # other source samples, independent of the generated ones
        xt_f = expand_t(t, x1) * x_fake.detach() + expand_t(1 - t, x1) * src
        twin = (model(xt_f, t, cond=branch(n, -1, x1)) - (x_fake.detach() - src)).pow(2).mean()
        with torch.no_grad():
            xt = expand_t(t, x1) * x_fake + expand_t(1 - t, x1) * src
            gap = model(xt, t, cond=branch(n, 1, x1)) - model(xt, t, cond=branch(n, -1, x1))
            target = x_fake + expand_t(1 - t, x1) * gap
        adv = (x_fake - target).pow(2).mean()
        return LossResult(real.loss + twin + self.adv_weight * adv, real.per_sample, real.t)
