"""Masked (absorbing-state) discrete diffusion: the continuous-time ELBO, its T-step version,
and ancestral sampling with few steps (Austin et al., 2021, D3PM absorbing; Sahoo et al., 2024,
MDLM; Shi et al., 2024, MD4).

Our time: t = 0 is all [MASK] (the source), t = 1 the data. Each token of x_t is the data token
with probability kappa(t) = t and [MASK] (index K) otherwise. The papers run time the other way
(s = 1 - t, alpha_s = 1 - s = kappa): their NELBO  int_0^1 alpha'_s / (1 - alpha_s) ... ds with
alpha_s = 1 - s is the 1/s-weighted cross-entropy; in our time

    NELBO = int_0^1 kappa'(t) / (1 - kappa(t)) E_{x_t} [ sum_{i: x_t^i = M} -log p(x^i | x_t) ] dt,
          = E_{t ~ U(0,1)} [ 1/(1-t) sum_{masked i} CE_i ]                    (kappa = t).

With T reverse steps t_k = k/T the bound is the sum of per-step KLs; a token masked at t_k is
revealed with probability delta_k = (kappa_{k+1} - kappa_k) / (1 - kappa_k), and its KL is
delta_k CE_i, so NELBO_T = sum_k E[delta_k sum_{masked i} CE_i(x_{t_k})]. T = 1 is the
independent per-position model p(x^i | all masked). The denoiser takes no time: the share of
masks tells it t (MDLM, §3.2).

Integrating t out of the NELBO: a pattern with m of L tokens masked has weight
int t^(L-m) (1-t)^(m-1) dt = (L-m)! (m-1)! / L!, and the C(L, m) patterns of size m together 1/m:

    NELBO = sum_{m=1}^{L} E_{|M| = m} [ (1/m) sum_{i in M} CE_i ]
          = L E_{m ~ U{1..L}} E_M [mean_{i in M} CE_i],

the any-order autoregressive bound (Hoogeboom et al., 2022; Shi et al., 2024, App. F). The
estimator in t has infinite variance (a single masked token near t = 1 carries weight 1/(1-t));
this one has no weight above L, so the loss and the evaluation below draw m, not t.
"""

from __future__ import annotations

import itertools
import math

import torch
import torch.nn.functional as F

from minigen.recipe.results import LossResult, SampleResult

Tensor = torch.Tensor


def mask_tokens(x: Tensor, t: Tensor, mask_id: int, generator: torch.Generator | None) -> Tensor:
    """x_t: keep each token with probability kappa(t) = t, else [MASK]: x (B, L), t (B,) -> (B, L)."""
    u = torch.rand(x.shape, generator=generator, device=x.device)
    return torch.where(u < t[:, None], x, torch.full_like(x, mask_id))

def mask_count(x: Tensor, m: Tensor, mask_id: int, generator: torch.Generator | None) -> Tensor:
    """x with m[b] positions, uniformly chosen, set to [MASK]: (B, L), m (B,) in 1..L -> (B, L)."""
    rank = torch.rand(x.shape, generator=generator, device=x.device).argsort(1).argsort(1)
    return torch.where(rank < m[:, None], torch.full_like(x, mask_id), x)

def stratified_counts(b: int, length: int, generator: torch.Generator | None) -> Tensor:
    """m ~ U{1..L}, stratified over a batch of b (one uniform offset, b strata): (b,) int64."""
    u = (torch.rand(1, generator=generator) + torch.arange(b)) / b
    return (u[torch.randperm(b, generator=generator)] * length).long().clamp(max=length - 1) + 1

def masked_cross_entropy(model, x: Tensor, xt: Tensor, mask_id: int) -> Tensor:
    """sum over masked positions of -log p(x^i | x_t), per sequence: (B, L) -> (B,). Logits of the
    [MASK] class are excluded (the denoiser never predicts a mask)."""
    logits = model(xt)[..., :mask_id]
    ce = F.cross_entropy(logits.transpose(1, 2), x, reduction="none")
    return (ce * (xt == mask_id)).sum(1)

class MaskedDiffusion:
    """The continuous-time NELBO as ``train``'s loss, per token (nats), in its count form:
    m ~ U{1..L} stratified over the batch, m random positions masked, weight L/m (the same
    expectation as t ~ U(0, 1) with weight 1/(1 - t); t = 1 - m/L is returned as the time)."""

    def __init__(self, n_classes: int):
        if n_classes < 2:
            raise ValueError(f"need at least 2 classes, got {n_classes}")
        self.mask_id = n_classes

    def loss(self, model, x: Tensor, generator: torch.Generator, per_sample: bool = False) -> LossResult:
        x = x.reshape(len(x), -1).long()
        length = x.shape[1]
        m = stratified_counts(len(x), length, generator).to(x.device)
        xt = mask_count(x, m, self.mask_id, generator)
        nelbo = masked_cross_entropy(model, x, xt, self.mask_id) * length / m
        return LossResult(nelbo.mean() / length, nelbo.detach() if per_sample else None, 1 - m / length)

    __call__ = loss

