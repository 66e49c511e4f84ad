"""Couplings: how a minibatch of source points x0 is paired with data points x1.

Each coupling is a callable ``coupling(x0, x1, generator) -> (x0, x1)`` returning
paired batches of the same size (book/design.md, part 1 of 5).

* ``independent``  — pi = p0 x p1 (Lipman et al., 2023).
* ``ExactOT``      — the minibatch optimal assignment for squared Euclidean cost
  (Tong et al., 2024; Pooladian et al., 2023).
* ``SinkhornOT``   — entropic OT, pairs drawn from the Sinkhorn plan; with
  reg = 2 s² this is the Schrödinger-bridge coupling of SB-CFM (Tong et al., 2024).
* ``gibbs_weights`` — W-CFM keeps independent pairs and weights each by the Gibbs
  kernel exp(-||x1 - x0||² / eps) (Calvo-Ordoñez et al., 2025).
"""

from __future__ import annotations

import math

import torch
from scipy.optimize import linear_sum_assignment

Tensor = torch.Tensor


def _check_pair(x0: Tensor, x1: Tensor) -> None:
    if x0.shape[0] != x1.shape[0]:
        raise ValueError(f"x0 and x1 need the same batch size, got {x0.shape[0]} and {x1.shape[0]}")


def squared_distances(x0: Tensor, x1: Tensor) -> Tensor:
    """C_ij = ||x0_i - x1_j||² for flattened samples: (B, B)."""
    a, b = x0.reshape(len(x0), -1), x1.reshape(len(x1), -1)
    return (a.pow(2).sum(1)[:, None] + b.pow(2).sum(1)[None, :] - 2 * a @ b.T).clamp_min(0)


def independent(x0: Tensor, x1: Tensor, generator: torch.Generator | None = None):
    """Independent coupling: the batches as drawn."""
    _check_pair(x0, x1)
    return x0, x1


def exact_ot_assignment(x0: Tensor, x1: Tensor) -> Tensor:
    """Permutation perm minimising sum_i ||x0_i - x1_perm(i)||² (Hungarian / LAPJV, scipy)."""
    _check_pair(x0, x1)
    cost = squared_distances(x0, x1).detach().cpu().double().numpy()
    rows, cols = linear_sum_assignment(cost)
    return torch.as_tensor(cols, device=x1.device)[torch.as_tensor(rows).argsort()]


class ExactOT:
    """Minibatch OT coupling: re-order x1 by the exact optimal assignment (OT-CFM)."""

    def __call__(self, x0: Tensor, x1: Tensor, generator: torch.Generator | None = None):
        return x0, x1[exact_ot_assignment(x0, x1)]

    def __repr__(self) -> str:
        return "ExactOT()"


def sinkhorn_log_plan(c: Tensor, reg: float, n_iter: int) -> Tensor:
    """Log of the entropic OT plan between uniform batches (Cuturi, 2013), log domain:

        pi = argmin <pi, C> - reg H(pi),   pi_ij = exp((f_i + g_j - C_ij) / reg).

    ``c`` is the cost matrix (B, B), e.g. ``squared_distances(x0, x1)``; ``reg`` is in its
    units. Returns log pi: (B, B).
    """
    if reg <= 0 or n_iter <= 0:
        raise ValueError(f"reg and n_iter must be positive, got {reg}, {n_iter}")
    n, m = c.shape
    log_a, log_b = -math.log(n), -math.log(m)
    f = torch.zeros(n, dtype=c.dtype, device=c.device)
    g = torch.zeros(m, dtype=c.dtype, device=c.device)
    k = -c / reg
    for _ in range(n_iter):
        f = reg * (log_a - torch.logsumexp(k + g[None, :] / reg, 1))
        g = reg * (log_b - torch.logsumexp(k + f[:, None] / reg, 0))
    return k + (f[:, None] + g[None, :]) / reg


