"""D3PM with uniform transitions (Austin et al., 2021, "Structured Denoising Diffusion Models in
Discrete State-Spaces", §3 and App. A), in our time: t = 0 is uniform noise, t = 1 the data.

    q(x_t | x) = abar(t) delta_x + (1 - abar(t)) / K,        abar(t) = t here,

and between grid times s < t (s noisier) q(x_s | x_t) = r delta + (1 - r)/K with r = abar_s/abar_t.
One reverse step s -> t uses the x0-parametrisation (App. A.2):

    p(x_t | x_s) = sum_x0 q(x_t | x_s, x0) p_theta(x0 | x_s, s)
                 = q(x_s | x_t) [abar_t w(x_t) + (1 - abar_t)/K sum_x0 w(x0)],
    w(x0) = p_theta(x0) / q(x_s | x0),

and the T-step NELBO is sum_k E[KL(q(x_{t_{k+1}} | x_{t_k}, x) || p(x_{t_{k+1}} | x_{t_k}))]: at the
last step q(x_1 | ., x) = delta_x, so its KL is the reconstruction term -log p(x | x_{t_{T-1}}); the
prior term vanishes since abar(0) = 0. Per token: K-vectors, O(K) each.
"""

from __future__ import annotations

import torch
from torch.special import xlogy

from minigen.recipe.results import LossResult, SampleResult

Tensor = torch.Tensor


def noisy_tokens(x: Tensor, abar: Tensor, n_classes: int, generator: torch.Generator | None) -> Tensor:
    """x_t ~ q(x_t | x): keep with probability abar, else a uniform token: (B, L), (B,) -> (B, L)."""
    keep = torch.rand(x.shape, generator=generator, device=x.device) < abar[:, None]
    noise = torch.randint(n_classes, x.shape, generator=generator, device=x.device)
    return torch.where(keep, x, noise)


def _transition(a: Tensor, ratio: Tensor, k: int) -> Tensor:
    """q(a | y) for every y: r 1[a = y] + (1 - r)/K: a (B, L), ratio (B,) -> (B, L, K)."""
    onehot = torch.nn.functional.one_hot(a, k).to(ratio.dtype)
    return ratio[:, None, None] * onehot + (1 - ratio[:, None, None]) / k


def reverse_step_probs(x0_probs: Tensor, xs: Tensor, abar_s: Tensor, abar_t: Tensor) -> Tensor:
    """p(x_t | x_s) per token from the denoiser's p_theta(x0 | x_s): (B, L, K), (B, L), (B,), (B,)
    -> (B, L, K), each row summing to 1."""
    k = x0_probs.shape[-1]
    like_s = _transition(xs, abar_s / abar_t, k)          # q(x_s | x_t = y)
    q_s_given_x0 = _transition(xs, abar_s, k)             # q(x_s | x0), as a function of x0
    w = x0_probs / q_s_given_x0
    p = like_s * (abar_t[:, None, None] * w + (1 - abar_t[:, None, None]) / k * w.sum(-1, keepdim=True))
    return p / p.sum(-1, keepdim=True)


def posterior_probs(x: Tensor, xs: Tensor, abar_s: Tensor, abar_t: Tensor, k: int) -> Tensor:
    """q(x_t | x_s, x) per token: (B, L) x2, (B,) x2 -> (B, L, K)."""
    q = _transition(xs, abar_s / abar_t, k) * _transition(x, abar_t, k)
    return q / q.sum(-1, keepdim=True)


def step_terms(model, x: Tensor, s: Tensor, t: Tensor, n_classes: int,
               generator: torch.Generator) -> tuple[Tensor, Tensor]:
    """At one draw x_s ~ q(x_s | x), with abar = time (s < t, both (B,)): the sum over tokens of
    KL(q(x_t | x_s, x) || p(x_t | x_s)), nats per sequence (B,), and the denoiser's x0 logits
    (B, L, K) from the same call (what the hybrid loss's cross-entropy reads)."""
    xs = noisy_tokens(x, s, n_classes, generator)
    logits = model(xs, s)
    p = reverse_step_probs(torch.softmax(logits.double(), -1), xs, s.double(), t.double())
    q = posterior_probs(x, xs, s.double(), t.double(), n_classes)
    return (xlogy(q, q) - xlogy(q, p)).sum((1, 2)), logits


def step_kl(model, x: Tensor, s: Tensor, t: Tensor, n_classes: int, generator: torch.Generator) -> Tensor:
    """The KL of ``step_terms``: nats per sequence (B,)."""
    return step_terms(model, x, s, t, n_classes, generator)[0]


class UniformDiffusion:
    """The T-step NELBO as ``train``'s loss, per token: a step k ~ U{0..T-1} per sequence,
    T KL_k (Austin et al., 2021, eq. 1 with the uniform Q_t). With ``ce_weight`` = lambda > 0 it
    is their hybrid loss (eq. 5), L_vb + lambda E[-log p_theta(x0 | x_s)], the cross-entropy of
    the same denoiser call, per token: a direct signal for the x0-prediction the KL reads
    through the posterior. ``per_sample`` is always the NELBO alone (nats per sequence)."""

    def __init__(self, n_classes: int, steps: int, ce_weight: float = 0.0):
        if n_classes < 2 or steps < 1 or not ce_weight >= 0:
            raise ValueError(f"need n_classes >= 2, steps >= 1 and ce_weight >= 0, "
                             f"got {n_classes}, {steps}, {ce_weight}")
        self.n_classes, self.steps, self.ce_weight = n_classes, steps, float(ce_weight)

    def loss(self, model, x: Tensor, generator: torch.Generator, per_sample: bool = False) -> LossResult:
        x = x.reshape(len(x), -1).long()
        k = torch.randint(self.steps, (len(x),), generator=generator)
        s, t = k / self.steps, (k + 1) / self.steps
        kl, logits = step_terms(model, x, s.to(x.device), t.to(x.device), self.n_classes, generator)
        nelbo = self.steps * kl
        loss = nelbo.float().mean() / x.shape[1]
        if self.ce_weight:
            loss = loss + self.ce_weight * torch.nn.functional.cross_entropy(
                logits.reshape(-1, self.n_classes), x.reshape(-1))
        return LossResult(loss, nelbo.detach() if per_sample else None, t)

    __call__ = loss


@torch.no_grad()
def uniform_nelbo_steps(model, x: Tensor, n_classes: int, steps: int, generator: torch.Generator) -> Tensor:
    """The T-step NELBO with every step evaluated once, nats per sequence: (B,) float64."""
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    total = torch.zeros(len(x), dtype=torch.float64)
    for k in range(steps):
        s, t = torch.full((len(x),), k / steps), torch.full((len(x),), (k + 1) / steps)
        total += step_kl(model, x, s, t, n_classes, generator).cpu()
    return total


@torch.no_grad()
def sample_uniform(model, n: int, length: int, n_classes: int, steps: int,
                   generator: torch.Generator) -> SampleResult:
    """Ancestral sampling on the grid t_k = k/T from uniform tokens: x_{t_{k+1}} ~ p(. | x_{t_k}).
    (n, length) int64; NFE = steps."""
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    x = torch.randint(n_classes, (n, length), generator=generator)
    for k in range(steps):
        s, t = torch.full((n,), k / steps), torch.full((n,), (k + 1) / steps)
        x0_probs = torch.softmax(model(x, s).double(), -1)
        p = reverse_step_probs(x0_probs, x, s.double(), t.double())
        x = torch.multinomial(p.reshape(-1, n_classes), 1, generator=generator).view(n, length)
    return SampleResult(x, nfe=steps)