@torch.no_grad()
def masked_nelbo(model, x: Tensor, mask_id: int, n_draws: int, generator: torch.Generator) -> Tensor:
    """Monte Carlo continuous-time NELBO in nats per sequence, count form: n_draws masks per
    sequence with m stratified over 1..L (n_draws a multiple of L visits every m equally). (B,)."""
    b, length = x.shape
    total = torch.zeros(b, dtype=torch.float64)
    for j in range(n_draws):
        u = (j + torch.rand(b, generator=generator)) / n_draws
        m = (u * length).long().clamp(max=length - 1) + 1
        ce = masked_cross_entropy(model, x, mask_count(x, m.to(x.device), mask_id, generator), mask_id)
        total += (ce.cpu() * length / m).double()
    return total / n_draws

@torch.no_grad()
def masked_nelbo_steps(model, x: Tensor, mask_id: int, steps: int, generator: torch.Generator) -> Tensor:
    """The T-step NELBO, every step evaluated once (one x_{t_k} per sequence and step), nats per
    sequence: sum_{k<T} delta_k sum_{masked i} CE_i(x_{t_k}), t_k = k/T, delta_k = 1/(T - k). (B,)."""
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    total = torch.zeros(len(x), dtype=torch.float64)
    for k in range(steps):
        t = torch.full((len(x),), k / steps)
        ce = masked_cross_entropy(model, x, mask_tokens(x, t, mask_id, generator), mask_id)
        total += ce.double() / (steps - k)
    return total

def exact_masked_nelbo(model, x: Tensor, mask_id: int) -> Tensor:
    """The continuous-time NELBO by enumerating the 2^L mask patterns (tiny L only): a pattern
    with m masks has weight int_0^1 t^(L-m) (1-t)^(m-1) dt = (L-m)! (m-1)! / L!. (B,) float64."""
    b, length = x.shape
    total = torch.zeros(b, dtype=torch.float64)
    for pattern in itertools.product([False, True], repeat=length):
        m = sum(pattern)
        if m == 0:
            continue
        w = math.factorial(length - m) * math.factorial(m - 1) / math.factorial(length)
        masked = torch.tensor(pattern)[None].expand(b, -1)
        xt = torch.where(masked, torch.full_like(x, mask_id), x)
        total += w * masked_cross_entropy(model, x, xt, mask_id).double()
    return total

def any_order_log_likelihood(model, x: Tensor, mask_id: int) -> Tensor:
    """The exact log-likelihood of the continuous-time reverse process with a time-free denoiser:
    tokens are revealed one at a time in a uniformly random order sigma, so
    log p(x) = log mean_sigma prod_i p(x_sigma(i) | x_sigma(<i)) (tiny L: all L! orders). (B,)."""
    b, length = x.shape
    logs = []
    for order in itertools.permutations(range(length)):
        xt, lp = torch.full_like(x, mask_id), torch.zeros(b, dtype=torch.float64)
        for i in order:
            logp = torch.log_softmax(model(xt)[:, i, :mask_id].double(), -1)
            lp += logp.gather(1, x[:, i:i + 1])[:, 0]
            xt = xt.clone()
            xt[:, i] = x[:, i]
        logs.append(lp)
    return torch.logsumexp(torch.stack(logs), 0) - math.log(len(logs))

@torch.no_grad()
def sample_masked(model, n: int, length: int, mask_id: int, steps: int,
                  generator: torch.Generator) -> SampleResult:
    """Ancestral sampling in ``steps`` steps from all-[MASK]: at t_k = k/T each masked token is
    revealed with probability delta_k = 1/(T - k), drawn from p(. | x_{t_k}); the last step reveals
    the rest. (n, length) int64; NFE = steps."""
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    device = next(model.parameters()).device
    x = torch.full((n, length), mask_id, dtype=torch.long, device=device)
    for k in range(steps):
        probs = torch.softmax(model(x)[..., :mask_id].double(), -1).cpu()
        draw = torch.multinomial(probs.reshape(-1, mask_id), 1, generator=generator).view(n, length)
        reveal = (torch.rand(n, length, generator=generator) < 1.0 / (steps - k)) & (x.cpu() == mask_id)
        x = torch.where(reveal.to(device), draw.to(device), x)
    return SampleResult(x, nfe=steps)