def sinkhorn_plan(c: Tensor, reg: float, n_iter: int) -> Tensor:
    """Entropic OT plan by Sinkhorn's matrix scaling in the kernel domain, float64:
    K = exp(-(C - min C) / reg), then u = a / K v, v = b / K^T u. Each iteration is two
    matrix-vector products, so few iterations cost little. Use ``sinkhorn_log_plan``
    when reg is so small that K underflows. ``c`` is the cost matrix (B, B).
    Returns pi: (B, B).
    """
    if reg <= 0 or n_iter <= 0:
        raise ValueError(f"reg and n_iter must be positive, got {reg}, {n_iter}")
    c = c.double()
    k = torch.exp(-(c - c.min()) / reg)
    if (k.sum(1) == 0).any() or (k.sum(0) == 0).any():
        raise FloatingPointError(f"Sinkhorn kernel underflows at reg={reg:g}: use log_domain=True "
                                 "or a larger reg")
    n, m = k.shape
    u = torch.full((n,), 1.0 / n, dtype=k.dtype, device=k.device)
    v = torch.full((m,), 1.0 / m, dtype=k.dtype, device=k.device)
    for _ in range(n_iter):
        u = (1.0 / n) / (k @ v).clamp_min(1e-300)
        v = (1.0 / m) / (k.T @ u).clamp_min(1e-300)
    return u[:, None] * k * v[None, :]


def sample_rows(probs: Tensor, generator: torch.Generator | None) -> Tensor:
    """One column index per row, j ~ probs[i, :] / sum(probs[i, :]), by inverse CDF: (B,).
    (Much faster than torch.multinomial for a few hundred rows.)"""
    cdf = probs.cumsum(1)
    u = torch.rand(len(probs), 1, generator=generator, dtype=cdf.dtype).to(cdf.device) * cdf[:, -1:]
    return torch.searchsorted(cdf, u).squeeze(1).clamp_max(probs.shape[1] - 1)


class SinkhornOT:
    """Entropic OT coupling: for each x0_i draw its partner j ~ pi(j | i).

    ``reg`` is absolute when ``relative=False`` (SB-CFM: reg = 2 s²), else it is
    multiplied by the batch's mean squared distance. With a moderate ``reg`` and
    few iterations (``n_iter``) this is a cheap approximate OT pairing in torch;
    ``log_domain=True`` is the stable choice for a very small ``reg``.
    """

    def __init__(self, reg: float = 0.1, n_iter: int = 10, relative: bool = True,
                 log_domain: bool = False):
        if reg <= 0 or n_iter <= 0:
            raise ValueError(f"reg and n_iter must be positive, got {reg}, {n_iter}")
        self.reg, self.n_iter, self.relative, self.log_domain = reg, n_iter, relative, log_domain

    def __call__(self, x0: Tensor, x1: Tensor, generator: torch.Generator | None = None):
        _check_pair(x0, x1)
        with torch.no_grad():
            c = squared_distances(x0, x1)
            reg = self.reg * float(c.mean()) if self.relative else self.reg
            if self.log_domain:
                probs = torch.softmax(sinkhorn_log_plan(c, reg, self.n_iter), 1)
            else:
                probs = sinkhorn_plan(c, reg, self.n_iter)
            j = sample_rows(probs, generator)
        return x0, x1[j]

    def __repr__(self) -> str:
        return f"SinkhornOT(reg={self.reg}, n_iter={self.n_iter}, relative={self.relative})"


def gibbs_weights(x0: Tensor, x1: Tensor, eps: float, normalise: bool = True) -> Tensor:
    """W-CFM pair weights w_i = exp(-||x1_i - x0_i||² / eps): (B,).

    As eps -> inf every weight -> 1 and W-CFM is I-CFM; a small eps favours short
    pairs, approximating the entropic OT coupling (Calvo-Ordoñez et al., 2025).
    With ``normalise`` the weights are divided by their batch mean (a constant
    rescaling of the loss that keeps its size comparable across eps).
    """
    if eps <= 0:
        raise ValueError(f"Gibbs temperature eps must be > 0, got {eps}")
    _check_pair(x0, x1)
    c = (x1 - x0).reshape(len(x0), -1).pow(2).sum(1)
    w = torch.exp(-(c - c.min()) / eps)  # shift for stability; cancels when normalised
    if not normalise:
        w = w * torch.exp(-c.min() / eps)
    return w / w.mean() if normalise else w
