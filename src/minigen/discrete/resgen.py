"""Masked diffusion over RVQ token stacks that predicts *collective* tokens (Kim et al., 2025,
"Efficient Generative Modeling with Residual Vector Quantization-Based Tokens", ResGen), at toy
scale.

Each of P positions holds D RVQ tokens (``rvq.ResidualQuantizer``). A position with n of its D
depths masked has the deepest n masked (fine detail is hidden first, revealed last). Instead of
a categorical per masked token, the network predicts, per position, the distribution of the
*sum* of the masked depths' code vectors,

    y_p = sum_{d >= D - n_p} C_d[c_{p,d}]       (the collective vector, in patch space),

as a mixture of M diagonal Gaussians (ResGen §3.2), from the partial sums of the known depths
and the mask counts. A draw of y_p is quantised residually by the masked depths' codebooks,
which gives all n_p tokens at once — so the number of sampling steps does not grow with D.

Masking process, in our time (t = 0 all masked, t = 1 data): every position's masked count is
n_p ~ Binomial(D, 1 - t); the reverse step t_k -> t_{k+1} keeps n_p' ~ Binomial(n_p, r') masked,
r' = (1 - t_{k+1}) / (1 - t_k) (binomial thinning preserves the marginal), revealing the
n_p - n_p' shallowest of the freshly quantised tokens. The loss is the mixture's NLL of y_p,
averaged over positions with n_p > 0.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from minigen.discrete.rvq import ResidualQuantizer, nearest_code
from minigen.nets.token_transformer import Block
from minigen.recipe.results import LossResult, SampleResult

Tensor = torch.Tensor


def known_sum(embedded: Tensor, masked_counts: Tensor) -> tuple[Tensor, Tensor]:
    """(partial sum of the known depths, collective vector of the masked depths) per position:
    embedded (B, P, D, e) code vectors, masked_counts (B, P) in 0..D -> two (B, P, e)."""
    depth = embedded.shape[2]
    masked = torch.arange(depth, device=embedded.device) >= depth - masked_counts[..., None]  # (B, P, D)
    y = (embedded * masked[..., None]).sum(2)
    return embedded.sum(2) - y, y


class CollectiveDenoiser(nn.Module):
    """A bidirectional transformer over P positions: input the known partial sum (e) and the
    masked count (0..D) of each position; output a mixture of M diagonal Gaussians over the
    collective vector: (logits (B, P, M), means (B, P, M, e), log_scales (B, P, M, e))."""

    def __init__(self, positions: int, patch_dim: int, rvq_depth: int, dim: int = 64, depth: int = 3,
                 heads: int = 4, mixtures: int = 8):
        super().__init__()
        self.patch_dim, self.mixtures = patch_dim, mixtures
        self.inp = nn.Linear(patch_dim, dim)
        self.count = nn.Embedding(rvq_depth + 1, dim)
        self.pos = nn.Parameter(torch.randn(positions, dim) * 0.02)
        self.blocks = nn.ModuleList([Block(dim, heads) for _ in range(depth)])
        self.ln_out = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, mixtures * (1 + 2 * patch_dim))

    def forward(self, partial: Tensor, masked_counts: Tensor):
        b, p, _ = partial.shape
        h = self.inp(partial) + self.count(masked_counts) + self.pos
        positions = torch.arange(p, device=h.device).expand(b, -1)
        for block in self.blocks:
            h = block(h, positions, causal=False)
        out = self.head(self.ln_out(h)).view(b, p, self.mixtures, 1 + 2 * self.patch_dim)
        return out[..., 0], out[..., 1:1 + self.patch_dim], out[..., 1 + self.patch_dim:].clamp(-7, 3)


def mixture_nll(logits: Tensor, means: Tensor, log_scales: Tensor, y: Tensor) -> Tensor:
    """-log sum_m pi_m N(y; mu_m, diag sigma_m²): (.., M), (.., M, e) x2, (.., e) -> (..)."""
    z = (y[..., None, :] - means) * torch.exp(-log_scales)
    log_n = (-0.5 * z ** 2 - log_scales - 0.5 * math.log(2 * math.pi)).sum(-1)
    return -torch.logsumexp(torch.log_softmax(logits, -1) + log_n, -1)

def sample_mixture(logits: Tensor, means: Tensor, log_scales: Tensor, generator: torch.Generator,
                   temperature: float = 1.0) -> Tensor:
    """One draw per row of the mixture, its scales multiplied by ``temperature``:
    (.., M), (.., M, e) x2 -> (.., e)."""
    probs = torch.softmax(logits.double(), -1).cpu()
    m = torch.multinomial(probs.reshape(-1, probs.shape[-1]), 1, generator=generator).view(probs.shape[:-1])
    m = m.to(means.device)[..., None, None].expand(*m.shape, 1, means.shape[-1])
    mu, ls = means.gather(-2, m)[..., 0, :], log_scales.gather(-2, m)[..., 0, :]
    noise = torch.randn(mu.shape, generator=generator).to(mu.device)
    return mu + temperature * torch.exp(ls) * noise


class CollectiveMaskedDiffusion:
    """ResGen's objective as ``train``'s loss on RVQ codes (B, P, D): t ~ U(0, 1) per image,
    n_p ~ Binomial(D, 1 - t), the mixture NLL of the collective vectors of the masked depths
    (nats per masked position)."""

    def __init__(self, quantizer: ResidualQuantizer):
        self.quantizer = quantizer

    def loss(self, model, codes: Tensor, generator: torch.Generator, per_sample: bool = False) -> LossResult:
        b, p, depth = codes.shape
        t = torch.rand(b, generator=generator)
        counts = torch.binomial((torch.ones(b, p) * depth), (1 - t)[:, None].expand(b, p),
                                generator=generator).long()
        partial, y = known_sum(self.quantizer.embed(codes), counts)
        nll = mixture_nll(*model(partial, counts), y) * (counts > 0)
        per = nll.sum(1) / (counts > 0).sum(1).clamp(min=1)
        return LossResult(nll.sum() / (counts > 0).sum().clamp(min=1),
                          per.detach() if per_sample else None, t)

    __call__ = loss


def quantize_from(quantizer: ResidualQuantizer, y: Tensor, first: Tensor) -> Tensor:
    """Residual quantisation of y by the codebooks of depths first..D-1 (per position): y (B, P, e),
    first (B, P) -> codes (B, P, D), entries below ``first`` set to 0 (the caller keeps its own)."""
    books, depth = quantizer.codebooks, quantizer.depth
    r, codes = y.clone(), torch.zeros(*y.shape[:2], depth, dtype=torch.long, device=y.device)
    for d in range(depth):
        active = first <= d
        c = nearest_code(r.reshape(-1, r.shape[-1]), books[d]).view(r.shape[:2])
        codes[..., d] = torch.where(active, c, 0)
        r = r - books[d][c] * active[..., None]
    return codes


@torch.no_grad()
def sample_collective(model, quantizer: ResidualQuantizer, n: int, positions: int, steps: int,
                      generator: torch.Generator, temperature: float = 1.0) -> SampleResult:
    """Ancestral sampling from all-masked stacks in ``steps`` network calls, whatever the RVQ
    depth: codes (n, P, D) int64; NFE = steps. ``temperature`` < 1 narrows each Gaussian of the
    mixture (the weights are kept)."""
    if steps < 1 or not temperature > 0:
        raise ValueError(f"need steps >= 1 and temperature > 0, got {steps}, {temperature}")
    depth = quantizer.depth
    codes = torch.zeros(n, positions, depth, dtype=torch.long)
    counts = torch.full((n, positions), depth, dtype=torch.long)
    for k in range(steps):
        keep = (1 - (k + 1) / steps) / (1 - k / steps)
        partial, _ = known_sum(quantizer.embed(codes), counts)
        y = sample_mixture(*model(partial, counts), generator, temperature)
        fresh = quantize_from(quantizer, y, depth - counts)
        new_counts = torch.binomial(counts.double(), torch.full(counts.shape, keep, dtype=torch.float64),
                                    generator=generator).long()
        reveal = (torch.arange(depth) >= (depth - counts)[..., None]) & \
                 (torch.arange(depth) < (depth - new_counts)[..., None])
        codes = torch.where(reveal, fresh, codes)
        counts = new_counts
    return SampleResult(codes, nfe=steps)
