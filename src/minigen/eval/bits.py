"""Codelengths of discrete (grey-level) data: bits/dim of a density on dequantised data, the
independent per-pixel baseline, and the decoders that turn a continuous model into a discrete
one — the discretized Gaussian of DDPM (Ho et al., 2020, eq. 13) and a categorical decoder over
the grey levels (``LevelDecoder``). Shared by every chapter that reports a likelihood on images.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

Tensor = torch.Tensor


def bits_per_dim(log_density: Tensor, dim: int, n_levels: int) -> Tensor:
    """Bits/dim of discrete data on the 0..K-1 scale from a density on [-1, 1]^D.

    Dequantised y = 2(k+u)/K - 1 has Jacobian (2/K)^D with respect to the
    0..K scale, so  -log2 P(k) <= -(log p(y) + D log(2/K)) / log 2, per dim:

        bpd = -(log p(y) / D + log(2 / K)) / log 2.
    """
    return -(log_density / dim + math.log(2.0 / n_levels)) / math.log(2.0)

def nats_per_image(log_density: Tensor, dim: int, n_levels: int) -> Tensor:
    """The same bound in nats per image on the 0..K-1 scale (``bits_per_dim`` x D log 2):

        -log P(k) <= -(log p(y) + D log(2 / K)).
    """
    return -(log_density + dim * math.log(2.0 / n_levels))

def independent_pixel_bits_per_dim(train_levels: Tensor, test_levels: Tensor, n_levels: int) -> float:
    """Test bits/dim of the independent per-pixel baseline: a categorical over the K levels of
    each pixel i, fitted to the training split with add-one (Laplace) smoothing,

        P_i(k) = (count_i(k) + 1) / (N + K),   bpd = -mean_{n, i} log2 P_i(k_{n, i}).

    A discrete model, so its bits/dim compare directly with ``bits_per_dim`` of a density on
    dequantised data (which bounds the discrete NLL from above) and with a DDPM's discrete
    decoder bound. Levels: integer tensors (N, ...) in 0..K-1."""
    tr = train_levels.reshape(len(train_levels), -1).long()
    te = test_levels.reshape(len(test_levels), -1).long()
    if tr.shape[1] != te.shape[1]:
        raise ValueError(f"train and test images differ in size: {tr.shape[1]} vs {te.shape[1]} values")
    if min(int(tr.min()), int(te.min())) < 0 or max(int(tr.max()), int(te.max())) >= n_levels:
        raise ValueError(f"levels must lie in 0..{n_levels - 1}")
    counts = torch.zeros(tr.shape[1], n_levels, dtype=torch.float64)
    counts.scatter_add_(1, tr.T, torch.ones(tr.T.shape, dtype=torch.float64))
    log_p = torch.log((counts + 1) / (len(tr) + n_levels))  # (D, K)
    return float(-log_p.gather(1, te.T).mean() / math.log(2))

class LevelDecoder:
    """Categorical decoder over the K grey levels v_i = 2 (i + 1/2) / K - 1 of
    ``data.to_unit_interval``:

        p(x1 = v_i | x_{k=1}) = softmax_i( log pi_i - (v_i - mu_theta(x_{k=1}, 1))² / (2 std²) ),

    per pixel. With a uniform pi, the mean x_{k=1} / sqrt(alpha_bar_1) and std
    sqrt((1 - alpha_bar_1) / alpha_bar_1) this is the decoder of Variational Diffusion Models
    (Kingma et al., 2021: p(x | z_0) proportional to q(z_0 | x), normalised over the levels);
    here the mean is the network's and pi the training split's grey-level histogram (one
    histogram shared by every pixel), so it also knows that most MNIST pixels are exactly black,
    which a Gaussian around mu_theta cannot express when the noise at k = 1 (std 0.01) is wider
    than a level (2/256)."""

    def __init__(self, n_levels: int, log_prior: Tensor, std: float):
        if not isinstance(n_levels, int) or n_levels < 2:
            raise ValueError(f"n_levels must be an integer >= 2, got {n_levels!r}")
        log_prior = torch.as_tensor(log_prior, dtype=torch.float64)
        if log_prior.shape != (n_levels,) or not bool(torch.isfinite(log_prior).all()):
            raise ValueError(f"log_prior must be {n_levels} finite log-probabilities")
        if not std > 0:
            raise ValueError(f"std must be > 0, got {std}")
        self.n_levels, self.std = n_levels, float(std)
        self.log_prior = log_prior.log_softmax(0)
        self.levels = (torch.arange(n_levels, dtype=torch.float64) + 0.5) / n_levels * 2 - 1

    def __repr__(self) -> str:
        return f"LevelDecoder(n_levels={self.n_levels}, std={self.std:.4g})"

    @classmethod
    def fitted(cls, x1: Tensor, mean: Tensor, n_levels: int, std_grid: Sequence[float]) -> LevelDecoder:
        """The decoder for data ``x1`` (on the level grid) and decoder means ``mean``: prior the
        add-one smoothed histogram of x1's levels, std the value of ``std_grid`` minimising the
        mean -log p(x1 | mean) (fit on training data; evaluate on test data)."""
        counts = torch.bincount(cls.level_index(x1, n_levels).flatten(), minlength=n_levels)
        log_prior = ((counts.double() + 1) / (counts.sum() + n_levels)).log()
        decoders = [cls(n_levels, log_prior, s) for s in std_grid]
        nll = [-float(dec.log_prob(x1, mean).mean()) for dec in decoders]
        return decoders[min(range(len(nll)), key=nll.__getitem__)]

    @staticmethod
    def level_index(x1: Tensor, n_levels: int) -> Tensor:
        """Index i of the level nearest to each x1 (x1 on the level grid): (B, ...) int64."""
        return ((x1.double() + 1) * n_levels / 2 - 0.5).round().long().clamp(0, n_levels - 1)

    def log_prob(self, x1: Tensor, mean: Tensor) -> Tensor:
        """log p(x1 | x_{k=1}) per element, for decoder means ``mean``: (B, ...) float64."""
        logits = self.log_prior - (self.levels - mean.double().unsqueeze(-1)) ** 2 / (2 * self.std ** 2)
        idx = self.level_index(x1, self.n_levels).unsqueeze(-1)
        return logits.log_softmax(-1).gather(-1, idx).squeeze(-1)

def _log_diff_ndtr(a: Tensor, b: Tensor) -> Tensor:
    """log(Phi(b) - Phi(a)) for a < b, stable in both tails (flip to the left tail)."""
    flip = (a + b) > 0
    a, b = torch.where(flip, -b, a), torch.where(flip, -a, b)
    la, lb = torch.special.log_ndtr(a), torch.special.log_ndtr(b)
    return lb + torch.log1p(-torch.exp((la - lb).clamp(max=0)).clamp(max=1 - 1e-12))

def discretized_gaussian_log_likelihood(x: Tensor, mean: Tensor, std, bin_width: float = 2 / 255,
                                        low: float = -1.0, high: float = 1.0) -> Tensor:
    """log ∫ N(y; mean, std²) dy over the bin [delta-(x), delta+(x)] per element, where the bin around x
    has width ``bin_width`` and the edge bins extend to -inf at x = low and +inf at x = high
    (Ho et al., 2020, eq. 13; for 0..255 data scaled to [-1, 1], bin_width = 2/255).
    x, mean: (B, ...); std: float or broadcastable. Returns (B, ...)."""
    if not bin_width > 0:
        raise ValueError(f"bin_width must be > 0, got {bin_width}")
    std = torch.as_tensor(std, dtype=x.dtype)
    if (std <= 0).any():
        raise ValueError("std must be > 0")
    half = 0.5 * bin_width
    a = torch.where(x <= low + 0.5 * half, torch.full_like(x, -math.inf), (x - half - mean) / std)
    b = torch.where(x >= high - 0.5 * half, torch.full_like(x, math.inf), (x + half - mean) / std)
    return _log_diff_ndtr(a, b)

def unit_interval_bins(n_levels: int) -> dict:
    """Decoder bins of ``data.to_unit_interval`` (level k at 2 (k + ½) / K - 1): width 2/K and
    edge centres ±(1 - 1/K), as keyword arguments for ``decoder_nll`` / ``nll_bound``. Ho et
    al. map k to 2k/255 - 1 instead, the defaults there (width 2/255, edges ±1)."""
    if not isinstance(n_levels, int) or n_levels < 2:
        raise ValueError(f"n_levels must be an integer >= 2, got {n_levels!r}")
    return {"bin_width": 2 / n_levels, "low": -1 + 1 / n_levels, "high": 1 - 1 / n_levels}
